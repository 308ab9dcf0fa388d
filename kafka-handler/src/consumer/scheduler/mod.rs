//! Hands records to handlers in the order the consumer promises, and learns
//! which offsets are safe to commit.
//!
//! All of this state is owned by the polling thread (the rebalance callbacks
//! run on it too), so records are dispatched and completions applied without
//! contention. Handlers run on the tokio runtime in *lanes*: one task per
//! partition, per key or per record, depending on the [`Ordering`].

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::sync::mpsc;

mod backpressure;
mod complete;
mod dispatch;
#[cfg(feature = "retry-topic")]
mod due;
mod observe;
mod partition;

use self::partition::PartitionState;
use super::Ordering;
use super::completion::Completion;
use super::inline::InlineStart;
use super::lane::LaneConfig;
use crate::metrics::observed::Counts;

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
                    config.shared.get::<crate::record_span::EventIdOf>(),
                    Some(crate::record_span::EventIdOf(crate::dedup::EventIdSource::Header(_)))
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
}
