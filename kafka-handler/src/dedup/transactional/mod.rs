//! Exactly-once effects: the dedup row and the handler's writes commit in
//! one database transaction.
//!
//! For each event the runtime inserts `(group, event id)` into
//! `processed_events` and calls the [`TxHandler`] with the same connection,
//! inside a transaction; both commit together. A duplicate finds the row and
//! is acknowledged without calling the handler; a crash before the commit
//! leaves neither the row nor the effect, and Kafka redelivers the event.
//! Effects outside the database (an HTTP call) are not covered: use
//! [store dedup](crate::middleware::DedupLayer) for those.
//!
//! Events handled at the same time (from different partitions or keys) are
//! grouped into one transaction, with a savepoint per event: one event
//! failing rolls back its own row and writes only, and the others commit.
//! Grouping makes durable commits cheap: one `fsync` for many events. A
//! record's outcome is reported only after its transaction committed, so no
//! offset is stored for an event whose effect might still roll back.
//!
//! A conflict with a concurrent transaction (PostgreSQL's deadlock or
//! serialization failure, SQLite's busy database), whether a handler's
//! statement or the runtime's hits it, is not a failure of the events: the
//! whole transaction rolls back, releasing its locks, and runs again after a
//! short randomized pause, up to [`CONFLICT_RERUNS`] times, without
//! spending any event's retries. Only a transaction still in conflict after
//! that fails its events retryably.
//!
#![cfg_attr(feature = "postgres", doc = include_str!("../../docs/transactional.md"))]

mod batch;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{DedupCounters, EventIdSource};
use crate::extract::Group;
use crate::handler::BoxHandlerFuture;
use crate::{HandlerError, Record};

/// Business logic whose effect is a write to the database of `DB`, made
/// through `conn`, inside the transaction that also records the event as
/// processed. Implement it with an `async fn`.
///
/// Do not commit or roll back on `conn`: the runtime does. Return an error to
/// roll back this event's writes; the other events of the transaction are
/// not affected.
pub trait TxHandler<DB: Backend>: Clone + Send + Sync + 'static {
    /// Handles one record.
    fn handle(
        &self,
        conn: &mut DB::Connection,
        record: Record,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A database the transactional mode supports: PostgreSQL (feature
/// `postgres`) or SQLite (feature `sqlite`).
pub trait Backend: sqlx::Database + sealed::Sealed {
    #[doc(hidden)]
    const BEGIN: &'static str;

    #[doc(hidden)]
    fn execute<'c>(conn: &'c mut Self::Connection, sql: &'static str) -> BoxFuture<'c, Result<(), sqlx::Error>>;

    /// Inserts the dedup rows of distinct `(group, event id)` pairs, in
    /// order; for each, `false` if it was there.
    #[doc(hidden)]
    fn insert_processed<'c>(
        conn: &'c mut Self::Connection,
        events: &'c [(&'c str, &'c str)],
        consumer: &'c str,
    ) -> BoxFuture<'c, Result<Vec<bool>, sqlx::Error>>;

    /// Whether `error` is a conflict between concurrent transactions (a
    /// deadlock, a serialization failure, a busy database) that running the
    /// transaction again resolves.
    #[doc(hidden)]
    fn is_conflict(error: &sqlx::Error) -> bool;

    /// Deletes the dedup row of an event whose handler failed.
    #[doc(hidden)]
    fn delete_processed<'c>(
        conn: &'c mut Self::Connection,
        group: &'c str,
        event_id: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>>;
}

mod sealed {
    pub trait Sealed {}
}

/// Runs a [`TxHandler`] in transactional dedup mode: a [`tower::Service`]
/// to give to `ConsumerBuilder::service`.
///
/// Defaults: the payload field `eventId`, up to 256 events per transaction,
/// 2 transactions at once (each on its own pooled connection).
pub struct Transactional<DB: Backend, H> {
    shared: Arc<Shared<DB, H>>,
}

struct Shared<DB: Backend, H> {
    pool: sqlx::Pool<DB>,
    handler: Arc<H>,
    source: EventIdSource,
    consumer: Arc<str>,
    max_batch: usize,
    connections: usize,
    counters: Arc<DedupCounters>,
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

struct Job {
    record: Record,
    group: Arc<str>,
    event_id: Arc<str>,
    reply: oneshot::Sender<Result<(), HandlerError>>,
}

impl<DB: Backend, H: TxHandler<DB>> Transactional<DB, H> {
    /// `handler`, with its writes and the dedup rows on connections of `pool`.
    pub fn new(pool: sqlx::Pool<DB>, handler: H) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                handler: Arc::new(handler),
                source: EventIdSource::default(),
                consumer: Arc::from(super::consumer_name()),
                max_batch: 256,
                connections: 2,
                counters: Arc::default(),
                queue: OnceLock::new(),
            }),
        }
    }

    /// Where the event id is (default: the payload field `eventId`).
    pub fn event_id(self, source: EventIdSource) -> Self {
        self.configure(|s| s.source = source)
    }

    /// Most events in one transaction (default 256).
    pub fn max_batch(self, n: usize) -> Self {
        self.configure(|s| s.max_batch = n.max(1))
    }

    /// Transactions in progress at once, each on its own connection
    /// (default 2).
    pub fn connections(self, n: usize) -> Self {
        self.configure(|s| s.connections = n.max(1))
    }

    /// Fills the `consumer_name` column (default: host name and process id).
    pub fn consumer_name(self, name: &str) -> Self {
        self.configure(|s| s.consumer = Arc::from(name))
    }

    /// What dedup did so far: events handled (claimed), duplicates skipped
    /// (hits), failed transactions (store errors).
    pub fn counters(&self) -> Arc<DedupCounters> {
        self.shared.counters.clone()
    }

    /// Changes this service's settings. A service configured after it was
    /// cloned becomes a service of its own: the clones keep the old settings
    /// and their running transactions.
    fn configure(mut self, f: impl FnOnce(&mut Shared<DB, H>)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }
}

