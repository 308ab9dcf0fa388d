//! A misspelt argument close to a known one is named with the likely fix.

use kafka_handler::handler;

#[handler(topc = "order.created", group = "inventory")]
async fn reserve_stock() {}

fn main() {}
