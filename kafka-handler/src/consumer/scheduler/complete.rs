//! Applying what lanes report finished.

use super::Scheduler;
use crate::HandlerError;
use crate::consumer::completion::Completion;
use crate::metrics::observed::Counts;

impl Scheduler {
    /// Applies every completion reported so far.
    pub(crate) fn drain_completions(&mut self) {
        while let Ok(completion) = self.completions_rx.try_recv() {
            self.complete(completion);
        }
    }

    pub(super) fn complete(&mut self, c: Completion) {
        let id = &c.lane;
        let Some(state) = self.partitions.get_mut(&id.topic).and_then(|t| t.get_mut(&id.partition)) else {
            return;
        };
        if state.epoch != id.epoch {
            return;
        }
        let mut done = 0;
        for (offset, failure) in c.finished {
            if !state.tracker.finished(offset) {
                continue;
            }
            done += 1;
            count(&mut self.counts, &id.topic, id.partition, offset, failure);
        }
        state.outstanding -= done;
        self.buffered -= done;
        if let Some(lane) = state.lanes.get_mut(&id.key) {
            lane.queued -= done;
            if lane.queued == 0 {
                state.lanes.remove(&id.key);
            }
        }
    }
}

/// Counts a finished record, logging a permanent failure.
pub(super) fn count(counts: &mut Counts, topic: &str, partition: i32, offset: i64, failure: Option<HandlerError>) {
    match failure {
        None => counts.handled += 1,
        Some(error) => {
            counts.failed_permanently += 1;
            tracing::error!(topic, partition, offset, error = %error,
                    "record failed permanently; committing past it");
        }
    }
}
