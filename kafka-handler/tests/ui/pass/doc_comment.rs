//! Doc comments go on the struct and on `handle`: with `missing_docs` denied,
//! an undocumented generated item would fail this test. Other attributes stay
//! on `handle`, and a `#[cfg]` removes every generated item.
#![deny(missing_docs, warnings)]

use kafka_handler::handler;

/// Reserves stock for a new order.
#[handler(topic = "order.created", group = "inventory")]
#[allow(clippy::unused_async)]
pub async fn reserve_stock() {}

/// Compiled out: its argument type does not even exist.
#[handler(topic = "order.created", group = "inventory")]
#[cfg(any())]
pub async fn compiled_out(_: DoesNotExist) {}

fn main() {
    let _ = kafka_handler::Consumer::builder().handler(reserve_stock).bootstrap_servers("x").build().unwrap();
}
