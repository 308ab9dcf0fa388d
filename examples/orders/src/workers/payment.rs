//! `payment`: charges each new order through the gateway and refunds when the
//! order-status group asks. Store dedup: the call is outside the database.
//!
//! Money moves only for what the order database says: an `OrderCreated` is
//! charged only if it is the event the API published for an existing order,
//! for the amount of record, with the order's creation event id as the
//! gateway's idempotency key (so one order is charged at most once, whatever
//! event ids arrive); a refund only for an order whose refund the
//! order-status group requested, by the key of its charge.

use kafka_handler::extract::{FromRecord, Json, State};
use kafka_handler::{HandlerError, Record};

use super::providers::Refund;
use super::{Ctx, of_record};
use crate::events::{EventKind, OrderCreated, OrderEvent};

/// Handles `OrderCreated` (charge) and `RefundRequested` (refund).
pub async fn handle(State(ctx): State<Ctx>, mut record: Record) -> Result<(), HandlerError> {
    if super::origin(&record) == ctx.topics.created {
        let Json(event) = Json::<OrderCreated>::from_record(&mut record)?;
        let order = of_record::created(of_record::get(&ctx.db, &event.order_id).await?, &event)?;
        let payment_id = ctx.providers.charge(&order.event_id, &order.order_id, &order.amount).await?;
        let kind = EventKind::PaymentCompleted { payment_id, amount: order.amount.clone() };
        let event = OrderEvent::caused_by(&order.event_id, "payment", &order.order_id, &order.user_id, kind);
        return ctx.publish(&event).await;
    }
    let Json(event) = Json::<OrderEvent>::from_record(&mut record)?;
    let EventKind::RefundRequested { charge_key } = &event.kind else { return Ok(()) };
    let order = of_record::follow_up(of_record::get(&ctx.db, &event.order_id).await?, &event)?;
    if !order.refund_requested || *charge_key != order.event_id {
        return Err(HandlerError::permanent(format!(
            "order {}: no refund of charge {charge_key:?} was requested",
            order.order_id
        )));
    }
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
