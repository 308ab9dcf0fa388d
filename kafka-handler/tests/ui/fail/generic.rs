//! A generic handler has no single set of argument types to subscribe with.

use kafka_handler::extract::Json;
use kafka_handler::handler;

#[handler(topic = "order.created", group = "inventory")]
async fn reserve_stock<T: serde::de::DeserializeOwned>(Json(order): Json<T>) {
    let _ = order;
}

fn main() {}
