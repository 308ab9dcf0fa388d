//! The SQL dedup stores against a real PostgreSQL (`DATABASE_URL`) and an
//! SQLite file. The PostgreSQL table is shared: every test uses a fresh group.
//!
//! Invariants:
//! * an event is held by one owner at a time; others see it in progress
//!   until it is done, released by its owner, or its lease expires;
//! * once done, an event is done for everyone until purged;
//! * a batch answers in order, and an event repeated within it is acquired
//!   once; concurrent batches acquire each event once;
//! * purge deletes old done rows and expired claims, nothing else;
//! * the shipped migrations are idempotent and live beside an application's
//!   own sqlx migrations in the same database, in either order;
//! * an unreachable database is an error within the store's timeout.

use std::time::{Duration, Instant};

use kafka_handler::dedup::postgres::PostgresStore;
use kafka_handler::dedup::sqlite::SqliteStore;
use kafka_handler::dedup::{Claim, DedupStore, Lease};
use kafka_handler_tests::{TestDir, database_url, random_name};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};
use sqlx::{AssertSqlSafe, PgPool, SqlSafeStr};

use Claim::{Acquired, Done, InProgress};

const TTL: Duration = Duration::from_secs(60);

fn lease(group: &str, event_id: impl ToString, owner: &str) -> Lease {
    Lease { group: group.into(), event_id: event_id.to_string().into(), owner: owner.into() }
}

async fn claim(store: &impl DedupStore, lease: &Lease, ttl: Duration) -> Claim {
    store.claim(std::slice::from_ref(lease), ttl).await.unwrap()[0]
}

async fn postgres() -> PostgresStore {
    let store = PostgresStore::new(PgPool::connect(&database_url()).await.expect("connect to DATABASE_URL"));
    store.migrate().await.unwrap();
    store
}

async fn sqlite_pool(dir: &TestDir) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(dir.0.join("dedup.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    SqlitePool::connect_with(options).await.unwrap()
}

async fn sqlite() -> (SqliteStore, TestDir) {
    let dir = TestDir::new(&random_name("dedup-sqlite"));
    let store = SqliteStore::new(sqlite_pool(&dir).await);
    store.migrate().await.unwrap();
    (store, dir)
}

/// Runs each generic scenario against both stores.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn postgres() {
                super::$scenario(super::postgres().await).await;
            }

            #[tokio::test]
            async fn sqlite() {
                let (store, _dir) = super::sqlite().await;
                super::$scenario(store).await;
            }
        }
    )*};
}

on_both!(claim_is_exclusive_until_done, release_frees_only_the_owners_claim, expired_lease_is_taken_over);
on_both!(batch_of_1000_with_duplicates, concurrent_batches_acquire_each_event_once);

/// One owner holds an event; once done, it is done for everyone.
async fn claim_is_exclusive_until_done(store: impl DedupStore) {
    let group = random_name("group");
    let (a, b) = (lease(&group, "e1", "a"), lease(&group, "e1", "b"));
    assert_eq!(claim(&store, &a, TTL).await, Acquired);
    assert_eq!(claim(&store, &b, TTL).await, InProgress, "another owner waits");
    assert_eq!(claim(&store, &a, TTL).await, Acquired, "claiming again is idempotent for its owner");
    store.complete(std::slice::from_ref(&a), TTL).await.unwrap();
    assert_eq!(claim(&store, &b, TTL).await, Done);
    assert_eq!(claim(&store, &a, TTL).await, Done);

    let lost = lease(&group, "e2", "a");
    store.complete(std::slice::from_ref(&lost), TTL).await.unwrap();
    assert_eq!(claim(&store, &lease(&group, "e2", "b"), TTL).await, Done, "a done mark needs no claim");
    assert_eq!(claim(&store, &lease(&random_name("group"), "e1", "b"), TTL).await, Acquired, "groups are apart");
}

