//! `payment`: charges each new order through the gateway, with the event id
//! as the gateway's idempotency key, and refunds when the order-status
//! group asks. Store dedup: the call is outside the database.

use kafka_handler::extract::State;
use kafka_handler::{HandlerError, Record, ResultExt};

use super::Ctx;
use super::providers::Refund;
use crate::events::{EventKind, OrderCreated, OrderEvent};

/// Handles `OrderCreated` (charge) and `RefundRequested` (refund).
pub async fn handle(State(ctx): State<Ctx>, record: Record) -> Result<(), HandlerError> {
    let payload = record.payload().unwrap_or_default();
    if super::origin(&record) == ctx.topics.created {
        let order: OrderCreated = serde_json::from_slice(payload).permanent()?;
        let payment_id = ctx.providers.charge(&order.event_id, &order.order_id, &order.amount).await?;
        let kind = EventKind::PaymentCompleted { payment_id, amount: order.amount.clone() };
        let event = OrderEvent::caused_by(&order.event_id, "payment", &order.order_id, &order.user_id, kind);
        return ctx.publish(&event).await;
    }
    let event: OrderEvent = serde_json::from_slice(payload).permanent()?;
    let EventKind::RefundRequested { charge_key } = &event.kind else { return Ok(()) };
    let payment_id = match ctx.providers.refund(charge_key).await? {
        Refund::Refunded(id) => Some(id),
        Refund::NothingCharged => None,
    };
    let refunded = OrderEvent::caused_by(
        &event.event_id,
        "refunded",
        &event.order_id,
        &event.user_id,
        EventKind::PaymentRefunded { payment_id },
    );
    ctx.publish(&refunded).await
}
