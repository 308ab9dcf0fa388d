//! The database: PostgreSQL in deployment, SQLite on embedded defaults.
//!
//! The SQL is written once with `$1` placeholders, which both accept; the
//! [`on_conn!`](crate::on_conn) and [`on_db!`](crate::on_db) macros run the
//! same query expression against whichever backend is in use.

mod schema;
pub mod view;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgConnection, PgPool, SqliteConnection, SqlitePool};

pub use self::schema::{CATALOG, Product};

/// A pool on either backend.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connection of either backend, as handlers get it inside a transaction.
#[derive(Debug)]
pub enum Conn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

/// Runs `$body` with `$c` bound to the concrete connection of `$conn` (a
/// `&mut Conn`).
#[macro_export]
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::Conn::Sqlite(c) => {
                let $c: &mut ::sqlx::SqliteConnection = &mut **c;
                $body
            }
            $crate::db::Conn::Postgres(c) => {
                let $c: &mut ::sqlx::PgConnection = &mut **c;
                $body
            }
        }
    };
}

/// Runs `$body` with `$p` bound to the concrete pool of `$db` (a `&Db`).
#[macro_export]
macro_rules! on_db {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($p) => $body,
            $crate::db::Db::Postgres($p) => $body,
        }
    };
}

/// A transaction of either backend.
#[derive(Debug)]
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Tx {
    /// The transaction's connection.
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Sqlite(t) => Conn::Sqlite(&mut *t),
            Tx::Postgres(t) => Conn::Postgres(&mut *t),
        }
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }
}

impl Db {
    /// Connects to `url` (`postgres://…` or `sqlite://path`), creating a
    /// SQLite file and its directory if missing.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        if url.starts_with("postgres") {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            return Ok(Db::Postgres(pool));
        }
        let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
        if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Db::Sqlite(pool))
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Creates the tables (and the dedup table of kafka-handler) if missing,
    /// and the product catalog.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        schema::migrate(self).await
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// Available stock per product.
    pub async fn stock(&self) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
        on_db!(self, |p| sqlx::query_as(
            "SELECT product_id, initial_stock, available FROM products ORDER BY product_id"
        )
        .fetch_all(p)
        .await)
    }

    /// Rows waiting in the outbox.
    pub async fn outbox_depth(&self) -> Result<i64, sqlx::Error> {
        on_db!(self, |p| sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(p).await)
    }
}
