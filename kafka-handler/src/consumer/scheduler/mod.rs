//! Hands records to handlers in the order the consumer promises, and learns
//! which offsets are safe to commit.
//!
//! All of this state is owned by the polling thread (the rebalance callbacks
//! run on it too), so records are dispatched and completions applied without
//! contention. Handlers run on the tokio runtime in *lanes*: one task per
//! partition, per key or per record, depending on the [`Ordering`].

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc as tokio_mpsc;

mod backpressure;
#[cfg(feature = "retry-topic")]
mod due;
mod observe;

use super::fetch::Polled;
use super::inline::InlineStart;
use super::lane::{LaneConfig, run_lane};
use super::offsets::OffsetTracker;
use super::{Ordering, RuntimeContext};
use crate::record::{Header, KeyAndPayload};
use crate::{HandlerError, Record};

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

fn key_hash(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(key)
}

#[derive(Debug)]
struct Lane {
    tx: tokio_mpsc::UnboundedSender<Record>,
    queued: usize,
    /// Set when the partition is given up; see [`run_lane`].
    retired: Arc<AtomicBool>,
}

#[derive(Debug)]
struct PartitionState {
    topic: Arc<str>,
    epoch: u64,
    tracker: OffsetTracker,
    lanes: HashMap<LaneKey, Lane>,
    outstanding: usize,
    paused: bool,
    /// Delivered a record while the buffer was full: pause it.
    overfull: bool,
    /// Retry records waiting until due, with what came behind them.
    #[cfg(feature = "retry-topic")]
    held: due::Held,
}

impl PartitionState {
    /// Records handed to handlers and not finished (held retry records are
    /// not: nothing runs them before they are due).
    fn running(&self) -> usize {
        #[cfg(feature = "retry-topic")]
        return self.outstanding - self.held.len();
        #[cfg(not(feature = "retry-topic"))]
        self.outstanding
    }

