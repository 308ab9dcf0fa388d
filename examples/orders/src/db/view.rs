//! The order view: the `orders` row, kept up to date from the events by the
//! `order-status` group and read by `GET /orders/{id}`.

use serde::Serialize;

use super::{Conn, Db};
use crate::money::format_cents;

/// An order as the events left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    #[serde(skip)]
    pub event_id: String,
    pub user_id: String,
    pub product_id: String,
    pub quantity: i64,
    /// Decimal money as a string.
    pub amount: String,
    #[serde(skip)]
    pub amount_cents: i64,
    /// `PENDING`, `CONFIRMED` or `CANCELLED`.
    pub status: String,
    /// `PENDING`, `RESERVED`, `FAILED` (out of stock) or `RELEASED`.
    pub stock: String,
    /// `PENDING`, `PAID`, `FAILED` or `REFUNDED`.
    pub payment: String,
    pub payment_id: Option<String>,
    pub points: Option<i64>,
    pub email_sent: bool,
    pub sms_sent: bool,
    pub refund_requested: bool,
    pub refund_done: bool,
    pub failure_reason: Option<String>,
    pub created_at: i64,
    /// When the last follow-up job finished; `None` while any is in flight.
    pub settled_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct Row {
    order_id: String,
    event_id: String,
    user_id: String,
    product_id: String,
    quantity: i64,
    amount_cents: i64,
    status: String,
    stock: String,
    payment: String,
    payment_id: Option<String>,
    points: Option<i64>,
    email_sent: i64,
    sms_sent: i64,
    refund_requested: i64,
    refund_done: i64,
    failure_reason: Option<String>,
    created_at: i64,
    settled_at: Option<i64>,
}

const COLUMNS: &str = "order_id, event_id, user_id, product_id, quantity, amount_cents, status, stock, payment, \
    payment_id, points, email_sent, sms_sent, refund_requested, refund_done, failure_reason, created_at, settled_at";

impl From<Row> for OrderView {
    fn from(r: Row) -> Self {
        OrderView {
            amount: format_cents(r.amount_cents),
            order_id: r.order_id,
            event_id: r.event_id,
            user_id: r.user_id,
            product_id: r.product_id,
            quantity: r.quantity,
            amount_cents: r.amount_cents,
            status: r.status,
            stock: r.stock,
            payment: r.payment,
            payment_id: r.payment_id,
            points: r.points,
            email_sent: r.email_sent != 0,
            sms_sent: r.sms_sent != 0,
            refund_requested: r.refund_requested != 0,
            refund_done: r.refund_done != 0,
            failure_reason: r.failure_reason,
            created_at: r.created_at,
            settled_at: r.settled_at,
        }
    }
}

impl OrderView {
    /// A new order, as the API saves it.
    pub fn pending(
        order_id: String,
        event_id: String,
        user_id: String,
        product_id: String,
        quantity: i64,
        amount_cents: i64,
        now: i64,
    ) -> Self {
        OrderView {
            order_id,
            event_id,
            user_id,
            product_id,
            quantity,
            amount: format_cents(amount_cents),
            amount_cents,
            status: "PENDING".into(),
            stock: "PENDING".into(),
            payment: "PENDING".into(),
            payment_id: None,
            points: None,
            email_sent: false,
            sms_sent: false,
            refund_requested: false,
            refund_done: false,
            failure_reason: None,
            created_at: now,
            settled_at: None,
        }
    }
}

/// Reads one order inside a transaction.
pub async fn load(conn: &mut Conn<'_>, order_id: &str) -> Result<Option<OrderView>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1");
    let row: Option<Row> = crate::on_conn!(conn, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(order_id)
        .fetch_optional(c)
        .await)?;
    Ok(row.map(Into::into))
}

/// Reads one order.
pub async fn get(db: &Db, order_id: &str) -> Result<Option<OrderView>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1");
    let row: Option<Row> =
        crate::on_db!(db, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(order_id).fetch_optional(p).await)?;
    Ok(row.map(Into::into))
}

