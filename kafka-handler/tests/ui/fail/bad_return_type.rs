//! A return type that is not an outcome: one error, at the return type.

use kafka_handler::handler;

#[handler(topic = "order.created", group = "inventory")]
async fn reserve_stock() -> u32 {
    7
}

fn main() {}
