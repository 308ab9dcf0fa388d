//! `order-status`: the order's state machine. It reads every follow-up
//! event, keeps the order view, and decides what follows — confirm, cancel,
//! refund — writing the view and the events it emits in one transaction
//! (transactional dedup mode), so each event is applied exactly once.

use kafka_handler::extract::{FromRecord, Json};
use kafka_handler::{HandlerError, Record, ResultExt};

use crate::config::{Topics, now_ms};
use crate::db::Conn;
use crate::db::view::{self, OrderView};
use crate::events::{EventKind, OrderEvent};
use crate::outbox;

/// The `order-status` handler.
#[derive(Clone, Debug)]
pub struct OrderStatus {
    pub topics: Topics,
}

impl OrderStatus {
    pub(crate) async fn apply(&self, conn: &mut Conn<'_>, mut record: Record) -> Result<(), HandlerError> {
        let Json(event) = Json::<OrderEvent>::from_record(&mut record)?;
        let Some(mut order) = super::of_record::load(conn, &event.order_id).await? else {
            return Err(HandlerError::permanent(format!("unknown order {}", event.order_id)));
        };
        let now = now_ms();
        let emitted = transition(&mut order, &event, now);
        view::save(conn, &order, now).await.retryable()?;
        for kind in emitted {
            let label = kind.name();
            let next = OrderEvent::caused_by(&event.event_id, label, &order.order_id, &order.user_id, kind);
            outbox::enqueue_event(conn, &self.topics.events, &next).await.retryable()?;
        }
        Ok(())
    }
}

/// Applies `event` to `order`; returns the events to emit. Each condition
/// that emits (both steps done, cancelled, cancelled while paid) becomes true
/// once, so each event is emitted once whatever the arrival order.
pub fn transition(order: &mut OrderView, event: &OrderEvent, now: i64) -> Vec<EventKind> {
    let mut out = Vec::new();
    match &event.kind {
        EventKind::StockReserved { .. } => {
            if order.stock == "PENDING" {
                order.stock = "RESERVED".into();
            }
        }
        EventKind::InventoryFailed { reason } => {
            if order.stock == "PENDING" {
                order.stock = "FAILED".into();
            }
            cancel(order, reason, &mut out);
        }
        EventKind::StockReleased { .. } => {
            if order.stock != "FAILED" {
                order.stock = "RELEASED".into();
            }
        }
        EventKind::PaymentCompleted { payment_id, .. } => {
            if order.payment == "PENDING" || order.payment == "FAILED" {
                order.payment = "PAID".into();
                order.payment_id = Some(payment_id.clone());
                if order.status == "CANCELLED" {
                    order.refund_requested = true;
                    out.push(EventKind::RefundRequested { charge_key: order.event_id.clone() });
                }
            }
        }
        EventKind::PaymentRefunded { payment_id } => {
            order.refund_done = true;
            if payment_id.is_some() {
                order.payment = "REFUNDED".into();
            }
        }
        EventKind::StepFailed { group, error } => {
            let reason = format!("{group} gave up: {error}");
            if group.ends_with("inventory") && order.stock == "PENDING" {
                order.stock = "FAILED".into();
                cancel(order, &reason, &mut out);
            } else if group.ends_with("payment") && order.payment == "PENDING" {
                // The gateway may have charged before the last attempt timed
                // out: refund by the charge's key, which is a no-op if not.
                order.payment = "FAILED".into();
                cancel(order, &reason, &mut out);
                if !order.refund_requested {
                    order.refund_requested = true;
                    out.push(EventKind::RefundRequested { charge_key: order.event_id.clone() });
                }
            }
        }
        EventKind::PointsEarned { points } => order.points = Some(*points),
        EventKind::NotificationSent { channel } => match channel.as_str() {
            "email" => order.email_sent = true,
            "sms" => order.sms_sent = true,
            _ => {}
        },
        EventKind::OrderConfirmed { .. } | EventKind::OrderCancelled { .. } | EventKind::RefundRequested { .. } => {}
    }
    if order.status == "PENDING" && order.stock == "RESERVED" && order.payment == "PAID" {
        order.status = "CONFIRMED".into();
        out.push(EventKind::OrderConfirmed {
            product_id: order.product_id.clone(),
            quantity: order.quantity,
            amount: order.amount.clone(),
        });
    }
    if order.settled_at.is_none() && settled(order) {
        order.settled_at = Some(now);
    }
    out
}

