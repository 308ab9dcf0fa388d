use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::{Dedup, DedupState};
use crate::dedup::{Batcher, DedupCounters, DedupStore, EventIdSource};

/// Handles each event once per consumer group, checking its event id in a
/// [`DedupStore`]. Applies [`Dedup`].
///
/// Defaults: the payload field `eventId` (or what `#[handler(event_id = ..)]`
/// declares), a 30 s lease, 7 days of retention, claims held elsewhere
/// re-checked every 200 ms.
#[derive(Clone, Debug)]
pub struct DedupLayer {
    pub(super) store: Arc<dyn DedupStore>,
    pub(crate) source: Option<EventIdSource>,
    pub(super) lease: Duration,
    pub(super) retention: Duration,
    pub(super) recheck: Duration,
    pub(super) counters: Arc<DedupCounters>,
}

impl DedupLayer {
    /// Dedup in `store`.
    pub fn new(store: impl DedupStore) -> Self {
        Self {
            store: Arc::new(store),
            source: None,
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            recheck: Duration::from_millis(200),
            counters: Arc::default(),
        }
    }

    /// Where the event id is (default: the payload field `eventId`).
    pub fn event_id(mut self, source: EventIdSource) -> Self {
        self.source = Some(source);
        self
    }

    /// How long a claim protects an event being handled (default 30 s). If
    /// the consumer dies mid-event, another one handles the event after this
    /// long; make it longer than the slowest handler, in-place retries
    /// included.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a done event is remembered (default 7 days, Kafka's default
    /// retention): a copy redelivered later than this is handled again.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How often a record whose event is claimed elsewhere checks again
    /// (default 200 ms).
    pub fn recheck_interval(mut self, interval: Duration) -> Self {
        self.recheck = interval;
        self
    }

    /// What dedup did so far: claims, hits, waits, store errors.
    pub fn counters(&self) -> Arc<DedupCounters> {
        self.counters.clone()
    }

    /// The event id source, unless one was set.
    pub(crate) fn or_event_id(mut self, source: EventIdSource) -> Self {
        self.source.get_or_insert(source);
        self
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;

    /// A service with a batcher of its own, shared by its clones.
    fn layer(&self, inner: S) -> Self::Service {
        let state = DedupState {
            batcher: Batcher::new(self.store.clone(), self.lease, self.retention),
            source: self.source.clone().unwrap_or_default(),
            recheck: self.recheck,
            counters: self.counters.clone(),
        };
        Dedup { inner, state: Arc::new(state) }
    }
}
