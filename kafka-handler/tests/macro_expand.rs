//! What `#[handler(..)]` generates, used as a test would: the function stays
//! callable as `handle`, the struct is a `Handler` that extracts arguments and
//! converts the outcome, and the builder takes topics and group from it.

use kafka_handler::extract::{FromRecord, Json, Metadata};
use kafka_handler::{Consumer, Disposition, Handler, HandlerError, Record, handler};

/// The event, public like the handler that takes it.
#[derive(Debug, serde::Deserialize)]
pub struct OrderCreated {
    /// Units ordered.
    pub quantity: u32,
}

/// Reserves stock; a zero quantity is a permanent failure.
#[handler(topic = "order.created", group = "inventory")]
pub async fn reserve_stock(Json(order): Json<OrderCreated>, meta: Metadata) -> Result<(), HandlerError> {
    assert_eq!(meta.topic, "order.created");
    if order.quantity == 0 {
        return Err(HandlerError::permanent("quantity must be positive"));
    }
    Ok(())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

fn record(payload: &str) -> Record {
    Record::builder("order.created").offset(5).payload(payload.to_owned()).build()
}

#[test]
fn handle_is_the_original_function() {
    let meta = Metadata::from_record(&mut record("")).unwrap();
    assert!(block_on(reserve_stock::handle(Json(OrderCreated { quantity: 1 }), meta.clone())).is_ok());
    let err = block_on(reserve_stock::handle(Json(OrderCreated { quantity: 0 }), meta)).unwrap_err();
    assert_eq!(err.disposition(), Disposition::Permanent);
}

#[test]
fn the_struct_is_a_handler() {
    assert!(block_on(reserve_stock.call(record(r#"{"quantity":2}"#))).is_ok());
    let err = block_on(Handler::call(reserve_stock, record(r#"{"quantity":0}"#))).unwrap_err();
    assert_eq!(err.disposition(), Disposition::Permanent);
    assert!(!err.is_decode());
    // A failing extractor fails the record without running the body.
    let err = block_on(reserve_stock.call(record("not json"))).unwrap_err();
    assert!(err.is_decode());
}

#[test]
fn the_builder_takes_topics_and_group_from_the_attribute() {
    let sub = reserve_stock.__subscription().unwrap();
    assert_eq!(sub.topics, ["order.created"]);
    assert_eq!(sub.group, Some("inventory"));

    // No `.group_id(..)`, no `.topic(..)`: both come from `__subscription()`.
    let consumer = Consumer::builder().handler(reserve_stock).bootstrap_servers("x").build().unwrap();
    assert_eq!(consumer.group_id(), "inventory");
    assert!(format!("{consumer:?}").contains("\"order.created\""));

    // Without the attribute, the same builder call fails.
    let plain = |Json(_): Json<OrderCreated>| async {};
    assert!(Consumer::builder().handler(plain).bootstrap_servers("x").build().is_err());
}

/// Reads one header.
#[handler(topic = "order.created", group = "audit")]
pub async fn audit(headers: kafka_handler::extract::Headers) {
    let _ = headers;
}

#[test]
fn the_struct_says_whether_its_arguments_read_headers() {
    // The runtime copies headers out of librdkafka only when something reads them.
    assert!(!reserve_stock.__reads_headers());
    assert!(audit.__reads_headers());
}
