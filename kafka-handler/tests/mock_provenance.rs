//! Forged provenance headers on a source topic, on librdkafka's mock
//! cluster: they are data, not instructions. The same promise is proven
//! against a real broker by `kafka-handler-tests`' `forged_provenance`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::run_until;
use kafka_handler::extract::{Attempt, Origin, Payload};
use kafka_handler::middleware::RetryTopicLayer;
use kafka_handler::mock::MockCluster;
use kafka_handler::{Consumer, HandlerError, Outgoing, Producer, Record};

/// Every record of `topic`, read by a group of its own.
async fn read_all(cluster: &MockCluster, topic: &str, count: usize) -> Vec<Record> {
    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let r = records.clone();
    let reader = Consumer::builder()
        .bootstrap_servers(cluster.bootstrap_servers())
        .group_id(format!("read-{topic}"))
        .topic(topic)
        .handler(move |record: Record| {
            r.lock().unwrap().push(record);
            async {}
        })
        .build()
        .unwrap();
    let r = records.clone();
    run_until(reader, move || r.lock().unwrap().len() >= count).await;
    records.lock().unwrap().clone()
}

fn values<'r>(record: &'r Record, name: &str) -> Vec<&'r [u8]> {
    record.headers().iter().filter(|h| h.name == name).filter_map(|h| h.value.as_deref()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_provenance_on_a_source_topic_steers_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let cluster = MockCluster::start(1).unwrap();
    // The retry, re-drive and dead-letter topics are created by the consumer,
    // with the defaults, through the mock cluster's own API.
    cluster.create_topic("orders", 1).unwrap();
    let producer = Producer::builder().bootstrap_servers(cluster.bootstrap_servers()).build().unwrap();
    let in_an_hour = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() + 3_600_000;
    for payload in ["ok", "fail-once", "poison"] {
        let forged = Outgoing::new("orders", payload)
            .header("retry.original.topic", "payments")
            .header("retry.original.partition", "0")
            .header("retry.original.offset", "0")
            .header("retry.due", in_an_hour.to_string())
            .header("retry.attempt", "99")
            .header("dlt.original.topic", "payments");
        producer.send(forged).await.unwrap();
    }

    let seen: Arc<Mutex<Vec<(String, u32, Origin)>>> = Arc::default();
    let s = seen.clone();
    let handler = move |Attempt(n): Attempt, origin: Origin, Payload(payload): Payload| {
        let s = s.clone();
        async move {
            let payload = String::from_utf8_lossy(&payload.unwrap_or_default()).into_owned();
            s.lock().unwrap().push((payload.clone(), n, origin));
            match payload.as_str() {
                "fail-once" if n == 1 => Err(HandlerError::retryable("flaky")),
                "poison" => Err(HandlerError::permanent("poison")),
                _ => Ok(()),
            }
        }
    };
    let consumer = Consumer::builder()
        .bootstrap_servers(cluster.bootstrap_servers())
        .group_id("g")
        .topic("orders")
        .set("session.timeout.ms", "6000")
        .handler(handler)
        .retry_topics(RetryTopicLayer::with_delays(producer.clone(), [Duration::from_millis(100)]))
        .dead_letter(producer.clone())
        .build()
        .unwrap();
    let started = Instant::now();
    let s = seen.clone();
    run_until(consumer, move || s.lock().unwrap().len() >= 4).await;
    assert!(started.elapsed() < Duration::from_secs(20), "a forged due time held a record");

    let attempts: Vec<(String, u32, String, i64)> =
        seen.lock().unwrap().iter().map(|(p, n, o)| (p.clone(), *n, o.topic.clone(), o.offset)).collect();
    let expected = [("ok", 1, 0), ("fail-once", 1, 1), ("poison", 1, 2), ("fail-once", 2, 1)]
        .map(|(payload, attempt, offset)| (payload.to_owned(), attempt, "orders".to_owned(), offset));
    assert_eq!(attempts, expected, "(payload, attempt, origin topic, origin offset)");

    let retry = read_all(&cluster, "orders.g.retry.1", 1).await;
    assert_eq!(values(&retry[0], "retry.original.topic"), [b"orders"]);
    assert_eq!(values(&retry[0], "retry.original.offset"), [b"1"]);
    assert_eq!(values(&retry[0], "retry.attempt"), [b"2"]);
    assert_eq!(values(&retry[0], "retry.due").len(), 1);
    assert!(values(&retry[0], "dlt.original.topic").is_empty());

    let dead = read_all(&cluster, "orders.dlt", 1).await;
    assert_eq!(values(&dead[0], "dlt.original.topic"), [b"orders"]);
    assert_eq!(values(&dead[0], "dlt.original.offset"), [b"2"]);
    assert!(values(&dead[0], "retry.original.topic").is_empty(), "forged retry headers were copied");
}
