//! A handler that runs far longer than `max.poll.interval.ms` must not get the
//! consumer kicked out of its group: the polling thread keeps polling.
//!
//! Invariant: every record is handled exactly once (a consumer kicked out
//! would lose its partition and the record would be handled again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_handler::extract::Json;
use kafka_handler::{Consumer, Producer};
use kafka_handler_tests::events::{TestEvent, produce};
use kafka_handler_tests::{bootstrap, create_topic, init_tracing, random_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_longer_than_max_poll_interval_keeps_the_partition() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("long");
    create_topic(&bootstrap, &topic, 1, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    produce(&producer, &topic, 4, 0, 20).await;

    let calls: Arc<Mutex<HashMap<(String, u64), usize>>> = Arc::default();
    let c = calls.clone();
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(random_name("long"))
        .topic(&topic)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "7000")
        .handler(move |Json(ev): Json<TestEvent>| {
            let c = c.clone();
            async move {
                *c.lock().unwrap().entry((ev.key.clone(), ev.seq)).or_default() += 1;
                if (ev.key.as_str(), ev.seq) == ("k0", 0) {
                    // Twice max.poll.interval.ms.
                    tokio::time::sleep(Duration::from_secs(15)).await;
                }
            }
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let c = calls.clone();
    consumer
        .run_until(async move {
            while c.lock().unwrap().len() < 20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A revoked, redelivered record would show up within this time.
            tokio::time::sleep(Duration::from_secs(3)).await;
        })
        .await
        .unwrap();

    let calls = calls.lock().unwrap();
    let duplicated: usize = calls.values().map(|n| n - 1).sum();
    eprintln!("long handler: {} records, {duplicated} handled twice, {:?}", calls.len(), started.elapsed());
    assert!(started.elapsed() >= Duration::from_secs(15));
    assert_eq!(calls.len(), 20, "0 missing");
    assert_eq!(duplicated, 0, "the consumer was kicked out of the group and records were redelivered");
}
