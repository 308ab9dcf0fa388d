//! A misspelt argument is named, with the valid ones.

use kafka_handler::handler;

#[handler(topic = "order.created", grop = "inventory")]
async fn reserve_stock() {}

fn main() {}
