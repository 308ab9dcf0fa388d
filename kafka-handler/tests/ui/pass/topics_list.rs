//! Several topics, as a list or by repeating `topic`, in the given order.
#![deny(warnings)]

use kafka_handler::{handler, Handler};

#[handler(topics = ["order.created", "order.cancelled",], group = "inventory")]
async fn listed() {}

#[handler(topic = "order.created", topic = "order.cancelled", group = "inventory")]
async fn repeated() {}

fn main() {
    for sub in [listed.__subscription(), repeated.__subscription()] {
        let sub = sub.unwrap();
        assert_eq!(sub.topics, ["order.created", "order.cancelled"]);
        assert_eq!(sub.group, Some("inventory"));
    }
}
