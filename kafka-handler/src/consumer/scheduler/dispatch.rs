//! Handing polled records to their lanes, in order.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use bytes::Bytes;
use tokio::sync::mpsc as tokio_mpsc;

use super::Scheduler;
use super::complete::count;
#[cfg(feature = "retry-topic")]
use super::due;
use super::partition::{Lane, PartitionState};
use crate::Record;
use crate::consumer::Ordering;
use crate::consumer::completion::{Completion, LaneId, LaneKey};
use crate::consumer::fetch::Polled;
use crate::consumer::inline::InlineStart;
use crate::consumer::lane::{LaneConfig, run_lane};
use crate::metrics::observed::Counts;
use crate::record::{Header, KeyAndPayload};

fn key_hash(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(key)
}

impl Scheduler {
    /// Hands polled records to their lanes, in order.
    pub(crate) fn dispatch<'m>(&mut self, batch: impl IntoIterator<Item = Polled<'m>>) {
        // The trace context is read only for a record span's parent, so only
        // while a subscriber wants record spans; asked once a batch.
        #[cfg(feature = "trace-context")]
        let context = self.propagation != crate::trace_context::Propagation::None && crate::record_span::wanted();
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
    pub(super) fn split(&mut self) -> (&mut HashMap<Arc<str>, HashMap<i32, PartitionState>>, Starter<'_>) {
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
    if context && let Some(cx) = starter.propagation.extract(borrowed.map(|h| move || h.iter())) {
        record.set_trace_parent(cx);
    }
    let lane_key = match (starter.ordering, msg.key()) {
        (Ordering::Partition, _) => LaneKey::Partition,
        (Ordering::Key, Some(key)) => LaneKey::Key(key_hash(key)),
        (Ordering::Key, None) | (Ordering::Unordered, _) => LaneKey::Record(msg.offset()),
    };
    #[cfg(feature = "retry-topic")]
    let Some((record, lane_key)) = due::hold(&mut state.held, record, lane_key) else {
        state.outstanding += 1;
        *starter.buffered += 1;
        return;
    };
    starter.start(state, record, lane_key);
}

/// Starts records: on the polling thread when their lane is idle, else in
/// their lane's task.
pub(super) struct Starter<'a> {
    pub(super) inline: &'a mut InlineStart,
    pub(super) lane: &'a LaneConfig,
    pub(super) runtime: &'a tokio::runtime::Handle,
    pub(super) completions_tx: &'a mpsc::Sender<Completion>,
    pub(super) counts: &'a mut Counts,
    pub(super) buffered: &'a mut usize,
    pub(super) max_buffered: usize,
    pub(super) shared: &'a Arc<http::Extensions>,
    pub(super) ordering: Ordering,
    pub(super) reads_headers: bool,
    #[cfg(feature = "trace-context")]
    pub(super) propagation: crate::trace_context::Propagation,
}

impl Starter<'_> {
    pub(super) fn start(&mut self, state: &mut PartitionState, record: Record, lane_key: LaneKey) {
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
                    count(self.counts, &state.topic, partition, offset, failure);
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
    pub(super) fn track(&mut self, state: &mut PartitionState, offset: i64, timestamp: Option<i64>) {
        state.tracker.dispatched(offset, timestamp);
        state.outstanding += 1;
        *self.buffered += 1;
        if *self.buffered > self.max_buffered {
            state.overfull = true;
        }
    }
}
