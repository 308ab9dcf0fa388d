//! The dedup store in a SQL table, one type over PostgreSQL and SQLite: the
//! builder, the migrations, the clean-up and the [`DedupStore`] calls are
//! shared; each database gives its statements through [`SqlBackend`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::Pool;
use sqlx::migrate::{MigrateError, Migrator};

use super::sql::{self, Distinct};
use super::{Claim, DedupStore, Lease, StoreError};

/// A [`DedupStore`] in a SQL table, `processed_events`, on the database
/// `DB`: [`PostgresStore`](super::postgres::PostgresStore) (feature
/// `postgres`) or [`SqliteStore`](super::sqlite::SqliteStore) (feature
/// `sqlite`).
///
/// Create the table with [`migrate`](Self::migrate) (or run
/// [`migrator`](Self::migrator) in your own tooling), and delete old rows
/// with [`purge`](Self::purge) or [`spawn_purge`](Self::spawn_purge).
pub struct SqlStore<DB: SqlBackend> {
    pool: Pool<DB>,
    consumer_name: Arc<str>,
    timeout: Duration,
}

/// A database the SQL dedup store supports: PostgreSQL (feature `postgres`)
/// or SQLite (feature `sqlite`).
pub trait SqlBackend: sqlx::Database + sealed::Sealed {
    /// The shipped migrations, recorded in their own table.
    #[doc(hidden)]
    fn migrator() -> &'static Migrator;

    /// Runs [`migrator`](Self::migrator) on `pool`.
    #[doc(hidden)]
    fn migrate(pool: &Pool<Self>) -> BoxFuture<'_, Result<(), MigrateError>>;

    /// Claims distinct leases, sorted by (group, event id), for `ttl`;
    /// returns one [`Claim`] per lease, in order.
    #[doc(hidden)]
    fn claim<'a>(
        pool: &'a Pool<Self>,
        consumer: &'a str,
        leases: &'a [&'a Lease],
        ttl: Duration,
    ) -> BoxFuture<'a, sqlx::Result<Vec<Claim>>>;

    /// Marks distinct events done, whether or not their claim is still held.
    #[doc(hidden)]
    fn complete<'a>(
        pool: &'a Pool<Self>,
        consumer: &'a str,
        leases: &'a [&'a Lease],
    ) -> BoxFuture<'a, sqlx::Result<()>>;

    /// Deletes the claims that their owner still holds.
    #[doc(hidden)]
    fn release<'a>(pool: &'a Pool<Self>, leases: &'a [&'a Lease]) -> BoxFuture<'a, sqlx::Result<()>>;

    /// Deletes the events done more than `retention` ago and the expired
    /// claims; returns how many rows went.
    #[doc(hidden)]
    fn purge(pool: &Pool<Self>, retention: Duration) -> BoxFuture<'_, sqlx::Result<u64>>;
}

pub(super) mod sealed {
    pub trait Sealed {}
}

impl<DB: SqlBackend> SqlStore<DB> {
    /// A store using `pool`.
    pub fn new(pool: Pool<DB>) -> Self {
        Self { pool, consumer_name: super::consumer_name().into(), timeout: sql::DEFAULT_TIMEOUT }
    }

    /// What the `consumer_name` column says about this process; by default
    /// its host name and process id.
    pub fn consumer_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.consumer_name = name.into();
        self
    }

    /// How long a store call may take, waiting for a pooled connection (and,
    /// on SQLite, the write lock) included, before it fails (and the record
    /// is retried); 5 s by default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The shipped migrations, for running them in your own tooling.
    ///
    /// They record themselves in the table `_kafka_handler_migrations`, not
    /// in sqlx's `_sqlx_migrations`: your application's migrator and this
    /// one never see each other's versions, so neither needs
    /// `set_ignore_missing`, and both can run against the same database in
    /// any order.
    pub fn migrator() -> &'static Migrator {
        DB::migrator()
    }

    /// Creates or updates the `processed_events` table; a no-op when it is
    /// up to date. Safe beside the application's own sqlx migrations: see
    /// [`migrator`](Self::migrator).
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        DB::migrate(&self.pool).await
    }

    /// Deletes the events done more than `retention` ago, and the claims
    /// whose lease has expired; returns how many rows went.
    ///
    /// An event is recognised as done only while its row is kept, so
    /// `retention` must exceed the time a record can be redelivered after
    /// it was handled (the retention of its topic, for a replay); the
    /// retention given to the dedup layer is not kept per row. Not bound
    /// by [`timeout`](Self::timeout): a large purge may take a while.
    pub async fn purge(&self, retention: Duration) -> Result<u64, StoreError> {
        DB::purge(&self.pool, retention).await.map_err(StoreError::new)
    }

    /// Calls [`purge`](Self::purge) now and then every `every`, until the
    /// returned task is aborted. Failures are logged.
    pub fn spawn_purge(&self, every: Duration, retention: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        sql::spawn_purge(every, move || {
            let store = store.clone();
            async move { store.purge(retention).await }
        })
    }
}

impl<DB: SqlBackend> DedupStore for SqlStore<DB> {
    fn claim<'a>(&'a self, leases: &'a [Lease], ttl: Duration) -> BoxFuture<'a, Result<Vec<Claim>, StoreError>> {
        Box::pin(async move {
            let distinct = Distinct::new(leases);
            let claims =
                sql::within(self.timeout, DB::claim(&self.pool, &self.consumer_name, &distinct.leases, ttl)).await?;
            Ok(distinct.spread(&claims))
        })
    }

    fn complete<'a>(&'a self, leases: &'a [Lease], _retention: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let distinct = Distinct::new(leases);
            sql::within(self.timeout, DB::complete(&self.pool, &self.consumer_name, &distinct.leases)).await
        })
    }

    fn release<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let leases: Vec<&Lease> = leases.iter().collect();
            sql::within(self.timeout, DB::release(&self.pool, &leases)).await
        })
    }
}

impl<DB: SqlBackend> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone(), consumer_name: self.consumer_name.clone(), timeout: self.timeout }
    }
}

impl<DB: SqlBackend> std::fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("database", &DB::NAME)
            .field("pool", &self.pool)
            .field("consumer_name", &self.consumer_name)
            .field("timeout", &self.timeout)
            .finish()
    }
}
