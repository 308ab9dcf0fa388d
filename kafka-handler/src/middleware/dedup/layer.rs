use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::Dedup;
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
    pub(super) batcher: Option<Arc<Batcher>>,
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
            batcher: None,
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

    fn batcher(&self) -> Arc<Batcher> {
        match &self.batcher {
            Some(b) => b.clone(),
            None => Arc::new(Batcher::new(self.store.clone(), self.lease, self.retention)),
        }
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut config = self.clone();
        config.batcher = Some(self.batcher());
        Dedup { inner, config: Arc::new(config) }
    }
}