    /// Stops the lanes: calls in progress finish, nothing else starts.
    fn retire(&mut self) {
        for (_, lane) in self.lanes.drain() {
            lane.retired.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Counts kept by the scheduler, read by tests and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) handled: u64,
    pub(crate) failed_permanently: u64,
    pub(crate) abandoned: u64,
}

impl Counts {
    fn record(&mut self, topic: &str, partition: i32, offset: i64, failure: Option<HandlerError>) {
        match failure {
            None => self.handled += 1,
            Some(error) => {
                self.failed_permanently += 1;
                tracing::error!(topic, partition, offset, error = %error,
                    "record failed permanently; committing past it");
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Scheduler {
    partitions: HashMap<Arc<str>, HashMap<i32, PartitionState>>,
    ordering: Ordering,
    lane: LaneConfig,
    completions_tx: mpsc::Sender<Completion>,
    completions_rx: mpsc::Receiver<Completion>,
    runtime: tokio::runtime::Handle,
    shared: Arc<http::Extensions>,
    inline: InlineStart,
    /// Whether anything may read records' headers: the service (any layer
    /// may; a bare handler may if one of its extractors does), the record
    /// span (for an event id in a header). If not, they are not copied:
    /// librdkafka parses them on first access, allocating even for a record
    /// without headers.
    reads_headers: bool,
    /// How records' trace context is read, from the text-map propagator set
    /// when the consumer started: where librdkafka holds the headers,
    /// without copying them.
    #[cfg(feature = "trace-context")]
    propagation: crate::trace_context::Propagation,
    buffered: usize,
    max_buffered: usize,
    stopping: bool,
    next_epoch: u64,
    pub(crate) counts: Counts,
}

pub(crate) struct SchedulerConfig {
    pub(crate) ordering: Ordering,
    pub(crate) lane: LaneConfig,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) shared: Arc<http::Extensions>,
    pub(crate) max_buffered: usize,
}

impl Scheduler {
    pub(crate) fn new(config: SchedulerConfig) -> Self {
        let (completions_tx, completions_rx) = mpsc::channel();
        Scheduler {
            partitions: HashMap::default(),
            ordering: config.ordering,
            inline: InlineStart::new(config.lane.service.clone()),
            #[cfg(feature = "trace-context")]
            propagation: crate::trace_context::Propagation::current(),
            reads_headers: config.lane.service.reads_headers()
                || matches!(
                    config.shared.get::<super::record_span::EventIdOf>(),
                    Some(super::record_span::EventIdOf(crate::dedup::EventIdSource::Header(_)))
                ),
            lane: config.lane,
            completions_tx,
            completions_rx,
            runtime: config.runtime,
            shared: config.shared,
            buffered: 0,
            max_buffered: config.max_buffered,
            stopping: false,
            next_epoch: 0,
            counts: Counts::default(),
        }
    }

    /// Records currently handed to handlers and not finished.
    pub(crate) fn in_flight(&self) -> usize {
        self.buffered
    }

    /// How many more records may be dispatched before fetching pauses.
    pub(crate) fn capacity(&self) -> usize {
        self.max_buffered.saturating_sub(self.buffered)
    }

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

    /// Hands polled records to their lanes, in order.
    pub(crate) fn dispatch<'m>(&mut self, batch: impl IntoIterator<Item = Polled<'m>>) {
        // The trace context is read only for a record span's parent, so only
        // while a subscriber wants record spans; asked once a batch.
        #[cfg(feature = "trace-context")]
        let context = self.propagation != crate::trace_context::Propagation::None && super::record_span::wanted();
        #[cfg(not(feature = "trace-context"))]
        let context = false;
        let mut batch = batch.into_iter().peekable();
        while let Some(first) = batch.next() {
            let (partitions, mut starter) = self.split();
            let Some(state) = partitions.get_mut(first.topic()).and_then(|t| t.get_mut(&first.partition())) else {
                // Not stored, so the record is read again by whoever owns the partition.
                tracing::warn!(
                    topic = first.topic(),
                    partition = first.partition(),
                    offset = first.offset(),
                    "record for a partition this consumer does not track; leaving it uncommitted"
                );
                continue;
            };
            // librdkafka hands out a partition's records in runs: the rest of
            // the run goes to the same state without looking it up.
            dispatch_one(state, &mut starter, first, context);
            while let Some(msg) = batch.next_if(|m| m.partition() == first.partition() && m.same_topic(first)) {
                dispatch_one(state, &mut starter, msg, context);
            }
        }
    }

    /// The partitions, and what starting a record needs, borrowed apart.
    fn split(&mut self) -> (&mut HashMap<Arc<str>, HashMap<i32, PartitionState>>, Starter<'_>) {
        let starter = Starter {
            inline: &mut self.inline,
            lane: &self.lane,
            runtime: &self.runtime,
            completions_tx: &self.completions_tx,
            counts: &mut self.counts,
            buffered: &mut self.buffered,
            max_buffered: self.max_buffered,
            shared: &self.shared,
            ordering: self.ordering,
            reads_headers: self.reads_headers,
            #[cfg(feature = "trace-context")]
            propagation: self.propagation,
        };
        (&mut self.partitions, starter)
    }

    /// Applies every completion reported so far.
    pub(crate) fn drain_completions(&mut self) {
        while let Ok(completion) = self.completions_rx.try_recv() {
            self.complete(completion);
        }
    }

    fn complete(&mut self, c: Completion) {
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
            self.counts.record(&id.topic, id.partition, offset, failure);
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
            if state.outstanding > 0 {
                tracing::warn!(
                    topic = &**topic,
                    partition,
                    abandoned = state.outstanding,
                    "in-flight records did not finish before the partition was given up; they will be redelivered"
                );
                self.counts.abandoned += state.outstanding as u64;
            }
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

/// Hands a polled record of `state`'s partition to its lane, with its trace
/// context if `context`.
fn dispatch_one(state: &mut PartitionState, starter: &mut Starter<'_>, msg: Polled<'_>, context: bool) {
    if state.tracker.last_dispatched().is_some_and(|last| msg.offset() <= last) {
        // Fetched again after a pause or reassignment: already dispatched.
        return;
    }
    let borrowed = if starter.reads_headers || context { msg.headers() } else { None };
    let headers: Vec<Header> = match borrowed.filter(|_| starter.reads_headers) {
        Some(hs) => hs
            .iter()
            .map(|(name, value)| Header { name: name.to_owned(), value: value.map(Bytes::copy_from_slice) })
            .collect(),
        None => Vec::new(),
    };
    #[cfg_attr(not(feature = "trace-context"), allow(unused_mut))]
    let mut record = Record::from_parts(
        Arc::clone(&state.topic),
        msg.partition(),
        msg.offset(),
        msg.timestamp(),
        KeyAndPayload::new(msg.key(), msg.payload()),
        headers,
        Arc::clone(starter.shared),
    );
    #[cfg(feature = "trace-context")]
    if context && let Some(cx) = starter.propagation.extract(borrowed) {
        record.set_trace_parent(cx);
    }
    let lane_key = match (starter.ordering, msg.key()) {
        (Ordering::Partition, _) => LaneKey::Partition,
        (Ordering::Key, Some(key)) => LaneKey::Key(key_hash(key)),
        (Ordering::Key, None) | (Ordering::Unordered, _) => LaneKey::Record(msg.offset()),
    };
    #[cfg(feature = "retry-topic")]
    let Some((record, lane_key)) = due::hold(state, starter, record, lane_key) else {
        return;
    };
    starter.start(state, record, lane_key);
}

/// Starts records: on the polling thread when their lane is idle, else in
/// their lane's task.
struct Starter<'a> {
    inline: &'a mut InlineStart,
    lane: &'a LaneConfig,
    runtime: &'a tokio::runtime::Handle,
    completions_tx: &'a mpsc::Sender<Completion>,
    counts: &'a mut Counts,
    buffered: &'a mut usize,
    max_buffered: usize,
    shared: &'a Arc<http::Extensions>,
    ordering: Ordering,
    reads_headers: bool,
    #[cfg(feature = "trace-context")]
    propagation: crate::trace_context::Propagation,
}

impl Starter<'_> {
    fn start(&mut self, state: &mut PartitionState, record: Record, lane_key: LaneKey) {
        let (partition, offset, timestamp) = (record.partition(), record.offset(), record.timestamp());
        if let Some(lane) = state.lanes.get_mut(&lane_key) {
            lane.queued += 1;
            // The lane task only stops when its sender is dropped, so this cannot fail.
            let _ = lane.tx.send(record);
            // Its completion is applied on this thread, after this.
            self.track(state, offset, timestamp);
            return;
        }
        // Nothing of this lane is in flight: start the record right here. A
        // handler that finishes without waiting costs no hand-off at all.
        let first = if self.inline.enabled {
            match self.inline.start(&self.lane.in_flight, record) {
                Ok(failure) => {
                    state.tracker.finished_at_once(offset, timestamp);
                    self.counts.record(&state.topic, partition, offset, failure);
                    return;
                }
                Err(first) => first,
            }
        } else {
            Err(record)
        };
        self.track(state, offset, timestamp);
        let (tx, rx) = tokio_mpsc::unbounded_channel();
        tracing::trace!(partition, offset, started = first.is_ok(), "new lane");
        let first = match first {
            Ok(started) => Some(started),
            Err(record) => {
                let _ = tx.send(record);
                None
            }
        };
        let id = LaneId { topic: Arc::clone(&state.topic), partition, epoch: state.epoch, key: lane_key.clone() };
        let retired = Arc::new(AtomicBool::new(false));
        self.runtime.spawn(run_lane(rx, self.lane.clone(), self.completions_tx.clone(), id, first, retired.clone()));
        state.lanes.insert(lane_key, Lane { tx, queued: 1, retired });
    }

    /// Counts a record handed to a lane as outstanding until it completes.
    fn track(&mut self, state: &mut PartitionState, offset: i64, timestamp: Option<i64>) {
        state.tracker.dispatched(offset, timestamp);
        state.outstanding += 1;
        *self.buffered += 1;
        if *self.buffered > self.max_buffered {
            state.overfull = true;
        }
    }
}
