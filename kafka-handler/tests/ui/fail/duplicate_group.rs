//! A second `group` is an error at the second one.

use kafka_handler::handler;

#[handler(topic = "order.created", group = "inventory", group = "billing")]
async fn reserve_stock() {}

fn main() {}
