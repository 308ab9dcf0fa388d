//! The event id comes from one place: a payload field or a header.

use kafka_handler::handler;

#[handler(topic = "order.created", group = "inventory", event_id = "eventId", event_id_header = "event-id")]
async fn reserve_stock() {}

fn main() {}
