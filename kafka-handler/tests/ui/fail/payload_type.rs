//! A payload type asked for directly: the error suggests `Json<T>`.

use kafka_handler::handler;

#[derive(serde::Deserialize)]
struct OrderCreated {
    #[allow(dead_code)]
    order_id: u64,
}

#[handler(topic = "order.created", group = "inventory")]
async fn reserve_stock(order: OrderCreated) {
    let _ = order;
}

fn main() {}
