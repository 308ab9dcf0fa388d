//! The PostgreSQL dedup store.

use std::sync::LazyLock;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{PgPool, Postgres};

use super::sql;
use super::sql_store::{SqlBackend, SqlStore, sealed};
use super::{Claim, Lease};

/// The shipped migrations, recorded in their own table (see
/// [`SqlStore::migrator`]).
static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.dangerous_set_table_name(sql::MIGRATIONS_TABLE);
    migrator
});

/// A [`DedupStore`](super::DedupStore) in a PostgreSQL table,
/// `processed_events`: one round trip per batch.
///
/// Create the table with [`migrate`](SqlStore::migrate) (or run
/// [`migrator`](SqlStore::migrator) in your own tooling), and delete old rows
/// with [`purge`](SqlStore::purge) or [`spawn_purge`](SqlStore::spawn_purge).
/// Times are the database server's clock.
///
/// ```no_run
/// use std::time::Duration;
/// use kafka_handler::dedup::postgres::PostgresStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::postgres::PgPoolOptions::new()
///     .acquire_timeout(Duration::from_secs(3))
///     .connect("postgres://localhost/app")
///     .await?;
/// let store = PostgresStore::new(pool);
/// store.migrate().await?;
/// let _purge = store.spawn_purge(Duration::from_secs(3600), Duration::from_secs(7 * 86_400));
/// # Ok(())
/// # }
/// ```
pub type PostgresStore = SqlStore<Postgres>;

impl sealed::Sealed for Postgres {}

impl SqlBackend for Postgres {
    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn migrate(pool: &PgPool) -> BoxFuture<'_, Result<(), MigrateError>> {
        MIGRATOR.run(pool).boxed()
    }

    fn claim<'a>(
        pool: &'a PgPool,
        consumer: &'a str,
        leases: &'a [&'a Lease],
        ttl: Duration,
    ) -> BoxFuture<'a, sqlx::Result<Vec<Claim>>> {
        let [groups, event_ids, owners] = columns(leases);
        async move {
            // Rows this statement neither inserted nor took over, and that its
            // snapshot does not show, were inserted meanwhile by another claim:
            // in progress.
            let rows: Vec<(i64, bool, bool)> = sqlx::query_as(
                "WITH input AS ( \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
                         AS i(consumer_group, event_id, lease_owner, n) \
                 ), claimed AS ( \
                     INSERT INTO processed_events AS p \
                         (consumer_group, event_id, consumer_name, lease_owner, lease_until) \
                     SELECT consumer_group, event_id, $4, lease_owner, now() + make_interval(secs => $5) \
                     FROM input ORDER BY n \
                     ON CONFLICT (consumer_group, event_id) DO UPDATE \
                     SET consumer_name = excluded.consumer_name, lease_owner = excluded.lease_owner, \
                         lease_until = excluded.lease_until \
                     WHERE p.processed_at IS NULL AND (p.lease_until IS NULL OR p.lease_until <= now() \
                         OR p.lease_owner = excluded.lease_owner) \
                     RETURNING p.consumer_group, p.event_id \
                 ) \
                 SELECT i.n, c.event_id IS NOT NULL, p.processed_at IS NOT NULL \
                 FROM input i \
                 LEFT JOIN claimed c ON c.consumer_group = i.consumer_group AND c.event_id = i.event_id \
                 LEFT JOIN processed_events p ON p.consumer_group = i.consumer_group AND p.event_id = i.event_id",
            )
            .bind(groups)
            .bind(event_ids)
            .bind(owners)
            .bind(consumer)
            .bind(ttl.as_secs_f64())
            .fetch_all(pool)
            .await?;
            let mut claims = vec![Claim::InProgress; leases.len()];
            for (n, acquired, done) in rows {
                let claim = claims
                    .get_mut(usize::try_from(n - 1).unwrap_or(usize::MAX))
                    .ok_or_else(|| sqlx::Error::Protocol(format!("the claim answered row {n} of {}", leases.len())))?;
                *claim = match (acquired, done) {
                    (true, _) => Claim::Acquired,
                    (false, true) => Claim::Done,
                    (false, false) => Claim::InProgress,
                };
            }
            Ok(claims)
        }
        .boxed()
    }

    fn complete<'a>(pool: &'a PgPool, consumer: &'a str, leases: &'a [&'a Lease]) -> BoxFuture<'a, sqlx::Result<()>> {
        let [groups, event_ids, _] = columns(leases);
        // An upsert: the effect happened even if the claim was lost
        // meanwhile (expired and purged, or taken over).
        sqlx::query(
            "INSERT INTO processed_events AS p (consumer_group, event_id, consumer_name, processed_at) \
             SELECT consumer_group, event_id, $3, now() \
             FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS i(consumer_group, event_id, n) \
             ORDER BY n \
             ON CONFLICT (consumer_group, event_id) DO UPDATE \
             SET consumer_name = excluded.consumer_name, processed_at = excluded.processed_at, \
                 lease_owner = NULL, lease_until = NULL \
             WHERE p.processed_at IS NULL",
        )
        .bind(groups)
        .bind(event_ids)
        .bind(consumer)
        .execute(pool)
        .map(|r| r.map(drop))
        .boxed()
    }

    fn release<'a>(pool: &'a PgPool, leases: &'a [&'a Lease]) -> BoxFuture<'a, sqlx::Result<()>> {
        let [groups, event_ids, owners] = columns(leases);
        sqlx::query(
            "DELETE FROM processed_events AS p \
             USING UNNEST($1::text[], $2::text[], $3::text[]) AS i(consumer_group, event_id, lease_owner) \
             WHERE p.consumer_group = i.consumer_group AND p.event_id = i.event_id \
               AND p.lease_owner = i.lease_owner AND p.processed_at IS NULL",
        )
        .bind(groups)
        .bind(event_ids)
        .bind(owners)
        .execute(pool)
        .map(|r| r.map(drop))
        .boxed()
    }

    fn purge(pool: &PgPool, retention: Duration) -> BoxFuture<'_, sqlx::Result<u64>> {
        sqlx::query(
            "DELETE FROM processed_events \
             WHERE processed_at < now() - make_interval(secs => $1) \
                OR (processed_at IS NULL AND lease_until <= now())",
        )
        .bind(retention.as_secs_f64())
        .execute(pool)
        .map(|r| r.map(|done| done.rows_affected()))
        .boxed()
    }
}

/// The groups, event ids and owners of `leases`, as arrays to bind.
fn columns<'a>(leases: &[&'a Lease]) -> [Vec<&'a str>; 3] {
    let column = |f: fn(&'a Lease) -> &'a str| leases.iter().map(|l| f(l)).collect();
    [column(|l| &l.group), column(|l| &l.event_id), column(|l| &l.owner)]
}
