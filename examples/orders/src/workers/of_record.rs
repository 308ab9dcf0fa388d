//! Events are claims; the order database is the system of record. A record
//! on a topic may come from any producer, so before a job moves money,
//! stock, points or statistics it checks the event against the order the
//! API wrote: the order exists, the event is the one the API published for
//! it (its `eventId`), and what it says matches. A forged or re-published
//! `OrderCreated` with a new event id, or one for an order that does not
//! exist, fails permanently and is dead-lettered with the reason; it never
//! reaches a provider.

use kafka_handler::{HandlerError, ResultExt};

use crate::db::view::{self, OrderView};
use crate::db::{Conn, Db};
use crate::events::{OrderCreated, OrderEvent};
use crate::money::parse_cents;

/// The order `order_id` names, in a transaction. An id no order can have (a
/// NUL or another control character, over 64 bytes) is refused permanently
/// instead of being sent to the database, which would refuse it as an error
/// that looks transient.
pub async fn load(conn: &mut Conn<'_>, order_id: &str) -> Result<Option<OrderView>, HandlerError> {
    valid(order_id)?;
    view::load(conn, order_id).await.retryable()
}

/// [`load`], outside a transaction.
pub async fn get(db: &Db, order_id: &str) -> Result<Option<OrderView>, HandlerError> {
    valid(order_id)?;
    view::get(db, order_id).await.retryable()
}

fn valid(order_id: &str) -> Result<(), HandlerError> {
    if order_id.len() > 64 || order_id.chars().any(char::is_control) {
        return Err(HandlerError::permanent(format!("order id {order_id:?} is not one the order API issues")));
    }
    Ok(())
}

/// The order of record of `event`, if `event` is the `OrderCreated` the API
/// published for `order` (as loaded by its id).
pub fn created(order: Option<OrderView>, event: &OrderCreated) -> Result<OrderView, HandlerError> {
    let order = order.ok_or_else(|| unknown(&event.order_id))?;
    if order.event_id != event.event_id {
        return Err(HandlerError::permanent(format!(
            "order {}: event {:?} is not the order's OrderCreated (that is {:?})",
            event.order_id, event.event_id, order.event_id
        )));
    }
    let amount = parse_cents(&event.amount).ok();
    let fields = [
        ("userId", order.user_id == event.user_id),
        ("productId", order.product_id == event.product_id),
        ("quantity", order.quantity == event.quantity),
        ("amount", amount == Some(order.amount_cents)),
    ];
    if let Some((field, _)) = fields.iter().find(|(_, same)| !same) {
        return Err(HandlerError::permanent(format!(
            "order {}: the event's {field} differs from the order of record",
            event.order_id
        )));
    }
    Ok(order)
}

/// The order of record of a follow-up event: it must exist and be the
/// event's user's.
pub fn follow_up(order: Option<OrderView>, event: &OrderEvent) -> Result<OrderView, HandlerError> {
    let order = order.ok_or_else(|| unknown(&event.order_id))?;
    if order.user_id != event.user_id {
        return Err(HandlerError::permanent(format!(
            "order {}: the event's userId differs from the order of record",
            event.order_id
        )));
    }
    Ok(order)
}

/// The order of record of an `OrderConfirmed`: it must be confirmed.
pub fn confirmed(order: Option<OrderView>, event: &OrderEvent) -> Result<OrderView, HandlerError> {
    let order = follow_up(order, event)?;
    if order.status != "CONFIRMED" {
        return Err(HandlerError::permanent(format!(
            "order {}: confirmed by an event, but it is {}",
            order.order_id, order.status
        )));
    }
    Ok(order)
}

fn unknown(order_id: &str) -> HandlerError {
    HandlerError::permanent(format!("unknown order {order_id:?}: not in the order database"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> OrderView {
        OrderView::pending("o1".into(), "e1".into(), "u1".into(), "sku-01".into(), 2, 998, 0)
    }

    fn event() -> OrderCreated {
        OrderCreated {
            event_id: "e1".into(),
            order_id: "o1".into(),
            user_id: "u1".into(),
            product_id: "sku-01".into(),
            quantity: 2,
            amount: "9.98".into(),
            created_at: 0,
        }
    }

    #[test]
    fn only_the_event_the_api_published_passes() {
        assert!(created(Some(order()), &event()).is_ok());
        let refused = |e: OrderCreated, o: Option<OrderView>| created(o, &e).unwrap_err().to_string();
        assert!(refused(event(), None).contains("unknown order"));
        assert!(refused(OrderCreated { event_id: "e2".into(), ..event() }, Some(order())).contains("not the order's"));
        assert!(refused(OrderCreated { amount: "0.01".into(), ..event() }, Some(order())).contains("amount"));
        assert!(refused(OrderCreated { quantity: 3, ..event() }, Some(order())).contains("quantity"));
        assert!(refused(OrderCreated { user_id: "u2".into(), ..event() }, Some(order())).contains("userId"));
    }
}