/// Reads every order (for the audit of a run).
pub async fn all(db: &Db) -> Result<Vec<OrderView>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM orders");
    let rows: Vec<Row> = crate::on_db!(db, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).fetch_all(p).await)?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// A new order's row; its parameters are bound by `bind_order!`.
const INSERT_ORDER: &str = "INSERT INTO orders (order_id, event_id, user_id, product_id, quantity, amount_cents, idempotency_key, \
         status, stock, payment, payment_id, points, email_sent, sms_sent, created_at, updated_at, settled_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $16) ON CONFLICT DO NOTHING";

/// Binds an order's columns, `$1` to `$16`, for `INSERT_ORDER`.
macro_rules! bind_order {
    ($query:expr, $v:expr, $key:expr) => {
        $query
            .bind(&$v.order_id)
            .bind(&$v.event_id)
            .bind(&$v.user_id)
            .bind(&$v.product_id)
            .bind($v.quantity)
            .bind($v.amount_cents)
            .bind($key)
            .bind(&$v.status)
            .bind(&$v.stock)
            .bind(&$v.payment)
            .bind(&$v.payment_id)
            .bind($v.points)
            .bind(i64::from($v.email_sent))
            .bind(i64::from($v.sms_sent))
            .bind($v.created_at)
            .bind($v.settled_at)
    };
}

/// Inserts a new order; `false` if its idempotency key was used before.
pub async fn insert(conn: &mut Conn<'_>, v: &OrderView, idempotency_key: Option<&str>) -> Result<bool, sqlx::Error> {
    let done = crate::on_conn!(conn, |c| bind_order!(sqlx::query(INSERT_ORDER), v, idempotency_key)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

/// On PostgreSQL, saves a new order and its outbox row in one statement (one
/// round trip, atomic without a transaction block): the outbox row is written
/// only if the order was. `None` on SQLite, which has no `INSERT` in a `WITH`:
/// use [`insert`] and the outbox in a transaction there.
pub async fn insert_with_outbox(
    db: &Db,
    v: &OrderView,
    idempotency_key: Option<&str>,
    outbox: (&str, &str, &str, &str),
) -> Option<Result<bool, sqlx::Error>> {
    let Db::Postgres(pool) = db else {
        return None;
    };
    let (topic, msg_key, event_type, payload) = outbox;
    let sql = format!(
        "WITH o AS ({INSERT_ORDER} RETURNING 1) \
         INSERT INTO outbox (topic, msg_key, event_type, payload, created_at) SELECT $17, $18, $19, $20, $15 FROM o"
    );
    let result = bind_order!(sqlx::query(sqlx::AssertSqlSafe(sql)), v, idempotency_key)
        .bind(topic)
        .bind(msg_key)
        .bind(event_type)
        .bind(payload)
        .execute(pool)
        .await;
    Some(result.map(|r| r.rows_affected() == 1))
}

/// The order saved under an idempotency key.
pub async fn by_idempotency_key(db: &Db, key: &str) -> Result<Option<OrderView>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM orders WHERE idempotency_key = $1");
    let row: Option<Row> =
        crate::on_db!(db, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(key).fetch_optional(p).await)?;
    Ok(row.map(Into::into))
}

/// Writes back the event-driven columns.
pub async fn save(conn: &mut Conn<'_>, v: &OrderView, now: i64) -> Result<(), sqlx::Error> {
    crate::on_conn!(conn, |c| sqlx::query(
        "UPDATE orders SET status = $2, stock = $3, payment = $4, payment_id = $5, points = $6, email_sent = $7, \
         sms_sent = $8, refund_requested = $9, refund_done = $10, failure_reason = $11, settled_at = $12, \
         updated_at = $13 WHERE order_id = $1"
    )
    .bind(&v.order_id)
    .bind(&v.status)
    .bind(&v.stock)
    .bind(&v.payment)
    .bind(&v.payment_id)
    .bind(v.points)
    .bind(i64::from(v.email_sent))
    .bind(i64::from(v.sms_sent))
    .bind(i64::from(v.refund_requested))
    .bind(i64::from(v.refund_done))
    .bind(&v.failure_reason)
    .bind(v.settled_at)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}
