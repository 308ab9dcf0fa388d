//! `event_id` and `event_id_header` declare where dedup finds the event id;
//! the `EventId` extractor hands it to the handler.

use kafka_handler::extract::EventId;
use kafka_handler::handler;

#[handler(topic = "order.created", group = "payment", event_id = "eventId")]
async fn charge(EventId(id): EventId) {
    let _idempotency_key: &str = &id;
}

#[handler(topic = "order.created", group = "points", event_id_header = "event-id")]
async fn earn_points() {}

fn main() {
    let _ = (charge, earn_points);
}
