//! One way to list topics at a time.

use kafka_handler::handler;

#[handler(topic = "order.created", topics = ["order.cancelled"], group = "inventory")]
async fn reserve_stock() {}

fn main() {}
