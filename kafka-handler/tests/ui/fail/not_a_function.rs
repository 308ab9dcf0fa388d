//! Only functions can be handlers.

use kafka_handler::handler;

#[handler(topic = "order.created", group = "inventory")]
struct ReserveStock;

fn main() {}
