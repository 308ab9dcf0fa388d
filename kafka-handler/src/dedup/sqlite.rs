//! The SQLite dedup store.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{SqliteConnection, SqlitePool};

use super::sql::{self, Distinct};
use super::{Claim, DedupStore, Lease, StoreError};

/// The shipped migrations, recorded in their own table (see
/// [`SqliteStore::migrate`]).
pub(crate) static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    migrator.dangerous_set_table_name(sql::MIGRATIONS_TABLE);
    migrator
});

/// A [`DedupStore`] in an SQLite table, `processed_events`: one short
/// write transaction (`BEGIN IMMEDIATE`) per batch.
///
/// For consumers on one host sharing a database file. Create the table with
/// [`migrate`](Self::migrate) (or run [`migrator`](Self::migrator) in your
/// own tooling), and delete old rows with [`purge`](Self::purge) or
/// [`spawn_purge`](Self::spawn_purge). Times are this process's clock, in
/// milliseconds since the Unix epoch.
///
/// ```no_run
/// use std::time::Duration;
/// use kafka_handler::dedup::sqlite::SqliteStore;
/// use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let options = SqliteConnectOptions::new()
///     .filename("dedup.db")
///     .create_if_missing(true)
///     .journal_mode(SqliteJournalMode::Wal);
/// let store = SqliteStore::new(SqlitePool::connect_with(options).await?);
/// store.migrate().await?;
/// let _purge = store.spawn_purge(Duration::from_secs(3600), Duration::from_secs(7 * 86_400));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    consumer_name: Arc<str>,
    timeout: Duration,
}

impl SqliteStore {
    /// A store using `pool`.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool, consumer_name: super::consumer_name().into(), timeout: sql::DEFAULT_TIMEOUT }
    }

    /// What the `consumer_name` column says about this process; by default
    /// its host name and process id.
    pub fn consumer_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.consumer_name = name.into();
        self
    }

    /// How long a store call may take, waiting for a pooled connection and
    /// the write lock included, before it fails (and the record is
    /// retried); 5 s by default.
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
        &MIGRATOR
    }

    /// Creates or updates the `processed_events` table; a no-op when it is
    /// up to date. Safe beside the application's own sqlx migrations: see
    /// [`migrator`](Self::migrator).
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        MIGRATOR.run(&self.pool).await
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
        let now = now_ms();
        let done = sqlx::query(
            "DELETE FROM processed_events \
             WHERE processed_at < ?1 OR (processed_at IS NULL AND lease_until <= ?2)",
        )
        .bind(now.saturating_sub(millis(retention)))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(StoreError::new)?;
        Ok(done.rows_affected())
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

    async fn claim_in(&self, tx: &mut SqliteConnection, lease: &Lease, now: i64, ttl: i64) -> sqlx::Result<Claim> {
        let acquired = sqlx::query(
            "INSERT INTO processed_events (consumer_group, event_id, consumer_name, lease_owner, lease_until) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (consumer_group, event_id) DO UPDATE \
             SET consumer_name = excluded.consumer_name, lease_owner = excluded.lease_owner, \
                 lease_until = excluded.lease_until \
             WHERE processed_at IS NULL \
               AND (lease_until IS NULL OR lease_until <= ?6 OR lease_owner = excluded.lease_owner) \
             RETURNING 1",
        )
        .bind(&*lease.group)
        .bind(&*lease.event_id)
        .bind(&*self.consumer_name)
        .bind(&*lease.owner)
        .bind(now.saturating_add(ttl))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if acquired {
            return Ok(Claim::Acquired);
        }
        let done: bool = sqlx::query_scalar(
            "SELECT processed_at IS NOT NULL FROM processed_events WHERE consumer_group = ?1 AND event_id = ?2",
        )
        .bind(&*lease.group)
        .bind(&*lease.event_id)
        .fetch_one(&mut *tx)
        .await?;
        Ok(if done { Claim::Done } else { Claim::InProgress })
    }
}

impl DedupStore for SqliteStore {
    fn claim<'a>(&'a self, leases: &'a [Lease], ttl: Duration) -> BoxFuture<'a, Result<Vec<Claim>, StoreError>> {
        Box::pin(sql::within(self.timeout, async move {
            let distinct = Distinct::new(leases);
            let (now, ttl) = (now_ms(), millis(ttl));
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let mut claims = Vec::with_capacity(distinct.leases.len());
            for lease in &distinct.leases {
                claims.push(self.claim_in(&mut tx, lease, now, ttl).await?);
            }
            tx.commit().await?;
            Ok(distinct.spread(&claims))
        }))
    }

    fn complete<'a>(&'a self, leases: &'a [Lease], _retention: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(sql::within(self.timeout, async move {
            let now = now_ms();
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            for lease in Distinct::new(leases).leases {
                // An upsert: the effect happened even if the claim was lost
                // meanwhile (expired and purged, or taken over).
                sqlx::query(
                    "INSERT INTO processed_events (consumer_group, event_id, consumer_name, processed_at) \
                     VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (consumer_group, event_id) DO UPDATE \
                     SET consumer_name = excluded.consumer_name, processed_at = excluded.processed_at, \
                         lease_owner = NULL, lease_until = NULL \
                     WHERE processed_at IS NULL",
                )
                .bind(&*lease.group)
                .bind(&*lease.event_id)
                .bind(&*self.consumer_name)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }))
    }

    fn release<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(sql::within(self.timeout, async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            for lease in leases {
                sqlx::query(
                    "DELETE FROM processed_events \
                     WHERE consumer_group = ?1 AND event_id = ?2 AND lease_owner = ?3 AND processed_at IS NULL",
                )
                .bind(&*lease.group)
                .bind(&*lease.event_id)
                .bind(&*lease.owner)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }))
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
