//! Without a topic the consumer would subscribe to nothing.

use kafka_handler::handler;

#[handler(group = "inventory")]
async fn reserve_stock() {}

fn main() {}
