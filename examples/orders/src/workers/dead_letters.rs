//! `dlt-monitor`: reads the dead-letter topics, stores an error-log row,
//! posts an alert to the team's chat webhook, and — when `inventory` or
//! `payment` gave up on an order — emits `StepFailed` so that the order is
//! cancelled and compensated.
//!
//! One event can be dead-lettered by several groups, so the log is keyed by
//! (group, topic, event id) in its own table rather than by event id alone;
//! the row, the `StepFailed` event and the `alerted` mark make it idempotent.

use kafka_handler::extract::State;
use kafka_handler::{HandlerError, Record, ResultExt};
use serde_json::Value;

use super::Ctx;
use crate::config::now_ms;
use crate::events::{EventKind, OrderEvent};
use crate::{on_conn, on_db, outbox};

fn header(record: &Record, name: &str) -> String {
    record.header(name).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
}

/// Handles one dead letter.
pub async fn handle(State(ctx): State<Ctx>, record: Record) -> Result<(), HandlerError> {
    let group = header(&record, "dlt.group");
    let source = header(&record, "dlt.original.topic");
    let kind = header(&record, "dlt.error.kind");
    let error = header(&record, "dlt.error.message");
    let payload: Value = serde_json::from_slice(record.payload().unwrap_or_default()).unwrap_or(Value::Null);
    let text = |field: &str| payload[field].as_str().unwrap_or_default().to_owned();
    let (event_id, order_id, user_id) = (text("eventId"), text("orderId"), text("userId"));
    let dead_letter = format!("{group}/{source}/{event_id}/{}", header(&record, "dlt.original.offset"));

    let mut tx = ctx.db.begin().await.retryable()?;
    let compensate = source == ctx.topics.created
        && (group == ctx.settings.group("inventory") || group == ctx.settings.group("payment"))
        && !order_id.is_empty();
    {
        let mut conn = tx.conn();
        let new = on_conn!(&mut conn, |c| sqlx::query(
            "INSERT INTO error_log (dead_letter, order_id, consumer_group, error_kind, error, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
        )
        .bind(&dead_letter)
        .bind(&order_id)
        .bind(&group)
        .bind(&kind)
        .bind(&error)
        .bind(now_ms())
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .retryable()?
            == 1;
        if new && compensate {
            let failed = EventKind::StepFailed { group: group.clone(), error: error.clone() };
            let event = OrderEvent::caused_by(&event_id, &format!("dead-letter/{group}"), &order_id, &user_id, failed);
            outbox::enqueue_event(&mut conn, &ctx.topics.events, &event).await.retryable()?;
        }
    }
    tx.commit().await.retryable()?;
    ctx.signal.wake();

    let alerted: i64 = on_db!(&ctx.db, |p| sqlx::query_scalar("SELECT alerted FROM error_log WHERE dead_letter = $1")
        .bind(&dead_letter)
        .fetch_one(p)
        .await)
    .retryable()?;
    if alerted == 0 {
        let text = format!(
            ":rotating_light: order {order_id}: group `{group}` gave up on {source} ({kind}): {error}{}",
            if compensate {
                " — order cancelled and compensated"
            } else {
                " — re-drive with `kafka-handler dlt replay`"
            }
        );
        ctx.providers.alert(&dead_letter, &text).await?;
        on_db!(&ctx.db, |p| sqlx::query("UPDATE error_log SET alerted = 1 WHERE dead_letter = $1")
            .bind(&dead_letter)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .retryable()?;
    }
    Ok(())
}
