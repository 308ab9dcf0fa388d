//! `crate = ".."` is the path the generated code uses.

use kafka_handler::handler;

#[handler(topic = "order.created", group = "inventory", crate = "::kafka_handlr")]
async fn reserve_stock() {}

fn main() {}
