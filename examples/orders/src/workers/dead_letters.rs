//! `dlt-monitor`: reads the dead-letter topics, stores an error-log row,
//! posts an alert to the team's chat webhook, and — when `inventory` or
//! `payment` gave up on an order — emits `StepFailed` so that the order is
//! cancelled and compensated.
//!
//! A dead letter is identified by the group that gave up and the record it
//! gave up on: `{group}/{topic}/{partition}/{offset}` of the original record
//! (one event can be dead-lettered by several groups; records of different
//! partitions share offsets). A record on a dead-letter topic without that
//! provenance (written there by another producer) is identified by its own
//! coordinates. The row, the `StepFailed` event and the `alerted` mark make
//! handling it idempotent.
//!
//! Compensation follows the order of record: only a dead-lettered
//! `OrderCreated` that is the order's own (its event id, see
//! [`super::of_record`]) cancels the order, so a forged event that was
//! refused cannot cancel a real order.

use kafka_handler::extract::State;
use kafka_handler::{Disposition, HandlerError, Record, ResultExt};
use serde_json::Value;

use super::Ctx;
use crate::config::now_ms;
use crate::events::{EventKind, OrderEvent};
use crate::{on_conn, on_db, outbox};

fn header(record: &Record, name: &str) -> String {
    record.header(name).map(|v| storable(&String::from_utf8_lossy(v), 4096)).unwrap_or_default()
}

/// `text` as the log can store it whatever a producer put there: no NUL
/// (PostgreSQL text refuses it), at most `max` characters.
fn storable(text: &str, max: usize) -> String {
    text.chars().take(max).map(|c| if c == '\0' { char::REPLACEMENT_CHARACTER } else { c }).collect()
}

/// The record the group gave up on, or the dead letter itself when it
/// carries no provenance.
fn identity(record: &Record) -> String {
    let provenance = ["dlt.group", "dlt.original.topic", "dlt.original.partition", "dlt.original.offset"]
        .map(|name| record.header(name).and_then(|v| std::str::from_utf8(v).ok()));
    match provenance {
        [Some(group), Some(topic), Some(partition), Some(offset)]
            if partition.parse::<i32>().is_ok() && offset.parse::<i64>().is_ok() =>
        {
            format!("{group}/{topic}/{partition}/{offset}")
        }
        _ => format!("{}/{}/{}", record.topic(), record.partition(), record.offset()),
    }
}

/// Handles one dead letter.
pub async fn handle(State(ctx): State<Ctx>, record: Record) -> Result<(), HandlerError> {
    let group = header(&record, "dlt.group");
    let source = header(&record, "dlt.original.topic");
    let kind = header(&record, "dlt.error.kind");
    let error = header(&record, "dlt.error.message");
    let payload: Value = serde_json::from_slice(record.payload().unwrap_or_default()).unwrap_or(Value::Null);
    let text = |field: &str| storable(payload[field].as_str().unwrap_or_default(), 256);
    let (event_id, order_id, user_id) = (text("eventId"), text("orderId"), text("userId"));
    let dead_letter = storable(&identity(&record), 4096);
    let compensate = source == ctx.topics.created
        && (group == ctx.settings.group("inventory") || group == ctx.settings.group("payment"))
        && !event_id.is_empty()
        && match super::of_record::get(&ctx.db, &order_id).await {
            Ok(order) => order.is_some_and(|order| order.event_id == event_id),
            // Not an id the API issues: no order to compensate.
            Err(e) if e.disposition() == Disposition::Permanent => false,
            Err(e) => return Err(e),
        };

    let mut tx = ctx.db.begin().await.retryable()?;
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
            let cause = if event_id.is_empty() { &dead_letter } else { &event_id };
            let event = OrderEvent::caused_by(cause, &format!("dead-letter/{group}"), &order_id, &user_id, failed);
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
