//! Bounded memory: pausing partitions whose records pile up.

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use super::Scheduler;
use crate::consumer::RuntimeContext;

impl Scheduler {
    /// Pauses fetching from a partition whose share of the buffer is full, or
    /// that delivered a record while the whole buffer was; resumes a partition
    /// when half of its share is free and the buffer is not full. Each
    /// partition gets an equal share of `max_buffered`, so a partition with a
    /// deep backlog cannot starve the others, and a partition that delivers
    /// rarely (a retry topic behind a source topic's backlog) is not paused
    /// for what the others hold.
    pub(crate) fn apply_backpressure(&mut self, consumer: &BaseConsumer<RuntimeContext>) {
        if self.stopping {
            return;
        }
        let share = self.share();
        let full = self.buffered >= self.max_buffered;
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        for (topic, parts) in &mut self.partitions {
            for (&partition, state) in parts.iter_mut() {
                if !state.paused && (state.overfull || state.outstanding >= share) {
                    state.paused = true;
                    state.overfull = false;
                    pause.add_partition(topic, partition);
                } else if state.paused && !full && state.outstanding <= share / 2 {
                    state.paused = false;
                    resume.add_partition(topic, partition);
                }
            }
        }
        for (tpl, paused) in [(pause, true), (resume, false)] {
            if tpl.count() == 0 {
                continue;
            }
            let result = if paused { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
            if let Err(e) = result {
                tracing::warn!(error = %e, paused, "could not change fetching");
            }
            tracing::debug!(paused, partitions = tpl.count(), share, "back-pressure");
        }
    }

    /// Each assigned partition's share of `max_buffered`.
    pub(super) fn share(&self) -> usize {
        let assigned: usize = self.partitions.values().map(|parts| parts.len()).sum();
        (self.max_buffered / assigned.max(1)).max(1)
    }

    /// Stops fetching from every partition, for a graceful shutdown.
    pub(crate) fn stop_fetching(&mut self, consumer: &BaseConsumer<RuntimeContext>) {
        self.stopping = true;
        if let Err(e) = consumer.pause(&self.assigned()) {
            tracing::warn!(error = %e, "could not pause fetching");
        }
    }

    /// Pauses newly assigned partitions while shutting down.
    pub(crate) fn pause_if_stopping(&self, consumer: &BaseConsumer<RuntimeContext>, tpl: &TopicPartitionList) {
        if self.stopping
            && let Err(e) = consumer.pause(tpl)
        {
            tracing::warn!(error = %e, "could not pause newly assigned partitions");
        }
    }
}
