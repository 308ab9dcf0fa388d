//! A broker of the 3-broker cluster (replication factor 3,
//! `min.insync.replicas=2`) is killed while events are produced and handled,
//! then restarted.
//!
//! Invariants: 0 missing, 0 per-key order violations.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_handler::extract::{Json, Metadata};
use kafka_handler::{Consumer, Ordering, Producer};
use kafka_handler_tests::events::{Handled, TestEvent, expected, produce, tally};
use kafka_handler_tests::{cluster3, create_topic, init_tracing, random_name, testbed_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_broker_loses_nothing() {
    init_tracing();
    let bootstrap = cluster3();
    let topic = random_name("failover");
    create_topic(&bootstrap, &topic, 6, 3).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    let (keys, batches, per_batch) = (30u64, 20u64, 300u64);
    let n = batches * per_batch;

    let log: Arc<Mutex<Vec<Handled>>> = Arc::default();
    let l = log.clone();
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(random_name("failover"))
        .topic(&topic)
        .ordering(Ordering::Key)
        .handler(move |meta: Metadata, Json(ev): Json<TestEvent>| {
            let l = l.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                l.lock().unwrap().push(Handled {
                    key: ev.key,
                    seq: ev.seq,
                    partition: meta.partition,
                    offset: meta.offset,
                    pid: 0,
                });
            }
        })
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run_until(async move {
        let _ = stop_rx.await;
    }));

    let producing = {
        let (producer, topic) = (producer.clone(), topic.clone());
        tokio::spawn(async move {
            for b in 0..batches {
                produce(&producer, &topic, keys, b * per_batch, per_batch).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(|| testbed_node("kill", "cluster3-2")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    tokio::task::spawn_blocking(|| testbed_node("start", "cluster3-2")).await.unwrap();
    producing.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let distinct: std::collections::HashSet<_> =
            log.lock().unwrap().iter().map(|h| (h.key.clone(), h.seq)).collect();
        if distinct.len() >= n as usize {
            break;
        }
        assert!(Instant::now() < deadline, "only {} of {n} handled", distinct.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_tx.send(()).unwrap();
    running.await.unwrap().unwrap();

    let t = tally(&expected(keys, n), &log.lock().unwrap());
    eprintln!("broker failover: produced {n}, {t:?}");
    assert_eq!(t.missing, 0, "events lost when a broker died");
    assert_eq!(t.unexpected, 0);
    assert_eq!(t.order_violations, 0, "per-key order broken by the failover");
}
