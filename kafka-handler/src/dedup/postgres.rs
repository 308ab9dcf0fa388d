//! The PostgreSQL dedup store.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};

use super::sql::{self, Distinct};
use super::{Claim, DedupStore, Lease, StoreError};

/// The shipped migrations, recorded in their own table (see
/// [`PostgresStore::migrate`]).
pub(crate) static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.dangerous_set_table_name(sql::MIGRATIONS_TABLE);
    migrator
});

/// A [`DedupStore`] in a PostgreSQL table, `processed_events`: one round
/// trip per batch.
///
/// Create the table with [`migrate`](Self::migrate) (or run
/// [`migrator`](Self::migrator) in your own tooling), and delete old rows
/// with [`purge`](Self::purge) or [`spawn_purge`](Self::spawn_purge). Times
/// are the database server's clock.
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
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    consumer_name: Arc<str>,
    timeout: Duration,
}

impl PostgresStore {
    /// A store using `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, consumer_name: super::consumer_name().into(), timeout: sql::DEFAULT_TIMEOUT }
    }

    /// What the `consumer_name` column says about this process; by default
    /// its host name and process id.
    pub fn consumer_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.consumer_name = name.into();
        self
    }

    /// How long a store call may take, waiting for a pooled connection
    /// included, before it fails (and the record is retried); 5 s by default.
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
        let done = sqlx::query(
            "DELETE FROM processed_events \
             WHERE processed_at < now() - make_interval(secs => $1) \
                OR (processed_at IS NULL AND lease_until <= now())",
        )
        .bind(retention.as_secs_f64())
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
}

impl DedupStore for PostgresStore {
    fn claim<'a>(&'a self, leases: &'a [Lease], ttl: Duration) -> BoxFuture<'a, Result<Vec<Claim>, StoreError>> {
        Box::pin(async move {
            let distinct = Distinct::new(leases);
            let [groups, event_ids, owners] = columns(&distinct.leases);
            // Rows this statement neither inserted nor took over, and that its
            // snapshot does not show, were inserted meanwhile by another claim:
            // in progress.
            let rows: Vec<(i64, bool, bool)> = sql::within(
                self.timeout,
                sqlx::query_as(
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
                .bind(&*self.consumer_name)
                .bind(ttl.as_secs_f64())
                .fetch_all(&self.pool),
            )
            .await?;
            let mut claims = vec![Claim::InProgress; distinct.leases.len()];
            for (n, acquired, done) in rows {
                let claim = claims.get_mut(usize::try_from(n - 1).unwrap_or(usize::MAX)).ok_or_else(|| {
                    StoreError::new(format!("the claim answered row {n} of {}", distinct.leases.len()))
                })?;
                *claim = match (acquired, done) {
                    (true, _) => Claim::Acquired,
                    (false, true) => Claim::Done,
                    (false, false) => Claim::InProgress,
                };
            }
            Ok(distinct.spread(&claims))
        })
    }

    fn complete<'a>(&'a self, leases: &'a [Lease], _retention: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let distinct = Distinct::new(leases);
            let [groups, event_ids, _] = columns(&distinct.leases);
            // An upsert: the effect happened even if the claim was lost
            // meanwhile (expired and purged, or taken over).
            sql::within(
                self.timeout,
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
                .bind(&*self.consumer_name)
                .execute(&self.pool),
            )
            .await
            .map(drop)
        })
    }

    fn release<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let [groups, event_ids, owners] = columns(&leases.iter().collect::<Vec<_>>());
            sql::within(
                self.timeout,
                sqlx::query(
                    "DELETE FROM processed_events AS p \
                     USING UNNEST($1::text[], $2::text[], $3::text[]) AS i(consumer_group, event_id, lease_owner) \
                     WHERE p.consumer_group = i.consumer_group AND p.event_id = i.event_id \
                       AND p.lease_owner = i.lease_owner AND p.processed_at IS NULL",
                )
                .bind(groups)
                .bind(event_ids)
                .bind(owners)
                .execute(&self.pool),
            )
            .await
            .map(drop)
        })
    }
}

/// The groups, event ids and owners of `leases`, as arrays to bind.
fn columns<'a>(leases: &[&'a Lease]) -> [Vec<&'a str>; 3] {
    let column = |f: fn(&'a Lease) -> &'a str| leases.iter().map(|l| f(l)).collect();
    [column(|l| &l.group), column(|l| &l.event_id), column(|l| &l.owner)]
}
