//! Publishing what the scheduler holds, for health checks and metrics.

use std::time::Instant;

use rdkafka::consumer::BaseConsumer;
#[cfg(feature = "metrics")]
use rdkafka::consumer::Consumer as _;
#[cfg(feature = "metrics")]
use rustc_hash::FxHashMap as HashMap;

use super::Scheduler;
use crate::consumer::RuntimeContext;
use crate::metrics::observed::{Observed, Oldest, PUBLISH_EVERY, PartitionView, Snapshot};

impl Scheduler {
    /// Notes that the polling thread is alive and, every [`PUBLISH_EVERY`],
    /// publishes a snapshot of the partitions.
    pub(crate) fn observe(&self, consumer: &BaseConsumer<RuntimeContext>, observed: &Observed) {
        let now = Instant::now();
        if !observed.polled(now, PUBLISH_EVERY) {
            return;
        }
        #[cfg(feature = "metrics")]
        let positions = fetch_positions(consumer);
        #[cfg(not(feature = "metrics"))]
        let _ = consumer;
        let mut partitions = Vec::with_capacity(self.partitions.values().map(|p| p.len()).sum());
        for (topic, parts) in &self.partitions {
            for (&partition, state) in parts {
                let oldest = state.tracker.oldest_unfinished();
                #[cfg(feature = "metrics")]
                let fetch_position = positions.get(&**topic).and_then(|parts| parts.get(&partition)).copied();
                #[cfg(not(feature = "metrics"))]
                let fetch_position = None;
                partitions.push(PartitionView {
                    topic: topic.clone(),
                    partition,
                    epoch: state.epoch,
                    paused: state.paused,
                    in_flight: state.outstanding,
                    oldest: oldest.map(|(offset, timestamp)| Oldest { offset, timestamp, since: now }),
                    position: state.tracker.watermark().or(oldest.map(|(offset, _)| offset)).or(fetch_position),
                });
            }
        }
        observed.publish(Snapshot { partitions, counts: self.counts });
    }
}

/// The next offset librdkafka fetches, per topic and partition (known once
/// the partition's committed offset was looked up).
#[cfg(feature = "metrics")]
fn fetch_positions(consumer: &BaseConsumer<RuntimeContext>) -> HashMap<String, HashMap<i32, i64>> {
    let mut positions: HashMap<String, HashMap<i32, i64>> = HashMap::default();
    let Ok(tpl) = consumer.position() else {
        return positions;
    };
    for e in tpl.elements() {
        if let rdkafka::Offset::Offset(offset) = e.offset() {
            positions.entry(e.topic().to_owned()).or_default().insert(e.partition(), offset);
        }
    }
    positions
}
