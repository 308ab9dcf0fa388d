//! Fast runtime tests on librdkafka's in-process mock cluster. The same
//! promises are proven against a real broker by the `kafka-handler-tests`
//! package; these catch regressions in seconds.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::run_until;
use kafka_handler::extract::{Json, Key, Metadata};
use kafka_handler::mock::MockCluster;
use kafka_handler::{Consumer, ConsumerBuilder, HandlerError, Ordering, Outgoing, Producer};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Event {
    key: String,
    seq: u64,
}

async fn produce(bootstrap: &str, topic: &str, keys: u64, n: u64) {
    let producer = Producer::builder().bootstrap_servers(bootstrap).build().unwrap();
    let sends = (0..n).map(|i| {
        let ev = Event { key: format!("k{}", i % keys), seq: i / keys };
        producer.send(Outgoing::json(topic, &ev).unwrap().key(ev.key.clone()))
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
}

fn builder(cluster: &MockCluster, topic: &str, group: &str) -> ConsumerBuilder {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    Consumer::builder()
        .bootstrap_servers(cluster.bootstrap_servers())
        .group_id(group)
        .topic(topic)
        // The mock cluster notices a departed member only by its session timeout.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
}

type Seen = Arc<Mutex<Vec<(String, u64, i32)>>>;

fn assert_per_key_order(seen: &[(String, u64, i32)]) {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (key, seq, _) in seen {
        if let Some(prev) = last.insert(key, *seq) {
            assert!(*seq > prev, "key {key}: {seq} after {prev}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_once_in_partition_order() {
    let cluster = MockCluster::start(1).unwrap();
    cluster.create_topic("t", 3).unwrap();
    produce(&cluster.bootstrap_servers(), "t", 30, 3_000).await;

    let seen: Seen = Arc::default();
    let s = seen.clone();
    let consumer = builder(&cluster, "t", "g")
        .handler(move |meta: Metadata, Json(ev): Json<Event>| {
            let s = s.clone();
            async move { s.lock().unwrap().push((ev.key, ev.seq, meta.partition)) }
        })
        .build()
        .unwrap();
    run_until(consumer, || seen.lock().unwrap().len() >= 3_000).await;

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3_000, "0 missing, 0 duplicated");
    assert_per_key_order(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ordering_runs_keys_concurrently_up_to_the_limit() {
    let cluster = MockCluster::start(1).unwrap();
    cluster.create_topic("t", 1).unwrap();
    produce(&cluster.bootstrap_servers(), "t", 40, 400).await;

    let seen: Seen = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (s, r, p) = (seen.clone(), running.clone(), peak.clone());
    let consumer = builder(&cluster, "t", "g")
        .ordering(Ordering::Key)
        .max_in_flight(16)
        .handler(move |Json(ev): Json<Event>| {
            let (s, r, p) = (s.clone(), r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, AtomicOrdering::SeqCst) + 1;
                p.fetch_max(now, AtomicOrdering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                s.lock().unwrap().push((ev.key, ev.seq, 0));
                r.fetch_sub(1, AtomicOrdering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let started = Instant::now();
    run_until(consumer, || seen.lock().unwrap().len() >= 400).await;

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 400);
    assert_per_key_order(&seen);
    let peak = peak.load(AtomicOrdering::SeqCst);
    assert!(peak <= 16, "max_in_flight exceeded: {peak}");
    assert!(peak > 1, "keys of one partition must run concurrently (peak {peak})");
    eprintln!("key ordering: peak {peak} in flight, {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_handled_by_their_disposition() {
    let cluster = MockCluster::start(1).unwrap();
    cluster.create_topic("t", 1).unwrap();
    let producer = Producer::builder().bootstrap_servers(cluster.bootstrap_servers()).build().unwrap();
    for payload in [
        r#"{"key":"a","seq":0}"#,
        "not json",
        r#"{"key":"panic","seq":1}"#,
        r#"{"key":"flaky","seq":2}"#,
        r#"{"key":"bad","seq":3}"#,
        r#"{"key":"z","seq":4}"#,
    ] {
        producer.send(Outgoing::new("t", payload)).await.unwrap();
    }

    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let c = calls.clone();
    let consumer = builder(&cluster, "t", "g")
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .handler(move |Json(ev): Json<Event>| {
            let c = c.clone();
            async move {
                let n = {
                    let mut calls = c.lock().unwrap();
                    let n = calls.entry(ev.key.clone()).or_default();
                    *n += 1;
                    *n
                };
                match ev.key.as_str() {
                    "panic" => panic!("boom"),
                    "flaky" if n < 3 => Err(HandlerError::retryable("try again")),
                    "bad" => Err(HandlerError::permanent("business rule")),
                    _ => Ok(()),
                }
            }
        })
        .build()
        .unwrap();
    run_until(consumer, || calls.lock().unwrap().contains_key("z")).await;

    let calls = calls.lock().unwrap();
    assert_eq!(calls["a"], 1);
    assert_eq!(calls["panic"], 1, "a panic is permanent: not retried");
    assert_eq!(calls["flaky"], 3, "retryable failures are retried in place until success");
    assert_eq!(calls["bad"], 1, "permanent failures are not retried");
    assert_eq!(calls["z"], 1, "the partition moved on past every failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_so_a_restart_redelivers_nothing() {
    let cluster = MockCluster::start(1).unwrap();
    cluster.create_topic("t", 2).unwrap();
    produce(&cluster.bootstrap_servers(), "t", 10, 500).await;

    let count = Arc::new(AtomicUsize::new(0));
    let handler = {
        let count = count.clone();
        move |Key(_): Key| {
            let count = count.clone();
            async move {
                count.fetch_add(1, AtomicOrdering::SeqCst);
            }
        }
    };
    let first = builder(&cluster, "t", "g").handler(handler.clone()).build().unwrap();
    run_until(first, || count.load(AtomicOrdering::SeqCst) >= 500).await;
    assert_eq!(count.load(AtomicOrdering::SeqCst), 500);

    produce(&cluster.bootstrap_servers(), "t", 10, 100).await;
    let second = builder(&cluster, "t", "g").handler(handler).build().unwrap();
    run_until(second, || count.load(AtomicOrdering::SeqCst) >= 600).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count.load(AtomicOrdering::SeqCst), 600, "0 duplicates after a clean restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_bounds_records_waiting_for_handlers() {
    let cluster = MockCluster::start(1).unwrap();
    cluster.create_topic("t", 2).unwrap();
    produce(&cluster.bootstrap_servers(), "t", 1_000, 2_000).await;

    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (s, g) = (started.clone(), gate.clone());
    let consumer = builder(&cluster, "t", "g")
        .ordering(Ordering::Unordered)
        .max_in_flight(1_000)
        .max_buffered(100)
        .handler(move || {
            let (s, g) = (s.clone(), g.clone());
            async move {
                s.fetch_add(1, AtomicOrdering::SeqCst);
                g.acquire().await.unwrap().forget();
            }
        })
        .build()
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let probe = {
        let (started, gate, done) = (started.clone(), gate.clone(), done.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while started.load(AtomicOrdering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Hold every handler for a while: only `max_buffered` may be fetched.
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                peak = peak.max(started.load(AtomicOrdering::SeqCst));
            }
            // Then let them all finish.
            gate.add_permits(10_000);
            done.store(1, AtomicOrdering::SeqCst);
            peak
        })
    };
    run_until(consumer, || started.load(AtomicOrdering::SeqCst) >= 2_000 && done.load(AtomicOrdering::SeqCst) == 1)
        .await;
    let peak = probe.await.unwrap();
    assert!(peak >= 100, "the buffer should fill up ({peak})");
    assert!(peak <= 101, "at most max_buffered (+1 already polled) records in flight, saw {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_groups_in_one_process_each_handle_everything() {
    let cluster = MockCluster::start(1).unwrap();
    cluster.create_topic("t", 3).unwrap();
    produce(&cluster.bootstrap_servers(), "t", 10, 300).await;

    let counter = |n: Arc<AtomicUsize>| {
        move || {
            n.fetch_add(1, AtomicOrdering::SeqCst);
            std::future::ready(())
        }
    };
    let (a, b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let inventory = builder(&cluster, "t", "inventory").handler(counter(a.clone())).build().unwrap();
    let notification = builder(&cluster, "t", "notification").handler(counter(b.clone())).build().unwrap();
    let (ra, rb) = (a.clone(), b.clone());
    tokio::join!(
        run_until(inventory, move || ra.load(AtomicOrdering::SeqCst) >= 300),
        run_until(notification, move || rb.load(AtomicOrdering::SeqCst) >= 300),
    );
    assert_eq!((a.load(AtomicOrdering::SeqCst), b.load(AtomicOrdering::SeqCst)), (300, 300));
}

/// Headers reach a handler that asks for them, whether or not other handlers
/// of the process skip them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_reach_handlers_that_ask_for_them() {
    use kafka_handler::extract::Headers;
    let cluster = MockCluster::start(1).unwrap();
    cluster.create_topic("h", 1).unwrap();
    let producer = Producer::builder().bootstrap_servers(cluster.bootstrap_servers()).build().unwrap();
    for i in 0..10 {
        let ev = Event { key: "k".into(), seq: i };
        producer.send(Outgoing::json("h", &ev).unwrap().key("k").header("trace", i.to_string())).await.unwrap();
    }

    let with = Arc::new(Mutex::new(Vec::new()));
    let w = with.clone();
    let reads = builder(&cluster, "h", "reads").handler(move |headers: Headers| {
        w.lock().unwrap().push(headers.get("trace").map(<[u8]>::to_vec));
        async {}
    });
    let without = Arc::new(AtomicUsize::new(0));
    let n = without.clone();
    let skips = builder(&cluster, "h", "skips").handler(move |_: Key| {
        n.fetch_add(1, AtomicOrdering::Relaxed);
        async {}
    });
    let (w, n) = (with.clone(), without.clone());
    let both = async {
        tokio::join!(
            run_until(reads.build().unwrap(), move || w.lock().unwrap().len() >= 10),
            run_until(skips.build().unwrap(), move || n.load(AtomicOrdering::Relaxed) >= 10),
        )
    };
    both.await;
    let expected: Vec<_> = (0..10).map(|i| Some(i.to_string().into_bytes())).collect();
    assert_eq!(*with.lock().unwrap(), expected, "every header, in order");
    assert_eq!(without.load(AtomicOrdering::Relaxed), 10);
}
