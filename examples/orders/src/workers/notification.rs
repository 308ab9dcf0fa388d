//! `notification`: email and SMS for each confirmed order, sent
//! concurrently. Store dedup keeps a finished event from running again; each
//! message carries its own idempotency key, so a retry after one channel
//! failed does not deliver the other one twice.

use kafka_handler::extract::State;
use kafka_handler::{HandlerError, Record, ResultExt};

use super::Ctx;
use crate::events::{EventKind, OrderEvent};

/// Handles `OrderConfirmed`.
pub async fn handle(State(ctx): State<Ctx>, record: Record) -> Result<(), HandlerError> {
    let event: OrderEvent = serde_json::from_slice(record.payload().unwrap_or_default()).permanent()?;
    let EventKind::OrderConfirmed { .. } = event.kind else { return Ok(()) };
    let email_key = format!("{}:email", event.event_id);
    let sms_key = format!("{}:sms", event.event_id);
    let to_email = format!("{}@example.com", event.user_id);
    let to_phone = format!("+1555{:07}", fastrand::u32(..10_000_000));
    let (email, sms) = tokio::join!(
        ctx.providers.notify("email", &email_key, &event.order_id, &to_email),
        ctx.providers.notify("sms", &sms_key, &event.order_id, &to_phone),
    );
    for (channel, outcome) in [("email", &email), ("sms", &sms)] {
        if outcome.is_ok() {
            let kind = EventKind::NotificationSent { channel: channel.to_owned() };
            let sent = OrderEvent::caused_by(&event.event_id, channel, &event.order_id, &event.user_id, kind);
            ctx.publish(&sent).await?;
        }
    }
    email.and(sms)
}
