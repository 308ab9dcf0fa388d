//! An argument that does not implement `FromRecord`: one error, at its type.

use kafka_handler::extract::Metadata;
use kafka_handler::handler;

#[handler(topic = "order.created", group = "inventory")]
async fn reserve_stock(meta: Metadata, body: Vec<u8>) {
    let _ = (meta, body);
}

fn main() {}
