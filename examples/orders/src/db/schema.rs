//! Tables and the product catalog.

use super::Db;

/// A product of the catalog.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    pub id: &'static str,
    pub price_cents: i64,
    pub stock: i64,
}

/// The catalog every database starts with: twenty well-stocked products, one
/// with little stock (orders compete for it) and one sold out.
pub const CATALOG: [Product; 22] = {
    let mut catalog = [Product { id: "", price_cents: 0, stock: 0 }; 22];
    const IDS: [&str; 20] = [
        "sku-01", "sku-02", "sku-03", "sku-04", "sku-05", "sku-06", "sku-07", "sku-08", "sku-09", "sku-10", "sku-11",
        "sku-12", "sku-13", "sku-14", "sku-15", "sku-16", "sku-17", "sku-18", "sku-19", "sku-20",
    ];
    let mut i = 0;
    while i < 20 {
        catalog[i] = Product { id: IDS[i], price_cents: 499 + 250 * i as i64, stock: 1_000_000 };
        i += 1;
    }
    catalog[20] = Product { id: "sku-limited", price_cents: 9_999, stock: 25 };
    catalog[21] = Product { id: "sku-soldout", price_cents: 1_999, stock: 0 };
    catalog
};

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS products (
    product_id TEXT PRIMARY KEY,
    price_cents BIGINT NOT NULL,
    initial_stock BIGINT NOT NULL,
    available BIGINT NOT NULL CHECK (available >= 0)
);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    amount_cents BIGINT NOT NULL,
    idempotency_key TEXT UNIQUE,
    status TEXT NOT NULL,
    stock TEXT NOT NULL,
    payment TEXT NOT NULL,
    payment_id TEXT,
    points BIGINT,
    email_sent BIGINT NOT NULL DEFAULT 0,
    sms_sent BIGINT NOT NULL DEFAULT 0,
    refund_requested BIGINT NOT NULL DEFAULT 0,
    refund_done BIGINT NOT NULL DEFAULT 0,
    failure_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    settled_at BIGINT
);
CREATE INDEX IF NOT EXISTS orders_unsettled ON orders (settled_at);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS order_stats (
    minute BIGINT NOT NULL,
    product_id TEXT NOT NULL,
    orders BIGINT NOT NULL,
    revenue_cents BIGINT NOT NULL,
    PRIMARY KEY (minute, product_id)
);
";

const SQLITE: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    msg_key TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS points_ledger (
    entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    points BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
-- One entry per order, whatever event ids arrive.
CREATE UNIQUE INDEX IF NOT EXISTS points_ledger_order ON points_ledger (order_id);
CREATE TABLE IF NOT EXISTS error_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dead_letter TEXT NOT NULL UNIQUE,
    order_id TEXT,
    consumer_group TEXT NOT NULL,
    error_kind TEXT NOT NULL,
    error TEXT NOT NULL,
    alerted BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
";

const POSTGRES: &str = "
SELECT pg_advisory_lock(7400101);
CREATE TABLE IF NOT EXISTS outbox (
    id BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    msg_key TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS points_ledger (
    entry_id BIGSERIAL PRIMARY KEY,
    order_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    points BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
-- One entry per order, whatever event ids arrive.
CREATE UNIQUE INDEX IF NOT EXISTS points_ledger_order ON points_ledger (order_id);
CREATE TABLE IF NOT EXISTS error_log (
    id BIGSERIAL PRIMARY KEY,
    dead_letter TEXT NOT NULL UNIQUE,
    order_id TEXT,
    consumer_group TEXT NOT NULL,
    error_kind TEXT NOT NULL,
    error TEXT NOT NULL,
    alerted BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
-- Writers notify the relays after their commit (outbox::forward_wake_ups);
-- a NOTIFY inside the transaction serializes the commits of every writer.
DROP TRIGGER IF EXISTS orders_outbox_notify ON outbox;
DROP FUNCTION IF EXISTS orders_outbox_notify();
";

pub(super) async fn migrate(db: &Db) -> anyhow::Result<()> {
    match db {
        Db::Sqlite(pool) => {
            sqlx::raw_sql(TABLES).execute(pool).await?;
            sqlx::raw_sql(SQLITE).execute(pool).await?;
            kafka_handler::dedup::sqlite::SqliteStore::new(pool.clone()).migrate().await?;
        }
        Db::Postgres(pool) => {
            // One connection holds the advisory lock: processes starting at
            // once do not race on the DDL.
            let mut conn = pool.acquire().await?;
            let result = async {
                sqlx::raw_sql(POSTGRES).execute(&mut *conn).await?;
                sqlx::raw_sql(TABLES).execute(&mut *conn).await
            }
            .await;
            sqlx::raw_sql("SELECT pg_advisory_unlock(7400101)").execute(&mut *conn).await?;
            result?;
            kafka_handler::dedup::postgres::PostgresStore::new(pool.clone()).migrate().await?;
        }
    }
    for p in CATALOG {
        crate::on_db!(db, |pool| sqlx::query(
            "INSERT INTO products (product_id, price_cents, initial_stock, available) VALUES ($1, $2, $3, $3) \
             ON CONFLICT DO NOTHING"
        )
        .bind(p.id)
        .bind(p.price_cents)
        .bind(p.stock)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
    }
    Ok(())
}