/// Only the holder's release frees a claim, and a done event stays done.
async fn release_frees_only_the_owners_claim(store: impl DedupStore) {
    let group = random_name("group");
    let (a, b, c) = (lease(&group, "e1", "a"), lease(&group, "e1", "b"), lease(&group, "e1", "c"));
    assert_eq!(claim(&store, &a, TTL).await, Acquired);
    store.release(std::slice::from_ref(&b)).await.unwrap();
    assert_eq!(claim(&store, &c, TTL).await, InProgress, "a non-owner's release does nothing");
    store.release(std::slice::from_ref(&a)).await.unwrap();
    assert_eq!(claim(&store, &c, TTL).await, Acquired, "the owner's release frees it");
    store.complete(std::slice::from_ref(&c), TTL).await.unwrap();
    store.release(std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(claim(&store, &a, TTL).await, Done, "a done event is never released");
}

/// A claim whose lease ran out is taken over, and its old owner can no
/// longer release it.
async fn expired_lease_is_taken_over(store: impl DedupStore) {
    let group = random_name("group");
    let (a, b, c) = (lease(&group, "e1", "a"), lease(&group, "e1", "b"), lease(&group, "e1", "c"));
    assert_eq!(claim(&store, &a, Duration::from_millis(200)).await, Acquired);
    assert_eq!(claim(&store, &b, TTL).await, InProgress);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(claim(&store, &b, TTL).await, Acquired);
    store.release(std::slice::from_ref(&a)).await.unwrap();
    assert_eq!(claim(&store, &c, TTL).await, InProgress, "the old owner's release does nothing");
}

/// 1,000 leases over 700 events, answered in order: done events are done,
/// events held elsewhere in progress, each other event acquired by its first
/// copy only.
async fn batch_of_1000_with_duplicates(store: impl DedupStore) {
    let group = random_name("group");
    let done: Vec<Lease> = (0..100).map(|i| lease(&group, i, "x")).collect();
    store.claim(&done, TTL).await.unwrap();
    store.complete(&done, TTL).await.unwrap();
    let held: Vec<Lease> = (100..200).map(|i| lease(&group, i, "y")).collect();
    assert!(store.claim(&held, TTL).await.unwrap().iter().all(|c| *c == Acquired));

    let batch: Vec<Lease> = (0..1000).map(|i| lease(&group, i % 700, &format!("o{i}"))).collect();
    let claims = store.claim(&batch, TTL).await.unwrap();
    let expected: Vec<Claim> = (0..1000)
        .map(|i| match i % 700 {
            0..100 => Done,
            100..200 => InProgress,
            _ if i < 700 => Acquired,
            _ => InProgress,
        })
        .collect();
    assert_eq!(claims, expected);

    let later: Vec<Lease> = (0..700).map(|i| lease(&group, i, "z")).collect();
    let claims = store.claim(&later, TTL).await.unwrap();
    assert!(claims[..100].iter().all(|c| *c == Done) && claims[100..].iter().all(|c| *c == InProgress));

    let handled: Vec<Lease> = batch.iter().filter(|l| l.event_id.parse::<u32>().unwrap() >= 200).cloned().collect();
    store.complete(&handled, TTL).await.unwrap();
    store.release(&batch).await.unwrap();
    let claims = store.claim(&later, TTL).await.unwrap();
    assert!(claims[100..200].iter().all(|c| *c == InProgress), "y still holds its events");
    assert!(claims[200..].iter().all(|c| *c == Done), "repeated leases are completed once, without error");
}

/// Eight owners claim the same 200 events at once, in different orders:
/// each event is acquired by exactly one of them, and no call fails.
async fn concurrent_batches_acquire_each_event_once<S: DedupStore + Clone>(store: S) {
    let group = random_name("group");
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (store, group) = (store.clone(), group.clone());
            tokio::spawn(async move {
                let mut ids: Vec<usize> = (0..200).collect();
                ids.rotate_left(t * 25);
                if t % 2 == 1 {
                    ids.reverse();
                }
                let leases: Vec<Lease> = ids.iter().map(|i| lease(&group, i, &format!("t{t}"))).collect();
                let claims = store.claim(&leases, TTL).await.expect("no claim fails, nor deadlocks");
                ids.into_iter().zip(claims).filter(|(_, c)| *c == Acquired).map(|(i, _)| i).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acquired = Vec::new();
    for task in tasks {
        acquired.extend(task.await.unwrap());
    }
    acquired.sort_unstable();
    assert_eq!(acquired, (0..200).collect::<Vec<_>>());
}

/// Purge deletes done rows older than the retention and expired claims; it
/// keeps recent done rows and live claims. `spawn_purge` does it again later.
#[tokio::test]
async fn postgres_purge_deletes_only_old_rows() {
    let store = postgres().await;
    let pool = PgPool::connect(&database_url()).await.unwrap();
    let group = random_name("group");
    let insert_old = |id: &'static str| {
        sqlx::query(
            "INSERT INTO processed_events (consumer_group, event_id, consumer_name, processed_at) \
             VALUES ($1, $2, 'test', now() - interval '2 days')",
        )
        .bind(group.clone())
        .bind(id)
        .execute(&pool)
    };
    insert_old("old").await.unwrap();
    let rows = |g: String| {
        sqlx::query_scalar::<_, String>(
            "SELECT event_id FROM processed_events WHERE consumer_group = $1 ORDER BY event_id",
        )
        .bind(g)
        .fetch_all(&pool)
    };
    seed(&store, &group).await;
    assert!(store.purge(Duration::from_secs(86_400)).await.unwrap() >= 2);
    assert_eq!(rows(group.clone()).await.unwrap(), ["live", "recent"]);

    insert_old("old2").await.unwrap();
    let purging = store.spawn_purge(Duration::from_millis(50), Duration::from_secs(86_400));
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows(group.clone()).await.unwrap().len() > 2 {
        assert!(Instant::now() < deadline, "spawn_purge did not delete the old row");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    purging.abort();
}

/// As `postgres_purge_deletes_only_old_rows`, on SQLite.
#[tokio::test]
async fn sqlite_purge_deletes_only_old_rows() {
    let (store, dir) = sqlite().await;
    let pool = sqlite_pool(&dir).await;
    let group = random_name("group");
    let old_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 2 * 86_400_000;
    sqlx::query("INSERT INTO processed_events VALUES (?1, 'old', 'test', ?2, NULL, NULL)")
        .bind(&group)
        .bind(old_ms)
        .execute(&pool)
        .await
        .unwrap();
    seed(&store, &group).await;
    assert_eq!(store.purge(Duration::from_secs(86_400)).await.unwrap(), 2, "the old done row, the expired claim");
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM processed_events ORDER BY event_id").fetch_all(&pool).await.unwrap();
    assert_eq!(rows, ["live", "recent"]);
}

/// A recent done row, a live claim and an expired claim.
async fn seed(store: &impl DedupStore, group: &str) {
    let recent = lease(group, "recent", "a");
    store.complete(std::slice::from_ref(&recent), TTL).await.unwrap();
    assert_eq!(claim(store, &lease(group, "live", "a"), TTL).await, Acquired);
    assert_eq!(claim(store, &lease(group, "expired", "a"), Duration::from_millis(1)).await, Acquired);
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// An application migration, recorded in sqlx's default `_sqlx_migrations`.
fn app_migrator() -> Migrator {
    let sql = "CREATE TABLE app_orders (id BIGINT PRIMARY KEY)".into_sql_str();
    Migrator::with_migrations(vec![Migration::new(1, "app orders".into(), MigrationType::Simple, sql, false)])
}

/// Ours, the app's, ours again, the app's again: no error, each in its own
/// migrations table, and the shipped migration applied once.
#[tokio::test]
async fn postgres_migrations_coexist_with_the_apps() {
    let admin = PgPool::connect(&database_url()).await.unwrap();
    let db = random_name("kh_migrate").replace('-', "_");
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&admin).await.unwrap();
    let url = format!("{}/{db}", database_url().rsplit_once('/').unwrap().0);
    let pool = PgPool::connect(&url).await.unwrap();
    let store = PostgresStore::new(pool.clone());

    store.migrate().await.unwrap();
    app_migrator().run(&pool).await.expect("the app's migrator ignores ours");
    store.migrate().await.expect("ours ignores the app's; running twice is a no-op");
    PostgresStore::migrator().run(&pool).await.unwrap();
    app_migrator().run(&pool).await.unwrap();

    let versions = |table: &'static str| {
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!("SELECT version FROM {table} ORDER BY version")))
            .fetch_all(&pool)
    };
    assert_eq!(versions("_sqlx_migrations").await.unwrap(), [1]);
    let shipped: Vec<i64> = PostgresStore::migrator().iter().map(|m| m.version).collect();
    assert_eq!(versions("_kafka_handler_migrations").await.unwrap(), shipped);
    assert_eq!(claim(&store, &lease("g", "e", "a"), TTL).await, Acquired, "the table works");

    pool.close().await;
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {db} WITH (FORCE)"))).execute(&admin).await.unwrap();
}

