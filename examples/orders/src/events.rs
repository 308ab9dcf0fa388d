//! The events of the order flow (see `docs/orders.md`).

use serde::{Deserialize, Serialize};

/// Published by the order API (through the outbox) to `order.created`, keyed
/// by `userId`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    /// The idempotency key of everything that follows from this order.
    pub event_id: String,
    pub order_id: String,
    pub user_id: String,
    pub product_id: String,
    pub quantity: i64,
    /// Decimal money as a string, never a float.
    pub amount: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// A follow-up event on `order.events`, keyed by `userId`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    /// Derived from the event that caused it ([`derive_id`]), so a
    /// republished copy carries the same id and is deduplicated.
    pub event_id: String,
    pub order_id: String,
    pub user_id: String,
    #[serde(flatten)]
    pub kind: EventKind,
    pub at: i64,
}

/// What happened, with its `type` field.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum EventKind {
    /// inventory: stock decreased for the order.
    StockReserved { product_id: String, quantity: i64 },
    /// inventory: not enough stock (a business failure: compensate, do not retry).
    InventoryFailed { reason: String },
    /// inventory: a cancelled order's reservation was given back (or there
    /// was none, `restocked: false`).
    StockReleased { restocked: bool },
    /// payment: the gateway charged the order.
    PaymentCompleted { payment_id: String, amount: String },
    /// payment: the charge of a cancelled order was refunded (`payment_id`
    /// `None`: the gateway had no charge to refund).
    PaymentRefunded { payment_id: Option<String> },
    /// order-status: stock reserved and payment completed.
    OrderConfirmed { product_id: String, quantity: i64, amount: String },
    /// order-status: the order will not be fulfilled.
    OrderCancelled { reason: String },
    /// order-status: a cancelled order may have been charged; `charge_key` is
    /// the charge's idempotency key.
    RefundRequested { charge_key: String },
    /// points: loyalty points earned for a confirmed order.
    PointsEarned { points: i64 },
    /// notification: one channel (`email`, `sms`) sent.
    NotificationSent { channel: String },
    /// dlt-monitor: `group` gave up on the order's `OrderCreated`.
    StepFailed { group: String, error: String },
}

impl EventKind {
    /// The `type` value, also sent as the `eventType` header.
    pub fn name(&self) -> &'static str {
        match self {
            Self::StockReserved { .. } => "StockReserved",
            Self::InventoryFailed { .. } => "InventoryFailed",
            Self::StockReleased { .. } => "StockReleased",
            Self::PaymentCompleted { .. } => "PaymentCompleted",
            Self::PaymentRefunded { .. } => "PaymentRefunded",
            Self::OrderConfirmed { .. } => "OrderConfirmed",
            Self::OrderCancelled { .. } => "OrderCancelled",
            Self::RefundRequested { .. } => "RefundRequested",
            Self::PointsEarned { .. } => "PointsEarned",
            Self::NotificationSent { .. } => "NotificationSent",
            Self::StepFailed { .. } => "StepFailed",
        }
    }
}

impl OrderEvent {
    /// The event that `cause` (an event id) leads to, `label` telling apart
    /// several events of one cause.
    pub fn caused_by(cause: &str, label: &str, order_id: &str, user_id: &str, kind: EventKind) -> Self {
        Self {
            event_id: derive_id(cause, label),
            order_id: order_id.to_owned(),
            user_id: user_id.to_owned(),
            kind,
            at: crate::config::now_ms(),
        }
    }
}

/// A deterministic event id: the same cause and label give the same id, so a
/// handler that runs again publishes a duplicate that consumers skip.
pub fn derive_id(cause: &str, label: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{cause}/{label}").as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_up_events_are_flat_json_with_a_type() {
        let event = OrderEvent::caused_by(
            "e1",
            "paid",
            "o1",
            "u1",
            EventKind::PaymentCompleted { payment_id: "p1".into(), amount: "9.99".into() },
        );
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "PaymentCompleted");
        assert_eq!(json["paymentId"], "p1");
        assert_eq!(json["eventId"], derive_id("e1", "paid"));
        assert_eq!(serde_json::from_value::<OrderEvent>(json).unwrap(), event);
    }
}
