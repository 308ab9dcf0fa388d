//! `points`: loyalty points for confirmed (so paid) orders, one ledger row
//! per order, written in the dedup transaction.

use kafka_handler::extract::{FromRecord, Json};
use kafka_handler::{HandlerError, Record, ResultExt};

use crate::config::{Topics, now_ms};
use crate::db::Conn;
use crate::events::{EventKind, OrderEvent};
use crate::money::parse_cents;
use crate::{on_conn, outbox};

/// The `points` handler.
#[derive(Clone, Debug)]
pub struct Points {
    pub topics: Topics,
}

impl Points {
    pub(crate) async fn apply(&self, conn: &mut Conn<'_>, mut record: Record) -> Result<(), HandlerError> {
        let Json(event) = Json::<OrderEvent>::from_record(&mut record)?;
        let EventKind::OrderConfirmed { amount, .. } = &event.kind else { return Ok(()) };
        // One point per whole unit of money.
        let points = parse_cents(amount).permanent()? / 100;
        on_conn!(conn, |c| sqlx::query(
            "INSERT INTO points_ledger (order_id, user_id, points, created_at) VALUES ($1, $2, $3, $4)"
        )
        .bind(&event.order_id)
        .bind(&event.user_id)
        .bind(points)
        .bind(now_ms())
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .retryable()?;
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
