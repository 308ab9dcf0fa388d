//! `points`: loyalty points for confirmed (so paid) orders, one ledger row
//! per order, written in the dedup transaction. The order of record must be
//! confirmed, its amount counts (not the event's), and the ledger holds one
//! row per order whatever event ids arrive.

use kafka_handler::extract::{FromRecord, Json};
use kafka_handler::{HandlerError, Record, ResultExt};

use crate::config::{Topics, now_ms};
use crate::db::Conn;
use crate::events::{EventKind, OrderEvent};
use crate::{on_conn, outbox};

/// The `points` handler.
#[derive(Clone, Debug)]
pub struct Points {
    pub topics: Topics,
}

impl Points {
    pub(crate) async fn apply(&self, conn: &mut Conn<'_>, mut record: Record) -> Result<(), HandlerError> {
        let Json(event) = Json::<OrderEvent>::from_record(&mut record)?;
        let EventKind::OrderConfirmed { .. } = &event.kind else { return Ok(()) };
        let order = super::of_record::confirmed(super::of_record::load(conn, &event.order_id).await?, &event)?;
        // One point per whole unit of money.
        let points = order.amount_cents / 100;
        let entered = on_conn!(conn, |c| sqlx::query(
            "INSERT INTO points_ledger (order_id, user_id, points, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (order_id) DO NOTHING"
        )
        .bind(&event.order_id)
        .bind(&event.user_id)
        .bind(points)
        .bind(now_ms())
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .retryable()?;
        if entered == 0 {
            return Ok(());
        }
        let earned = OrderEvent::caused_by(
            &event.event_id,
            "points",
            &event.order_id,
            &event.user_id,
            EventKind::PointsEarned { points },
        );
        outbox::enqueue_event(conn, &self.topics.events, &earned).await.retryable()
    }
}
