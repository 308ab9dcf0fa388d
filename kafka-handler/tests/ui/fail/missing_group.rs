//! Without a group there is no consumer group to join.

use kafka_handler::handler;

#[handler(topic = "order.created")]
async fn reserve_stock() {}

fn main() {}