/// As `postgres_migrations_coexist_with_the_apps`, on SQLite.
#[tokio::test]
async fn sqlite_migrations_coexist_with_the_apps() {
    let (store, dir) = sqlite().await;
    let pool = sqlite_pool(&dir).await;
    app_migrator().run(&pool).await.expect("the app's migrator ignores ours");
    store.migrate().await.expect("ours ignores the app's; running twice is a no-op");
    SqliteStore::migrator().run(&pool).await.unwrap();
    app_migrator().run(&pool).await.unwrap();

    let app: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations").fetch_all(&pool).await.unwrap();
    assert_eq!(app, [1]);
    let ours: Vec<i64> = sqlx::query_scalar("SELECT version FROM _kafka_handler_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ours, SqliteStore::migrator().iter().map(|m| m.version).collect::<Vec<_>>());
    assert_eq!(claim(&store, &lease("g", "e", "a"), TTL).await, Acquired, "the table works");
}

/// A database that cannot be reached fails each call within the store's
/// timeout, instead of the pool's 30 s acquire timeout.
#[tokio::test]
async fn postgres_outage_is_an_error_within_the_timeout() {
    let pool = PgPool::connect_lazy("postgres://postgres@127.0.0.1:1/nowhere").unwrap();
    let store = PostgresStore::new(pool).timeout(Duration::from_secs(1));
    let leases = [lease("g", "e", "a")];
    let started = Instant::now();
    assert!(store.claim(&leases, TTL).await.is_err());
    assert!(store.complete(&leases, TTL).await.is_err());
    assert!(store.release(&leases).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}