fn cancel(order: &mut OrderView, reason: &str, out: &mut Vec<EventKind>) {
    if order.status != "PENDING" {
        return;
    }
    order.status = "CANCELLED".into();
    order.failure_reason = Some(reason.to_owned());
    out.push(EventKind::OrderCancelled { reason: reason.to_owned() });
    if order.payment == "PAID" && !order.refund_requested {
        order.refund_requested = true;
        out.push(EventKind::RefundRequested { charge_key: order.event_id.clone() });
    }
}

/// Whether every follow-up job of the order is done.
pub fn settled(order: &OrderView) -> bool {
    match order.status.as_str() {
        "CONFIRMED" => order.points.is_some() && order.email_sent && order.sms_sent,
        "CANCELLED" => {
            let stock_done = order.stock == "FAILED" || order.stock == "RELEASED";
            let payment_done = match order.payment.as_str() {
                "REFUNDED" => true,
                "FAILED" => order.refund_done,
                _ => false,
            };
            stock_done && payment_done
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> OrderView {
        OrderView::pending("o1".into(), "e1".into(), "u1".into(), "sku-01".into(), 2, 1000, 0)
    }

    fn event(kind: EventKind) -> OrderEvent {
        OrderEvent::caused_by("x", kind.name(), "o1", "u1", kind)
    }

    fn names(kinds: &[EventKind]) -> Vec<&'static str> {
        kinds.iter().map(EventKind::name).collect()
    }

    fn reserved() -> EventKind {
        EventKind::StockReserved { product_id: "sku-01".into(), quantity: 2 }
    }

    fn paid() -> EventKind {
        EventKind::PaymentCompleted { payment_id: "p1".into(), amount: "10.00".into() }
    }

    #[test]
    fn stock_and_payment_in_either_order_confirm_once() {
        for steps in [[reserved(), paid()], [paid(), reserved()]] {
            let mut o = order();
            assert!(transition(&mut o, &event(steps[0].clone()), 1).is_empty());
            assert_eq!(names(&transition(&mut o, &event(steps[1].clone()), 2)), ["OrderConfirmed"]);
            assert!(transition(&mut o, &event(steps[1].clone()), 3).is_empty());
            assert_eq!(o.status, "CONFIRMED");
            transition(&mut o, &event(EventKind::PointsEarned { points: 10 }), 4);
            transition(&mut o, &event(EventKind::NotificationSent { channel: "email".into() }), 5);
            assert_eq!(o.settled_at, None);
            transition(&mut o, &event(EventKind::NotificationSent { channel: "sms".into() }), 6);
            assert_eq!(o.settled_at, Some(6));
        }
    }

    #[test]
    fn out_of_stock_cancels_and_refunds_a_charge_that_came_before_or_after() {
        let failed = EventKind::InventoryFailed { reason: "out of stock".into() };
        let mut o = order();
        transition(&mut o, &event(paid()), 1);
        assert_eq!(names(&transition(&mut o, &event(failed.clone()), 2)), ["OrderCancelled", "RefundRequested"]);

        let mut o = order();
        assert_eq!(names(&transition(&mut o, &event(failed), 1)), ["OrderCancelled"]);
        assert_eq!(names(&transition(&mut o, &event(paid()), 2)), ["RefundRequested"]);
        assert_eq!(o.settled_at, None);
        transition(&mut o, &event(EventKind::PaymentRefunded { payment_id: Some("p1".into()) }), 3);
        assert_eq!((o.status.as_str(), o.payment.as_str(), o.settled_at), ("CANCELLED", "REFUNDED", Some(3)));
    }

    #[test]
    fn a_dead_lettered_payment_cancels_releases_and_refunds_by_key() {
        let mut o = order();
        transition(&mut o, &event(reserved()), 1);
        let gave_up = EventKind::StepFailed { group: "payment".into(), error: "retries exhausted".into() };
        assert_eq!(names(&transition(&mut o, &event(gave_up), 2)), ["OrderCancelled", "RefundRequested"]);
        transition(&mut o, &event(EventKind::StockReleased { restocked: true }), 3);
        transition(&mut o, &event(EventKind::PaymentRefunded { payment_id: None }), 4);
        assert_eq!((o.stock.as_str(), o.payment.as_str(), o.settled_at), ("RELEASED", "FAILED", Some(4)));
    }
}
