//! Dedup stores and the effect tables of the dedup tests, on the test bed's
//! Redis, Redis Cluster, PostgreSQL, or a SQLite file.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use kafka_handler::dedup::DedupCounters;
use kafka_handler::dedup::postgres::PostgresStore;
use kafka_handler::dedup::redis::RedisStore;
use kafka_handler::dedup::sqlite::SqliteStore;
use kafka_handler::dedup::transactional::{Transactional, TxHandler};
use kafka_handler::extract::{FromRecord, Json, Metadata};
use kafka_handler::middleware::DedupLayer;
use kafka_handler::{HandlerError, Record, ResultExt};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool};

use crate::events::{Handled, TestEvent};
use crate::{database_url, redis_cluster_urls, redis_url};

/// Where dedup happens in a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// No dedup.
    None,
    /// Store dedup in Redis.
    Redis,
    /// Store dedup in the Redis Cluster.
    RedisCluster,
    /// Store dedup in PostgreSQL.
    Postgres,
    /// Store dedup in SQLite.
    Sqlite,
    /// Transactional dedup in PostgreSQL: the effect row commits with the dedup row.
    TxPostgres,
    /// Transactional dedup in SQLite.
    TxSqlite,
}

impl Mode {
    /// Every store mode (the effect happens in the handler).
    pub const STORES: [Mode; 4] = [Mode::Redis, Mode::RedisCluster, Mode::Postgres, Mode::Sqlite];

    /// Whether the effect is a row written in the dedup transaction.
    pub fn is_transactional(self) -> bool {
        matches!(self, Mode::TxPostgres | Mode::TxSqlite)
    }
}

/// A pool on the test bed's PostgreSQL, with the crate's migrations and the
/// effect table in place.
pub async fn pg_pool() -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&database_url())
        .await
        .expect("connect to PostgreSQL");
    PostgresStore::new(pool.clone()).migrate().await.expect("dedup migrations");
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS kh_test_effects (group_name TEXT NOT NULL, event_id TEXT NOT NULL, \
         key TEXT NOT NULL, seq BIGINT NOT NULL, part INT NOT NULL, record_offset BIGINT NOT NULL, pid INT NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("effect table");
    pool
}

/// A pool on a SQLite file (WAL, durable commits), with the crate's
/// migrations and the effect table in place.
pub async fn sqlite_pool(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .expect("sqlite url")
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.expect("open SQLite");
    SqliteStore::new(pool.clone()).migrate().await.expect("dedup migrations");
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS kh_test_effects (group_name TEXT NOT NULL, event_id TEXT NOT NULL, \
         key TEXT NOT NULL, seq INTEGER NOT NULL, part INTEGER NOT NULL, record_offset INTEGER NOT NULL, pid INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("effect table");
    pool
}

/// The dedup layer of a store mode (`None` for the transactional modes and
/// for no dedup).
pub async fn layer(mode: Mode, sqlite: &Path) -> Option<DedupLayer> {
    Some(match mode {
        Mode::None | Mode::TxPostgres | Mode::TxSqlite => return None,
        Mode::Redis => DedupLayer::new(RedisStore::connect(&redis_url()).await.expect("connect to Redis")),
        Mode::RedisCluster => {
            DedupLayer::new(RedisStore::connect_cluster(&redis_cluster_urls()).await.expect("connect to the cluster"))
        }
        Mode::Postgres => DedupLayer::new(PostgresStore::new(pg_pool().await)),
        Mode::Sqlite => DedupLayer::new(SqliteStore::new(sqlite_pool(sqlite).await)),
    })
}

/// The effect of the transactional tests: one row per handled event,
/// written in the dedup transaction.
#[derive(Clone, Debug)]
pub struct RecordEffect;

macro_rules! record_effect {
    ($db:ty, $conn:ty, $sql:literal) => {
        impl TxHandler<$db> for RecordEffect {
            async fn handle(&self, conn: &mut $conn, mut record: Record) -> Result<(), HandlerError> {
                let Json(event) = Json::<TestEvent>::from_record(&mut record)?;
                let meta = Metadata::from_record(&mut record)?;
                let group = kafka_handler::extract::Group::from_record(&mut record)?;
                sqlx::query($sql)
                    .bind(&*group.0)
                    .bind(&event.event_id)
                    .bind(&event.key)
                    .bind(event.seq as i64)
                    .bind(meta.partition)
                    .bind(meta.offset)
                    .bind(std::process::id() as i32)
                    .execute(conn)
                    .await
                    .retryable()?;
                Ok(())
            }
        }
    };
}

record_effect!(
    Postgres,
    PgConnection,
    "INSERT INTO kh_test_effects (group_name, event_id, key, seq, part, record_offset, pid) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)"
);
record_effect!(
    Sqlite,
    SqliteConnection,
    "INSERT INTO kh_test_effects (group_name, event_id, key, seq, part, record_offset, pid) \
     VALUES (?, ?, ?, ?, ?, ?, ?)"
);

/// The transactional service of a transactional mode, and its counters.
#[derive(Debug)]
pub enum TxService {
    Postgres(Transactional<Postgres, RecordEffect>),
    Sqlite(Transactional<Sqlite, RecordEffect>),
}

impl TxService {
    pub async fn new(mode: Mode, sqlite: &Path) -> Option<Self> {
        Some(match mode {
            Mode::TxPostgres => TxService::Postgres(Transactional::new(pg_pool().await, RecordEffect)),
            Mode::TxSqlite => TxService::Sqlite(Transactional::new(sqlite_pool(sqlite).await, RecordEffect)),
            _ => return None,
        })
    }

    pub fn counters(&self) -> Arc<DedupCounters> {
        match self {
            TxService::Postgres(s) => s.counters(),
            TxService::Sqlite(s) => s.counters(),
        }
    }
}

/// The effects of `group` recorded by the transactional handler, oldest first.
pub async fn effects(mode: Mode, sqlite: &Path, group: &str) -> Vec<Handled> {
    const SQL_PG: &str = "SELECT key, seq, part, record_offset, pid FROM kh_test_effects WHERE group_name = $1";
    const SQL_LITE: &str = "SELECT key, seq, part, record_offset, pid FROM kh_test_effects WHERE group_name = ?";
    let rows: Vec<(String, i64, i32, i64, i32)> = match mode {
        Mode::TxPostgres => {
            let pool = pg_pool().await;
            let rows = sqlx::query_as(SQL_PG).bind(group).fetch_all(&pool).await.expect("read effects");
            pool.close().await;
            rows
        }
        Mode::TxSqlite => {
            let pool = sqlite_pool(sqlite).await;
            let rows = sqlx::query_as(SQL_LITE).bind(group).fetch_all(&pool).await.expect("read effects");
            pool.close().await;
            rows
        }
        _ => panic!("{mode:?} records its effects in the log"),
    };
    rows.into_iter()
        .map(|(key, seq, partition, offset, pid)| Handled { key, seq: seq as u64, partition, offset, pid: pid as u32 })
        .collect()
}
