//! `analytics`: forwards every `OrderCreated` to the analytics team's topic
//! (through the outbox) and keeps order count and revenue per product per
//! minute — both in the dedup transaction, so neither is ever doubled. Only
//! an `OrderCreated` that matches the order of record counts (see
//! [`super::of_record`]), so a forged or re-published copy counts nothing.

use kafka_handler::extract::{FromRecord, Json};
use kafka_handler::{HandlerError, Record, ResultExt};

use crate::config::Topics;
use crate::db::{Conn, Db};
use crate::events::OrderCreated;
use crate::money::parse_cents;
use crate::{on_conn, on_db, outbox};

/// The `analytics` handler.
#[derive(Clone, Debug)]
pub struct Analytics {
    pub topics: Topics,
}

impl Analytics {
    pub(crate) async fn apply(&self, conn: &mut Conn<'_>, mut record: Record) -> Result<(), HandlerError> {
        let Json(order) = Json::<OrderCreated>::from_record(&mut record)?;
        super::of_record::created(super::of_record::load(conn, &order.order_id).await?, &order)?;
        let revenue = parse_cents(&order.amount).permanent()?;
        let minute = order.created_at / 60_000 * 60_000;
        on_conn!(conn, |c| sqlx::query(
            "INSERT INTO order_stats (minute, product_id, orders, revenue_cents) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (minute, product_id) DO UPDATE SET orders = order_stats.orders + 1, \
             revenue_cents = order_stats.revenue_cents + excluded.revenue_cents"
        )
        .bind(minute)
        .bind(&order.product_id)
        .bind(revenue)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .retryable()?;
        outbox::enqueue(conn, &self.topics.analytics, &order.user_id, "OrderCreated", &order).await.retryable()
    }
}

/// Orders and revenue (cents) per minute and product, newest first.
pub async fn per_minute(db: &Db) -> Result<Vec<(i64, String, i64, i64)>, sqlx::Error> {
    on_db!(db, |p| sqlx::query_as(
        "SELECT minute, product_id, orders, revenue_cents FROM order_stats ORDER BY minute DESC, product_id"
    )
    .fetch_all(p)
    .await)
}
