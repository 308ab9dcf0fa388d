//! `notification`: email and SMS for each confirmed order, sent
//! concurrently. Store dedup keeps a finished event from running again; each
//! message carries its own idempotency key, so a retry after one channel
//! failed does not deliver the other one twice. The keys are the order's,
//! and the order of record must be confirmed: a forged or re-published
//! `OrderConfirmed` sends nothing more.

use kafka_handler::HandlerError;
use kafka_handler::extract::{Json, State};

use super::{Ctx, of_record};
use crate::events::{EventKind, OrderEvent};

/// Handles `OrderConfirmed`.
pub async fn handle(State(ctx): State<Ctx>, Json(event): Json<OrderEvent>) -> Result<(), HandlerError> {
    let EventKind::OrderConfirmed { .. } = event.kind else { return Ok(()) };
    let order = of_record::confirmed(of_record::get(&ctx.db, &event.order_id).await?, &event)?;
    let email_key = format!("{}:email", order.order_id);
    let sms_key = format!("{}:sms", order.order_id);
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
