//! Non-blocking retries through retry topics, against the real broker.
//!
//! Invariants: a failing record is retried when due (never early, at most
//! 250 ms late) while every other record, in its partition and in the others,
//! is handled at once; retries stay inside the failing group (the other group
//! handles each record exactly once); a record that never succeeds ends in the
//! dead-letter topic with its original provenance (0 lost); with ordered
//! retries, a key's later events are handled after its failing one (0 order
//! violations) while other keys flow; in-place retries, retry topics and the
//! dead-letter topic combine: each delivery gets its in-place retries, the
//! attempts count on across both (a record failing 5 times is handled on its
//! 6th attempt, attempts in order), and a record that never succeeds is
//! dead-lettered once, after every attempt of every level.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_handler::extract::{Attempt, Json};
use kafka_handler::middleware::{ExponentialBackoff, RetryTopicLayer};
use kafka_handler::{Consumer, HandlerError, Outgoing, Producer};
use kafka_handler_tests::events::{TestEvent, produce};
use kafka_handler_tests::{bootstrap, create_topic, init_tracing, random_name, read_records, run_until};

/// Attempt numbers and times, by event id.
type Attempts = HashMap<String, Vec<(u32, Instant)>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_topics_hold_only_the_failing_record_and_only_in_its_group() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("orders");
    create_topic(&bootstrap, &topic, 3, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    let flaky = TestEvent { event_id: "flaky".into(), key: "flaky".into(), seq: 0 };
    let broken = TestEvent { event_id: "broken".into(), key: "broken".into(), seq: 0 };
    producer.send(Outgoing::json(&topic, &flaky).unwrap().key("flaky")).await.unwrap();
    let broken_at = producer.send(Outgoing::json(&topic, &broken).unwrap().key("broken")).await.unwrap();
    produce(&producer, &topic, 30, 0, 300).await;

    // inventory: "flaky" fails twice, "broken" always.
    let attempts: Arc<Mutex<Attempts>> = Arc::default();
    let a = attempts.clone();
    let inventory = move |Attempt(n): Attempt, Json(ev): Json<TestEvent>| {
        let a = a.clone();
        async move {
            a.lock().unwrap().entry(ev.event_id.clone()).or_default().push((n, Instant::now()));
            match ev.event_id.as_str() {
                "flaky" if n < 3 => Err(HandlerError::retryable("inventory API timed out")),
                "broken" => Err(HandlerError::retryable("inventory API down")),
                _ => Ok(()),
            }
        }
    };
    let group = random_name("inventory");
    let delays = [Duration::from_secs(1), Duration::from_secs(2)];
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(&group)
        .topic(&topic)
        .handler(inventory)
        .retry_topics(RetryTopicLayer::with_delays(producer.clone(), delays))
        .dead_letter(producer.clone())
        .build()
        .unwrap();
    let a = attempts.clone();
    let notification_group = random_name("notification");
    let notified: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let n = notified.clone();
    let notification = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(&notification_group)
        .topic(&topic)
        .handler(move |Json(ev): Json<TestEvent>| {
            let n = n.clone();
            async move { *n.lock().unwrap().entry(ev.event_id).or_default() += 1 }
        })
        .build()
        .unwrap();
    let n = notified.clone();
    let inventory_done = move || {
        let a = a.lock().unwrap();
        a.len() == 302 && a["flaky"].len() == 3 && a["broken"].len() == 3
    };
    tokio::join!(
        run_until(consumer, Duration::from_secs(90), inventory_done),
        run_until(notification, Duration::from_secs(90), move || n.lock().unwrap().len() == 302)
    );

    check_retries(&attempts.lock().unwrap(), &delays);
    // Retries stayed in the inventory group.
    assert!(notified.lock().unwrap().values().all(|&count| count == 1), "notification handled a record twice");
    check_dead_letter(&bootstrap, &topic, &group, broken_at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_retries_retry_topics_and_the_dead_letter_topic_combine() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("payments");
    create_topic(&bootstrap, &topic, 2, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    for id in ["flaky", "broken"] {
        let ev = TestEvent { event_id: id.into(), key: id.into(), seq: 0 };
        producer.send(Outgoing::json(&topic, &ev).unwrap().key(id)).await.unwrap();
    }
    produce(&producer, &topic, 10, 0, 50).await;

    // "flaky" fails on its first 5 attempts, "broken" on every one.
    let attempts: Arc<Mutex<Attempts>> = Arc::default();
    let a = attempts.clone();
    let handler = move |Attempt(n): Attempt, Json(ev): Json<TestEvent>| {
        let a = a.clone();
        async move {
            a.lock().unwrap().entry(ev.event_id.clone()).or_default().push((n, Instant::now()));
            match ev.event_id.as_str() {
                "flaky" if n <= 5 => Err(HandlerError::retryable("gateway timed out")),
                "broken" => Err(HandlerError::retryable("gateway down")),
                _ => Ok(()),
            }
        }
    };
    let group = random_name("payment");
    let in_place = ExponentialBackoff::default().initial(Duration::from_millis(50)).max_retries(2).without_jitter();
    let levels = [Duration::from_millis(300); 3];
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(&group)
        .topic(&topic)
        .handler(handler)
        .retry(in_place)
        .retry_topics(RetryTopicLayer::with_delays(producer.clone(), levels))
        .dead_letter(producer.clone())
        .build()
        .unwrap();
    let a = attempts.clone();
    run_until(consumer, Duration::from_secs(90), move || {
        let a = a.lock().unwrap();
        a.len() == 52 && a["flaky"].len() == 6 && a["broken"].len() == 12
    })
    .await;

    let attempts = attempts.lock().unwrap().clone();
    let numbers = |id: &str| attempts[id].iter().map(|(n, _)| *n).collect::<Vec<_>>();
    let others_twice = attempts.iter().filter(|(id, a)| !["flaky", "broken"].contains(&id.as_str()) && a.len() != 1);
    eprintln!("flaky attempts {:?}, broken attempts {:?}", numbers("flaky"), numbers("broken"));
    assert_eq!(others_twice.count(), 0, "records that never failed were handled once");
    assert_eq!(numbers("flaky"), (1..=6).collect::<Vec<_>>(), "handled on its 6th attempt, attempts in order");
    assert_eq!(numbers("broken"), (1..=12).collect::<Vec<_>>(), "3 attempts per delivery, 4 deliveries");
    let dead = read_records(&bootstrap, &format!("{topic}.dlt"), 1).await;
    let text = |h: &str| String::from_utf8_lossy(dead[0].header(h).unwrap_or_default()).into_owned();
    assert_eq!(dead.len(), 1, "one dead letter");
    assert_eq!(text("dlt.error.kind"), "retries-exhausted");
    assert_eq!(text("dlt.attempts"), "12");
    assert_eq!(text("dlt.original.topic"), topic);
    eprintln!("combined retries: flaky handled on attempt 6 of 6; broken dead-lettered after 12 attempts; 0 lost");
}

fn check_retries(attempts: &Attempts, delays: &[Duration]) {
    // Everything else was handled before the first retry was even due.
    let others_done = attempts
        .iter()
        .filter(|(id, _)| !["flaky", "broken"].contains(&id.as_str()))
        .map(|(_, a)| a[0].1)
        .max()
        .unwrap();
    let flaky = &attempts["flaky"];
    eprintln!("flaky attempts after {:?}", flaky.iter().map(|(_, t)| *t - flaky[0].1).collect::<Vec<_>>());
    assert!(others_done < flaky[1].1, "other records waited for the retry");
    assert_eq!(flaky.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    for (i, due) in delays.iter().enumerate() {
        let gap = flaky[i + 1].1 - flaky[i].1;
        assert!(gap >= *due && gap <= *due + Duration::from_millis(250), "retry {i} after {gap:?}, due {due:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_retries_keep_per_key_order_across_a_retry() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("orders");
    create_topic(&bootstrap, &topic, 2, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    // Key "u1": seq 0 fails twice, then succeeds; seq 1..=5 come after it.
    // Key "u2": never fails.
    for seq in 0..6 {
        for key in ["u1", "u2"] {
            let ev = TestEvent { event_id: format!("{key}-{seq}"), key: key.into(), seq };
            producer.send(Outgoing::json(&topic, &ev).unwrap().key(key)).await.unwrap();
        }
    }
    let handled: Arc<Mutex<Vec<(String, u64, Instant)>>> = Arc::default();
    let h = handled.clone();
    let handler = move |Attempt(n): Attempt, Json(ev): Json<TestEvent>| {
        let h = h.clone();
        async move {
            if ev.key == "u1" && ev.seq == 0 && n < 3 {
                return Err(HandlerError::retryable("payment gateway timed out"));
            }
            h.lock().unwrap().push((ev.key, ev.seq, Instant::now()));
            Ok(())
        }
    };
    let retries = RetryTopicLayer::with_delays(producer.clone(), [300, 600, 900].map(Duration::from_millis)).ordered();
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(random_name("payment"))
        .topic(&topic)
        .ordering(kafka_handler::Ordering::Key)
        .handler(handler)
        .retry_topics(retries)
        .build()
        .unwrap();
    let start = Instant::now();
    let h = handled.clone();
    run_until(consumer, Duration::from_secs(60), move || h.lock().unwrap().len() >= 12).await;

    let handled = handled.lock().unwrap();
    let order = |key: &str| handled.iter().filter(|(k, ..)| k == key).map(|(_, s, _)| *s).collect::<Vec<_>>();
    eprintln!("ordered retries: u1 {:?}, u2 {:?}", order("u1"), order("u2"));
    assert_eq!(order("u1"), [0, 1, 2, 3, 4, 5], "u1's later events overtook its failing one");
    assert_eq!(order("u2"), [0, 1, 2, 3, 4, 5]);
    let u2_done = handled.iter().filter(|(k, ..)| k == "u2").map(|(.., t)| *t).max().unwrap();
    let u1_first = handled.iter().find(|(k, s, _)| k == "u1" && *s == 0).unwrap().2;
    assert!(u2_done < u1_first, "u2 waited for u1's retries");
    assert!(u1_first - start >= Duration::from_millis(900), "u1:0 was handled before its retries were due");
}

async fn check_dead_letter(bootstrap: &str, topic: &str, group: &str, broken_at: kafka_handler::Delivered) {
    // "broken" ended in the dead-letter topic with where it first was.
    let dead = read_records(bootstrap, &format!("{topic}.dlt"), 1).await;
    let text = |h: &str| String::from_utf8_lossy(dead[0].header(h).unwrap_or_default()).into_owned();
    assert_eq!(dead.len(), 1);
    assert_eq!(text("dlt.error.kind"), "retries-exhausted");
    assert_eq!(text("dlt.attempts"), "3");
    assert_eq!(text("dlt.original.topic"), topic);
    assert_eq!(text("dlt.original.partition"), broken_at.partition.to_string());
    assert_eq!(text("dlt.original.offset"), broken_at.offset.to_string());
    assert_eq!(text("dlt.group"), group);
    assert_eq!(text("retry.first.error"), "inventory API down");
}
