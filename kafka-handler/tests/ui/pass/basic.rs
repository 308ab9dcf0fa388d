//! The common case: one JSON extractor, one topic, a group. The builder takes
//! the topic and group from the attribute.
#![deny(warnings)]

use kafka_handler::{extract::Json, handler, Consumer, HandlerError};

#[derive(serde::Deserialize)]
struct OrderCreated {
    quantity: u32,
}

#[handler(topic = "order.created", group = "inventory")]
async fn reserve_stock(Json(order): Json<OrderCreated>) -> Result<(), HandlerError> {
    if order.quantity == 0 {
        return Err(HandlerError::permanent("quantity must be positive"));
    }
    Ok(())
}

fn main() {
    let consumer = Consumer::builder().handler(reserve_stock).bootstrap_servers("localhost:9092").build().unwrap();
    assert_eq!(consumer.group_id(), "inventory");
}
