//! What a lane reports back to the polling thread.

use std::sync::Arc;

use crate::HandlerError;

/// Records a lane finished, reported to the polling thread: each offset with
/// its permanent failure, if any.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) lane: LaneId,
    pub(crate) finished: Vec<(i64, Option<HandlerError>)>,
}

/// Which lane of which assignment of a partition.
#[derive(Clone, Debug)]
pub(crate) struct LaneId {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    /// Changes with every assignment, so reports from before a revoke are ignored.
    pub(crate) epoch: u64,
    pub(crate) key: LaneKey,
}

/// What records must be handled one after another.
///
/// Keys are told apart by a 64-bit hash: two keys with the same hash share a
/// lane, which keeps both in order and only costs concurrency.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LaneKey {
    Partition,
    Key(u64),
    Record(i64),
}
