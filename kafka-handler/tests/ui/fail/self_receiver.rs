//! `#[handler]` goes on free functions: `self` is not an extractor.

use kafka_handler::handler;

struct Inventory;

impl Inventory {
    #[handler(topic = "order.created", group = "inventory")]
    async fn reserve_stock(&self) {}
}

fn main() {
    let _ = Inventory;
}
