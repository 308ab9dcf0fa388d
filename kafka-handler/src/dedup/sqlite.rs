//! The SQLite dedup store.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use super::sql;
use super::sql_store::{SqlBackend, SqlStore, sealed};
use super::{Claim, Lease};

/// The shipped migrations, recorded in their own table (see
/// [`SqlStore::migrator`]).
static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    migrator.dangerous_set_table_name(sql::MIGRATIONS_TABLE);
    migrator
});

/// A [`DedupStore`](super::DedupStore) in an SQLite table,
/// `processed_events`: one short write transaction (`BEGIN IMMEDIATE`) per
/// batch.
///
/// For consumers on one host sharing a database file. Create the table with
/// [`migrate`](SqlStore::migrate) (or run [`migrator`](SqlStore::migrator) in
/// your own tooling), and delete old rows with [`purge`](SqlStore::purge) or
/// [`spawn_purge`](SqlStore::spawn_purge). Times are this process's clock, in
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
pub type SqliteStore = SqlStore<Sqlite>;

impl sealed::Sealed for Sqlite {}

impl SqlBackend for Sqlite {
    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn migrate(pool: &SqlitePool) -> BoxFuture<'_, Result<(), MigrateError>> {
        MIGRATOR.run(pool).boxed()
    }

    fn claim<'a>(
        pool: &'a SqlitePool,
        consumer: &'a str,
        leases: &'a [&'a Lease],
        ttl: Duration,
    ) -> BoxFuture<'a, sqlx::Result<Vec<Claim>>> {
        async move {
            let (now, ttl) = (now_ms(), millis(ttl));
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let mut claims = Vec::with_capacity(leases.len());
            for lease in leases {
                claims.push(claim_in(&mut tx, consumer, lease, now, ttl).await?);
            }
            tx.commit().await?;
            Ok(claims)
        }
        .boxed()
    }

    fn complete<'a>(
        pool: &'a SqlitePool,
        consumer: &'a str,
        leases: &'a [&'a Lease],
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        async move {
            let now = now_ms();
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            for lease in leases {
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
                .bind(consumer)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }
        .boxed()
    }

    fn release<'a>(pool: &'a SqlitePool, leases: &'a [&'a Lease]) -> BoxFuture<'a, sqlx::Result<()>> {
        async move {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
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
        }
        .boxed()
    }

    fn purge(pool: &SqlitePool, retention: Duration) -> BoxFuture<'_, sqlx::Result<u64>> {
        let now = now_ms();
        sqlx::query(
            "DELETE FROM processed_events \
             WHERE processed_at < ?1 OR (processed_at IS NULL AND lease_until <= ?2)",
        )
        .bind(now.saturating_sub(millis(retention)))
        .bind(now)
        .execute(pool)
        .map(|r| r.map(|done| done.rows_affected()))
        .boxed()
    }
}

/// Claims one lease inside the write transaction `tx`.
async fn claim_in(tx: &mut SqliteConnection, consumer: &str, lease: &Lease, now: i64, ttl: i64) -> sqlx::Result<Claim> {
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
    .bind(consumer)
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

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