impl<DB: Backend, H> Clone for Shared<DB, H> {
    /// The same settings and handler, with a queue of its own, started on
    /// its first call.
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            handler: self.handler.clone(),
            source: self.source.clone(),
            consumer: self.consumer.clone(),
            max_batch: self.max_batch,
            connections: self.connections,
            counters: self.counters.clone(),
            queue: OnceLock::new(),
        }
    }
}

impl<DB: Backend, H> Clone for Transactional<DB, H> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<DB: Backend, H> std::fmt::Debug for Transactional<DB, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactional")
            .field("database", &DB::NAME)
            .field("event_id", &self.shared.source)
            .field("max_batch", &self.shared.max_batch)
            .field("connections", &self.shared.connections)
            .finish_non_exhaustive()
    }
}

impl<DB: Backend, H: TxHandler<DB>> tower::Service<Record> for Transactional<DB, H> {
    type Response = ();
    type Error = HandlerError;
    type Future = BoxHandlerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, record: Record) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let event_id = shared.source.event_id(&record).map_err(HandlerError::permanent)?;
            let group = record.lookup::<Group>().ok_or_else(|| HandlerError::permanent("no consumer group"))?.0.clone();
            let (reply, outcome) = oneshot::channel();
            let queue = shared.queue.get_or_init(|| batch::start(&shared));
            queue
                .send(Job { record, group, event_id, reply })
                .map_err(|_| HandlerError::retryable("the transaction workers stopped"))?;
            outcome.await.map_err(|_| HandlerError::retryable("the transaction workers stopped"))?
        })
    }
}

/// How many times a transaction in conflict with a concurrent one runs
/// again before its events fail retryably.
pub const CONFLICT_RERUNS: usize = 10;
