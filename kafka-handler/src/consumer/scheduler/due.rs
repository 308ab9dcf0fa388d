//! Records of a retry topic that are not due yet wait in the scheduler, not
//! in a handler.
//!
//! A record read from one of its group's retry topics carries its due time
//! (`retry.due`; on any other topic that header is ignored, see
//! [`provenance`](crate::provenance)). If it is still ahead, the record is
//! not dispatched: it is held, with whatever that partition delivers behind
//! it, and the polling thread dispatches it when it falls due (it wakes up
//! for that). Held records take no handler
//! slot and count against their partition's share of the buffer, so a retry
//! partition that holds its share is paused by back-pressure like any other,
//! while every other partition, source or retry, keeps flowing. Nothing
//! sleeps.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Scheduler;
use crate::Record;
use crate::consumer::completion::LaneKey;

/// The due header has millisecond precision, truncated: a record is held
/// this much longer so that it is never handled before its delay passed.
const ROUNDING: Duration = Duration::from_millis(1);

/// Records of a partition held until due, in offset order.
pub(super) type Held = VecDeque<(Record, LaneKey, Instant)>;

/// Holds the record in `held` if it is not due yet, or if records before it
/// are held; otherwise gives it back to be dispatched.
pub(super) fn hold(held: &mut Held, record: Record, key: LaneKey) -> Option<(Record, LaneKey)> {
    let due = match due(&record) {
        Some(due) => due,
        None if held.is_empty() => return Some((record, key)),
        None => Instant::now(),
    };
    held.push_back((record, key, due));
    None
}

/// When the record is due, if that is ahead.
fn due(record: &Record) -> Option<Instant> {
    let due = crate::provenance::due(record)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let ahead = Duration::from_millis(due).saturating_sub(now);
    (!ahead.is_zero()).then(|| Instant::now() + ahead + ROUNDING)
}

impl Scheduler {
    /// Dispatches the held records that fell due.
    pub(crate) fn dispatch_due(&mut self) {
        let now = Instant::now();
        let (partitions, mut starter) = self.split();
        for state in partitions.values_mut().flat_map(|parts| parts.values_mut()) {
            while state.held.front().is_some_and(|(.., due)| *due <= now) {
                let (record, key, _) = state.held.pop_front().expect("checked");
                state.outstanding -= 1;
                *starter.buffered -= 1;
                starter.start(state, record, key);
            }
        }
    }

    /// How long until the next held record falls due.
    pub(crate) fn next_due(&self) -> Option<Duration> {
        let now = Instant::now();
        self.partitions
            .values()
            .flat_map(|parts| parts.values())
            .filter_map(|state| state.held.front().map(|(.., due)| due.saturating_duration_since(now)))
            .min()
    }
}
