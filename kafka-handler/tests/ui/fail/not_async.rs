//! Handlers are futures: a plain `fn` is rejected at `fn`.

use kafka_handler::handler;

#[handler(topic = "order.created", group = "inventory")]
fn reserve_stock() {}

fn main() {}
