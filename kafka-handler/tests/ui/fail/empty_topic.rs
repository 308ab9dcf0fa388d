//! An empty topic name is rejected at the literal.

use kafka_handler::handler;

#[handler(topic = "", group = "inventory")]
async fn reserve_stock() {}

fn main() {}
