//! Failure handling against the real broker: in-place retries with measured
//! delays, and the dead-letter topic with provenance headers.
//!
//! Invariants: every bad record reaches `<topic>.dlt` exactly with its reason
//! (0 lost) — with dedup on, a record without a valid event id too — the good
//! records around them are all handled (the consumer never stops), and retry
//! delays are never early and at most 250 ms late.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_handler::dedup::EventIdSource;
use kafka_handler::dedup::redis::RedisStore;
use kafka_handler::extract::{Attempt, Headers, Json, Key};
use kafka_handler::middleware::{DeadLetterLayer, DedupLayer, ExponentialBackoff, RetryLayer};
use kafka_handler::{Consumer, HandlerError, Outgoing, Producer, Record};
use kafka_handler_tests::{bootstrap, create_topic, init_tracing, random_name, read_records, run_until};
use serde::Deserialize;

#[derive(Deserialize)]
struct Order {
    id: String,
    kind: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_reach_the_dead_letter_topic_with_their_reason() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("orders");
    create_topic(&bootstrap, &topic, 1, 1).await;
    create_topic(&bootstrap, &format!("{topic}.dlt"), 1, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    let group = random_name("inventory");

    let json = |id: &str, kind: &str| format!(r#"{{"id":"{id}","kind":"{kind}"}}"#);
    let send = |record: Outgoing| producer.send(record);
    send(Outgoing::new(&topic, json("good-1", "ok")).key("k")).await.unwrap();
    send(Outgoing::new(&topic, json("rule", "permanent")).key("k")).await.unwrap();
    send(Outgoing::new(&topic, "{not json").key("k")).await.unwrap();
    send(Outgoing::new(&topic, json("binary-key", "ok")).key(vec![0xff, 0xfe, 0x00])).await.unwrap();
    send(Outgoing::new(&topic, json("garbage-header", "ok")).key("k").header("eventType", vec![0xc3, 0x28]))
        .await
        .unwrap();
    send(Outgoing::new(&topic, json("flaky", "retryable")).key("k")).await.unwrap();
    send(Outgoing::new(&topic, json("boom", "panic")).key("k")).await.unwrap();
    send(Outgoing::new(&topic, json("good-2", "ok")).key("k")).await.unwrap();

    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let h = handled.clone();
    let handler = move |Key(key): Key, headers: Headers, Json(order): Json<Order>| {
        let h = h.clone();
        async move {
            let key = key.unwrap_or_default();
            std::str::from_utf8(&key).map_err(|e| HandlerError::permanent(format!("key is not UTF-8: {e}")))?;
            if let Some(t) = headers.get("eventType") {
                std::str::from_utf8(t).map_err(|e| HandlerError::permanent(format!("eventType is not UTF-8: {e}")))?;
            }
            match order.kind.as_str() {
                "permanent" => return Err(HandlerError::permanent("out of stock")),
                "retryable" => return Err(HandlerError::retryable("inventory API timed out")),
                "panic" => panic!("bug in handler"),
                _ => {}
            }
            h.lock().unwrap().push(order.id);
            Ok(())
        }
    };
    let policy = ExponentialBackoff::default().initial(Duration::from_millis(50)).max_retries(2);
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(&group)
        .topic(&topic)
        .handler(handler)
        .layer(RetryLayer::with_policy(policy))
        .layer(DeadLetterLayer::new(producer.clone()))
        .build()
        .unwrap();
    let h = handled.clone();
    run_until(consumer, Duration::from_secs(90), move || h.lock().unwrap().len() >= 2).await;
    assert_eq!(*handled.lock().unwrap(), ["good-1", "good-2"], "the consumer moved past every bad record");

    let dead = read_records(&bootstrap, &format!("{topic}.dlt"), 6).await;
    let text = |r: &Record, h: &str| r.header(h).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    let by_offset: HashMap<i64, &Record> =
        dead.iter().map(|r| (text(r, "dlt.original.offset").parse().unwrap(), r)).collect();
    assert_eq!(dead.len(), 6, "one dead letter per bad record, none lost, none doubled");
    let expect = [
        (1, "permanent", "out of stock", "1"),
        (2, "decode", "invalid JSON", "1"),
        (3, "permanent", "key is not UTF-8", "1"),
        (4, "permanent", "eventType is not UTF-8", "1"),
        (5, "retries-exhausted", "inventory API timed out", "3"),
        (6, "panic", "bug in handler", "1"),
    ];
    for (offset, kind, message, attempts) in expect {
        let r = by_offset.get(&offset).unwrap_or_else(|| panic!("no dead letter for offset {offset}"));
        assert_eq!(text(r, "dlt.original.topic"), topic);
        assert_eq!(text(r, "dlt.original.partition"), "0");
        assert!(text(r, "dlt.original.timestamp").parse::<i64>().is_ok());
        assert_eq!(text(r, "dlt.group"), group);
        assert_eq!(text(r, "dlt.error.kind"), kind, "offset {offset}");
        assert!(text(r, "dlt.error.message").contains(message), "offset {offset}: {}", text(r, "dlt.error.message"));
        assert_eq!(text(r, "dlt.attempts"), attempts, "offset {offset}");
    }
    // The original record travels unchanged.
    assert_eq!(by_offset[&2].payload(), Some(&b"{not json"[..]));
    assert_eq!(by_offset[&3].key(), Some(&[0xff, 0xfe, 0x00][..]));
    assert_eq!(by_offset[&4].header("eventType"), Some(&[0xc3, 0x28][..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dedup_a_missing_or_malformed_event_id_is_dead_lettered() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("orders");
    create_topic(&bootstrap, &topic, 1, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    let group = random_name("inventory");
    let bad =
        [r#"{"kind":"ok"}"#, r#"{"id":null,"kind":"ok"}"#, r#"{"id":"","kind":"ok"}"#, r#"{"id":[1],"kind":"ok"}"#];
    producer.send(Outgoing::new(&topic, r#"{"id":"good-1","kind":"ok"}"#).key("k")).await.unwrap();
    for payload in bad {
        producer.send(Outgoing::new(&topic, payload).key("k")).await.unwrap();
    }
    producer.send(Outgoing::new(&topic, r#"{"id":"good-2","kind":"ok"}"#).key("k")).await.unwrap();

    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let h = handled.clone();
    let store = RedisStore::connect(&kafka_handler_tests::redis_url()).await.unwrap();
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(&group)
        .topic(&topic)
        .handler(move |Json(order): Json<Order>| {
            let h = h.clone();
            async move { h.lock().unwrap().push(order.id) }
        })
        .dedup(DedupLayer::new(store).event_id(EventIdSource::field("id")))
        .dead_letter(producer.clone())
        .build()
        .unwrap();
    let h = handled.clone();
    run_until(consumer, Duration::from_secs(90), move || h.lock().unwrap().len() >= 2).await;
    assert_eq!(*handled.lock().unwrap(), ["good-1", "good-2"], "no record was handled without its id");

    let dead = read_records(&bootstrap, &format!("{topic}.dlt"), bad.len()).await;
    assert_eq!(dead.len(), bad.len(), "one dead letter per record without a valid id");
    let text = |r: &Record, h: &str| r.header(h).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    for (r, reason) in dead.iter().zip(["missing", "missing", "empty", "malformed"]) {
        assert_eq!(text(r, "dlt.error.kind"), "event-id");
        let message = text(r, "dlt.error.message");
        assert!(message.contains("payload field `id`") && message.contains(reason), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_happen_when_due() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("retry");
    create_topic(&bootstrap, &topic, 1, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    producer.send(Outgoing::new(&topic, "{}")).await.unwrap();

    let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let a = attempts.clone();
    let handler = move |Attempt(n): Attempt| {
        let a = a.clone();
        async move {
            a.lock().unwrap().push(Instant::now());
            if n < 3 { Err(HandlerError::retryable("payment gateway down")) } else { Ok(()) }
        }
    };
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(random_name("payment"))
        .topic(&topic)
        .handler(handler)
        .layer(RetryLayer::with_policy(ExponentialBackoff::default().without_jitter()))
        .build()
        .unwrap();
    let a = attempts.clone();
    run_until(consumer, Duration::from_secs(90), move || a.lock().unwrap().len() >= 3).await;

    let at = attempts.lock().unwrap();
    assert_eq!(at.len(), 3, "handled on the third attempt");
    for (gap, due) in [(at[1] - at[0], Duration::from_secs(1)), (at[2] - at[1], Duration::from_secs(2))] {
        eprintln!("retry after {gap:?}, due after {due:?}");
        assert!(gap >= due && gap <= due + Duration::from_millis(250), "retry after {gap:?}, due {due:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_record_reaches_the_dead_letter_topic_without_its_payload() {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("big");
    // The source topic takes 2 MB records; its dead-letter topic keeps the broker's 1 MB limit.
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    let big = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "3000000");
    for r in admin.create_topics([&big], &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
    create_topic(&bootstrap, &format!("{topic}.dlt"), 1, 1).await;
    let producer =
        Producer::builder().bootstrap_servers(&bootstrap).set("message.max.bytes", "3000000").build().unwrap();
    let payload = format!(r#"{{"id":"big","kind":"ok","pad":"{}"}}"#, "x".repeat(2_000_000));
    producer.send(Outgoing::new(&topic, payload).key("k")).await.unwrap();
    producer.send(Outgoing::new(&topic, r#"{"id":"after","kind":"ok"}"#).key("k")).await.unwrap();

    const MAX_PAYLOAD: usize = 1_000_000;
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let h = handled.clone();
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(random_name("inventory"))
        .topic(&topic)
        .handler(move |record: Record| {
            let h = h.clone();
            async move {
                let size = record.payload().map_or(0, <[u8]>::len);
                if size > MAX_PAYLOAD {
                    return Err(HandlerError::permanent(format!(
                        "payload of {size} bytes is over the {MAX_PAYLOAD} limit"
                    )));
                }
                let order: Order =
                    serde_json::from_slice(record.payload().unwrap_or_default()).map_err(HandlerError::permanent)?;
                h.lock().unwrap().push(order.id);
                Ok(())
            }
        })
        .dead_letter(producer.clone())
        .build()
        .unwrap();
    let h = handled.clone();
    run_until(consumer, Duration::from_secs(90), move || !h.lock().unwrap().is_empty()).await;
    assert_eq!(*handled.lock().unwrap(), ["after"], "the consumer moved past the oversize record");

    let dead = read_records(&bootstrap, &format!("{topic}.dlt"), 1).await;
    let text = |h: &str| String::from_utf8_lossy(dead[0].header(h).unwrap_or_default()).into_owned();
    assert_eq!(text("dlt.original.offset"), "0");
    assert!(text("dlt.error.message").contains("over the 1000000 limit"));
    assert!(text("dlt.payload.dropped").parse::<usize>().unwrap() > 2_000_000);
    assert_eq!(dead[0].payload(), None, "the payload stays in the source topic");
}
