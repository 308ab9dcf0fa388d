//! The state of each assigned partition, from its assignment to its revoke.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc as tokio_mpsc;

use super::Scheduler;
#[cfg(feature = "retry-topic")]
use super::due;
use crate::Record;
use crate::consumer::RuntimeContext;
use crate::consumer::completion::LaneKey;
use crate::consumer::offsets::OffsetTracker;

#[derive(Debug)]
pub(super) struct Lane {
    pub(super) tx: tokio_mpsc::UnboundedSender<Record>,
    pub(super) queued: usize,
    /// Set when the partition is given up; see [`run_lane`].
    pub(super) retired: Arc<AtomicBool>,
}

#[derive(Debug)]
pub(super) struct PartitionState {
    pub(super) topic: Arc<str>,
    pub(super) epoch: u64,
    pub(super) tracker: OffsetTracker,
    pub(super) lanes: HashMap<LaneKey, Lane>,
    pub(super) outstanding: usize,
    pub(super) paused: bool,
    /// Delivered a record while the buffer was full: pause it.
    pub(super) overfull: bool,
    /// Retry records waiting until due, with what came behind them.
    #[cfg(feature = "retry-topic")]
    pub(super) held: due::Held,
}

impl PartitionState {
    /// Records handed to handlers and not finished (held retry records are
    /// not: nothing runs them before they are due).
    pub(super) fn running(&self) -> usize {
        #[cfg(feature = "retry-topic")]
        return self.outstanding - self.held.len();
        #[cfg(not(feature = "retry-topic"))]
        self.outstanding
    }

    /// Stops the lanes: calls in progress finish, nothing else starts.
    pub(super) fn retire(&mut self) {
        for (_, lane) in self.lanes.drain() {
            lane.retired.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Scheduler {
    /// Starts tracking newly assigned partitions.
    pub(crate) fn assign(&mut self, tpl: &TopicPartitionList) {
        for elem in tpl.elements() {
            // One `Arc<str>` per topic, shared by all of its records.
            let topic = match self.partitions.get_key_value(elem.topic()) {
                Some((topic, _)) => Arc::clone(topic),
                None => Arc::from(elem.topic()),
            };
            let topics = self.partitions.entry(Arc::clone(&topic)).or_default();
            self.next_epoch += 1;
            topics.insert(
                elem.partition(),
                PartitionState {
                    topic,
                    epoch: self.next_epoch,
                    tracker: OffsetTracker::default(),
                    lanes: HashMap::default(),
                    outstanding: 0,
                    paused: false,
                    overfull: false,
                    #[cfg(feature = "retry-topic")]
                    held: due::Held::new(),
                },
            );
        }
    }

    /// Stores the finished watermark of every partition whose watermark moved.
    /// librdkafka commits stored offsets in batches (`auto.commit.interval.ms`).
    pub(crate) fn store_offsets(&mut self, consumer: &BaseConsumer<RuntimeContext>) {
        let mut tpl = TopicPartitionList::new();
        for (topic, parts) in &mut self.partitions {
            for (&partition, state) in parts.iter_mut() {
                if let Some(next) = state.tracker.take_moved() {
                    let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(next));
                }
            }
        }
        if tpl.count() > 0
            && let Err(e) = consumer.store_offsets(&tpl)
        {
            tracing::warn!(error = %e, "could not store offsets");
        }
    }

    pub(crate) fn assigned(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (topic, parts) in &self.partitions {
            for &partition in parts.keys() {
                tpl.add_partition(topic, partition);
            }
        }
        tpl
    }

    /// Gives up partitions: lets their in-flight records finish until
    /// `deadline`, stores and commits what finished (unless the partitions are
    /// already lost to another consumer), then abandons the rest without
    /// storing their offsets.
    pub(crate) fn revoke(
        &mut self,
        consumer: &BaseConsumer<RuntimeContext>,
        tpl: &TopicPartitionList,
        deadline: Instant,
    ) {
        let revoked: Vec<(Arc<str>, i32)> = tpl
            .elements()
            .iter()
            .filter_map(|e| {
                let (topic, parts) = self.partitions.get_key_value(e.topic())?;
                parts.contains_key(&e.partition()).then(|| (Arc::clone(topic), e.partition()))
            })
            .collect();
        let pending = |s: &Self| revoked.iter().map(|(t, p)| s.partitions[t][p].running()).sum::<usize>();
        while pending(self) > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.completions_rx.recv_timeout((deadline - now).min(Duration::from_millis(50))) {
                Ok(c) => self.complete(c),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let lost = consumer.assignment_lost();
        let mut commit = TopicPartitionList::new();
        for (topic, partition) in &revoked {
            let Some(mut state) = self.partitions.get_mut(topic).and_then(|t| t.remove(partition)) else {
                continue;
            };
            let running = state.running();
            if running > 0 {
                tracing::warn!(
                    topic = &**topic,
                    partition,
                    abandoned = running,
                    "in-flight records did not finish before the partition was given up; they will be redelivered"
                );
            }
            if state.outstanding > running {
                // Retry records not due yet: nothing was started, nothing is lost.
                tracing::info!(
                    topic = &**topic,
                    partition,
                    held = state.outstanding - running,
                    "retry records not due yet are left to the partition's next owner"
                );
            }
            self.counts.abandoned += state.outstanding as u64;
            self.buffered -= state.outstanding;
            state.retire();
            if let Some(next) = state.tracker.watermark() {
                let _ = commit.add_partition_offset(topic, *partition, Offset::Offset(next));
            }
        }
        self.partitions.retain(|_, parts| !parts.is_empty());
        if lost || commit.count() == 0 {
            return;
        }
        if let Err(e) = consumer.store_offsets(&commit) {
            tracing::warn!(error = %e, "could not store offsets of revoked partitions");
        }
        if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
            tracing::warn!(error = %e, "could not commit offsets of revoked partitions");
        }
    }
}
