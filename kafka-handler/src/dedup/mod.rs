#![doc = include_str!("../docs/idempotency.md")]

mod batch;
mod event_id;
mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql_store;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures::future::BoxFuture;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub mod transactional;

pub use self::event_id::{EventId, EventIdError, EventIdErrorKind, EventIdSource};
pub use self::memory::MemoryStore;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "sqlite"))))]
pub use self::sql_store::{SqlBackend, SqlStore};
use crate::BoxError;

/// A claim on one event id by one owner: what a [`DedupStore`] records.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The consumer group; each group handles an event once.
    pub group: Arc<str>,
    /// The event id.
    pub event_id: Arc<str>,
    /// Who holds the claim: unique per claim, so that only its holder can
    /// release it.
    pub owner: Arc<str>,
}

/// What a claim found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The claim is ours until its lease expires: run the handler.
    Acquired,
    /// The event was handled before: skip it.
    Done,
    /// Someone else holds an unexpired claim: wait and claim again.
    InProgress,
}

/// Where claims and done marks are kept, keyed by (group, event id).
///
/// Every method takes a batch, so that a store can answer many records in
/// one round trip; the [`DedupLayer`](crate::middleware::DedupLayer) gathers
/// the records in flight into batches. A store must be safe to call from
/// several consumers at once: `claim` is atomic per lease.
pub trait DedupStore: Send + Sync + 'static {
    /// Claims each lease for `ttl` unless its event is done or claimed by
    /// another owner; returns one [`Claim`] per lease, in order.
    fn claim<'a>(&'a self, leases: &'a [Lease], ttl: Duration) -> BoxFuture<'a, Result<Vec<Claim>, StoreError>>;

    /// Marks each event done, to be remembered for `retention`.
    fn complete<'a>(&'a self, leases: &'a [Lease], retention: Duration) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Drops each claim, if its owner still holds it, so the event can run again.
    fn release<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<(), StoreError>>;
}

impl<S: DedupStore + ?Sized> DedupStore for Arc<S> {
    fn claim<'a>(&'a self, leases: &'a [Lease], ttl: Duration) -> BoxFuture<'a, Result<Vec<Claim>, StoreError>> {
        (**self).claim(leases, ttl)
    }

    fn complete<'a>(&'a self, leases: &'a [Lease], retention: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).complete(leases, retention)
    }

    fn release<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).release(leases)
    }
}

impl std::fmt::Debug for dyn DedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DedupStore")
    }
}

/// The dedup store could not be reached or answered unexpectedly.
///
/// The runtime fails closed: the record is retried in place with backoff,
/// never handled without the check, never committed.
#[derive(Debug, thiserror::Error)]
#[error("dedup store: {0}")]
pub struct StoreError(#[source] pub BoxError);

impl StoreError {
    /// Wraps any error.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self(error.into())
    }
}

/// Counts of what dedup did, for metrics.
#[derive(Debug, Default)]
pub struct DedupCounters {
    pub(crate) claimed: AtomicU64,
    pub(crate) hits: AtomicU64,
    pub(crate) waits: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) conflicts: AtomicU64,
}

impl DedupCounters {
    /// Events claimed, to be handled.
    pub fn claimed(&self) -> u64 {
        self.claimed.load(Relaxed)
    }

    /// Records skipped because their event was done already.
    pub fn hits(&self) -> u64 {
        self.hits.load(Relaxed)
    }

    /// Times a record waited for a claim held elsewhere.
    pub fn waits(&self) -> u64 {
        self.waits.load(Relaxed)
    }

    /// Transactions run again because they were in conflict with a
    /// concurrent one (transactional mode; no event's retries spent).
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Relaxed)
    }

    /// Store calls that failed (the records were retried).
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

pub(crate) use self::batch::Batcher;

/// Who handled an event, for the `consumer_name` column: host name and
/// process id.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

/// Set by a layer that passed the record on to be handled later (a retry
/// topic): the dedup claim is then released, not marked done.
#[derive(Clone, Debug, Default)]
pub(crate) struct Deferred(Arc<std::sync::atomic::AtomicBool>);

impl Deferred {
    #[cfg_attr(not(feature = "retry-topic"), allow(dead_code))]
    pub(crate) fn mark(record: &crate::Record) {
        if let Some(d) = record.extensions().get::<Deferred>() {
            d.0.store(true, Relaxed);
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Relaxed)
    }
}
