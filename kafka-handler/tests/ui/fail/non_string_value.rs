//! Topic names are string literals.

use kafka_handler::handler;

#[handler(topic = order_created, group = "inventory")]
async fn reserve_stock() {}

fn main() {}
