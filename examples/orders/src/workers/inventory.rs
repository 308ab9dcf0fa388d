//! `inventory`: decreases stock in the database, in transactional dedup mode
//! (the dedup row, the stock change, the reservation and the outgoing event
//! commit together). Out of stock is a business outcome: it emits
//! `InventoryFailed`, it is not retried. A cancelled order's stock is given
//! back. Only an `OrderCreated` that matches the order of record reserves
//! stock (see [`super::of_record`]).

use kafka_handler::extract::{FromRecord, Json};
use kafka_handler::{HandlerError, Record, ResultExt};

use crate::config::Topics;
use crate::db::Conn;
use crate::events::{EventKind, OrderCreated, OrderEvent};
use crate::on_conn;
use crate::outbox;

/// The `inventory` handler: `OrderCreated` reserves, `OrderCancelled` releases.
#[derive(Clone, Debug)]
pub struct Inventory {
    pub topics: Topics,
}

impl Inventory {
    pub(crate) async fn apply(&self, conn: &mut Conn<'_>, mut record: Record) -> Result<(), HandlerError> {
        if super::origin(&record) == self.topics.created {
            let Json(order) = Json::<OrderCreated>::from_record(&mut record)?;
            super::of_record::created(super::of_record::load(conn, &order.order_id).await?, &order)?;
            return self.reserve(conn, &order).await;
        }
        let Json(event) = Json::<OrderEvent>::from_record(&mut record)?;
        if let EventKind::OrderCancelled { .. } = event.kind {
            return self.release(conn, &event).await;
        }
        Ok(())
    }

    async fn reserve(&self, conn: &mut Conn<'_>, order: &OrderCreated) -> Result<(), HandlerError> {
        let claimed = on_conn!(conn, |c| sqlx::query(
            "INSERT INTO reservations (order_id, product_id, quantity, state) VALUES ($1, $2, $3, 'RESERVED') \
             ON CONFLICT DO NOTHING"
        )
        .bind(&order.order_id)
        .bind(&order.product_id)
        .bind(order.quantity)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .retryable()?;
        if claimed == 0 {
            // The order was cancelled before its stock was reserved: the
            // release left a marker and emitted StockReleased.
            return Ok(());
        }
        // Conditional decrement: stock never goes below zero, whatever runs
        // concurrently.
        let taken = on_conn!(conn, |c| sqlx::query(
            "UPDATE products SET available = available - $1 WHERE product_id = $2 AND available >= $1"
        )
        .bind(order.quantity)
        .bind(&order.product_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .retryable()?;
        let kind = if taken == 1 {
            EventKind::StockReserved { product_id: order.product_id.clone(), quantity: order.quantity }
        } else {
            on_conn!(conn, |c| sqlx::query("UPDATE reservations SET state = 'FAILED' WHERE order_id = $1")
                .bind(&order.order_id)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))
            .retryable()?;
            EventKind::InventoryFailed {
                reason: format!("out of stock: {} × {} requested", order.quantity, order.product_id),
            }
        };
        let event = OrderEvent::caused_by(&order.event_id, "inventory", &order.order_id, &order.user_id, kind);
        outbox::enqueue_event(conn, &self.topics.events, &event).await.retryable()
    }

    async fn release(&self, conn: &mut Conn<'_>, cancelled: &OrderEvent) -> Result<(), HandlerError> {
        let marker = on_conn!(conn, |c| sqlx::query(
            "INSERT INTO reservations (order_id, product_id, quantity, state) VALUES ($1, '', 0, 'RELEASED') \
             ON CONFLICT DO NOTHING"
        )
        .bind(&cancelled.order_id)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .retryable()?;
        let mut restocked = false;
        if marker == 0 {
            let held: Option<(String, i64)> = on_conn!(conn, |c| sqlx::query_as(
                "UPDATE reservations SET state = 'RELEASED' WHERE order_id = $1 AND state = 'RESERVED' \
                 RETURNING product_id, quantity"
            )
            .bind(&cancelled.order_id)
            .fetch_optional(c)
            .await)
            .retryable()?;
            if let Some((product, quantity)) = held {
                on_conn!(conn, |c| sqlx::query("UPDATE products SET available = available + $1 WHERE product_id = $2")
                    .bind(quantity)
                    .bind(&product)
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected()))
                .retryable()?;
                restocked = true;
            }
        }
        let event = OrderEvent::caused_by(
            &cancelled.event_id,
            "released",
            &cancelled.order_id,
            &cancelled.user_id,
            EventKind::StockReleased { restocked },
        );
        outbox::enqueue_event(conn, &self.topics.events, &event).await.retryable()
    }
}
