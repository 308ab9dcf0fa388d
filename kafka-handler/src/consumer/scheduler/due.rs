//! Records of a retry topic that are not due yet: their partition is paused
//! and rewound to them until they are, instead of holding them in memory.
//!
//! A record read from a retry topic carries its due time (`retry.due`). If it
//! is still ahead, the record is not dispatched: the partition is paused and
//! sought back to the record, and resumed when the record falls due. Nothing
//! sleeps, nothing of that partition is buffered meanwhile, and every other
//! partition, source or retry, keeps flowing.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{PartitionState, Scheduler};
use crate::consumer::RuntimeContext;
use crate::middleware::retry_topic::headers::DUE;
use crate::record::Header;

/// Records due within this long are dispatched at once; the retry-topic layer
/// waits out the rest.
const EARLY: Duration = Duration::from_millis(5);

/// A partition paused until its next record is due.
#[derive(Debug)]
pub(super) struct Held {
    until: Instant,
    offset: i64,
    rewound: bool,
}

/// Holds the partition if the record at `offset` is not due yet; `true` if
/// it did and the record must not be dispatched.
pub(super) fn hold_if_early(state: &mut PartitionState, offset: i64, headers: &[Header]) -> bool {
    let Some(due) = headers.iter().find(|h| h.name == DUE).and_then(|h| h.value.as_deref()) else {
        return false;
    };
    let Some(due) = std::str::from_utf8(due).ok().and_then(|d| d.parse::<u64>().ok()) else {
        return false;
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let ahead = Duration::from_millis(due).saturating_sub(now);
    if ahead <= EARLY {
        return false;
    }
    state.held = Some(Held { until: Instant::now() + ahead, offset, rewound: false });
    true
}

impl Scheduler {
    /// Pauses and rewinds partitions that were just held; releases those
    /// whose record fell due (back-pressure then resumes them).
    pub(crate) fn apply_due(&mut self, consumer: &BaseConsumer<RuntimeContext>) {
        let now = Instant::now();
        let (mut pause, mut rewind) = (TopicPartitionList::new(), TopicPartitionList::new());
        for (topic, parts) in &mut self.partitions {
            for (&partition, state) in parts.iter_mut() {
                let Some(held) = &mut state.held else { continue };
                if !held.rewound {
                    held.rewound = true;
                    if !state.paused {
                        state.paused = true;
                        pause.add_partition(topic, partition);
                    }
                    let _ = rewind.add_partition_offset(topic, partition, Offset::Offset(held.offset));
                    tracing::debug!(
                        topic = &**topic,
                        partition,
                        offset = held.offset,
                        "retry record not due: partition paused"
                    );
                } else if held.until <= now {
                    state.held = None;
                }
            }
        }
        if pause.count() > 0
            && let Err(e) = consumer.pause(&pause)
        {
            tracing::warn!(error = %e, "could not pause a retry partition");
        }
        if rewind.count() > 0
            && let Err(e) = consumer.seek_partitions(rewind, Duration::from_secs(5))
        {
            tracing::warn!(error = %e, "could not rewind a retry partition");
        }
    }

    /// How long until the next held record falls due.
    pub(crate) fn next_due(&self) -> Option<Duration> {
        let now = Instant::now();
        self.partitions
            .values()
            .flat_map(|parts| parts.values())
            .filter_map(|state| state.held.as_ref().map(|h| h.until.saturating_duration_since(now)))
            .min()
    }
}
