//! Re-driving dead letters with `kafka-handler dlt replay` once the fault is
//! fixed.
//!
//! Invariants: each dead letter is handled once more by the group that failed
//! it and by no other group; a dry run changes nothing; the event keeps its
//! payload (and so its event id), so with dedup on replaying it a second time
//! changes nothing.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_handler::dedup::redis::RedisStore;
use kafka_handler::extract::Json;
use kafka_handler::middleware::DedupLayer;
use kafka_handler::{Consumer, HandlerError, Producer};
use kafka_handler_tests::events::{TestEvent, produce};
use kafka_handler_tests::{bootstrap, create_topic, init_tracing, random_name};

type Counts = Arc<Mutex<HashMap<String, usize>>>;

fn counting(counts: &Counts, fault: Option<Arc<AtomicBool>>) -> impl kafka_handler::Handler<(Json<TestEvent>,)> {
    let counts = counts.clone();
    move |Json(ev): Json<TestEvent>| {
        let (counts, fault) = (counts.clone(), fault.clone());
        async move {
            if fault.is_some_and(|f| f.load(Ordering::SeqCst)) && ev.seq % 2 == 0 {
                return Err(HandlerError::permanent("payment gateway rejected the card"));
            }
            *counts.lock().unwrap().entry(ev.event_id).or_default() += 1;
            Ok(())
        }
    }
}

async fn cli(args: &[&str]) -> ExitCode {
    kafka_handler::cli::main(std::iter::once("kafka-handler").chain(args.iter().copied())).await
}

fn total(c: &Counts) -> usize {
    c.lock().unwrap().values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_dead_letters_back_to_the_failing_group_only() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("orders");
    create_topic(&bootstrap, &topic, 2, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    produce(&producer, &topic, 5, 0, 20).await; // seq 0..3 per key: 10 even, 10 odd

    let fault = Arc::new(AtomicBool::new(true));
    let (payment, notification): (Counts, Counts) = Default::default();
    let payment_group = random_name("payment");
    let dedup = DedupLayer::new(RedisStore::connect(&kafka_handler_tests::redis_url()).await.unwrap());
    let dedup_counters = dedup.counters();
    let payment_consumer = || {
        Consumer::builder()
            .bootstrap_servers(&bootstrap)
            .group_id(&payment_group)
            .topic(&topic)
            .handler(counting(&payment, Some(fault.clone())))
            .dedup(dedup.clone())
            .dead_letter(producer.clone())
            .build()
            .unwrap()
    };
    let notification_consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(random_name("notification"))
        .topic(&topic)
        .handler(counting(&notification, None))
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let a = tokio::spawn(payment_consumer().run_until(stopped(stop_rx.clone())));
    let b = tokio::spawn(notification_consumer.run_until(stopped(stop_rx.clone())));
    let wait = |c: Counts, n: usize| async move {
        tokio::time::timeout(Duration::from_secs(60), async {
            while total(&c) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("timed out")
    };
    wait(payment.clone(), 10).await;
    wait(notification.clone(), 20).await;

    let dlt = format!("{topic}.dlt");
    // Wait until all 10 dead letters are written before listing them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cli(&["--bootstrap-servers", &bootstrap, "dlt", "list", "--topic", &dlt]).await, ExitCode::SUCCESS);
    fault.store(false, Ordering::SeqCst); // the fault is fixed

    let replay = ["--bootstrap-servers", &bootstrap, "dlt", "replay", "--topic", &dlt, "--group", &payment_group];
    let dry: Vec<&str> = replay.iter().copied().chain(["--dry-run"]).collect();
    assert_eq!(cli(&dry).await, ExitCode::SUCCESS);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(total(&payment), 10, "a dry run replays nothing");

    assert_eq!(cli(&replay).await, ExitCode::SUCCESS);
    wait(payment.clone(), 20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Replaying the same dead letters again: dedup recognises every event.
    let hits_before = dedup_counters.hits();
    assert_eq!(cli(&replay).await, ExitCode::SUCCESS);
    tokio::time::timeout(Duration::from_secs(60), async {
        while dedup_counters.hits() < hits_before + 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the second replay was not seen as duplicates");
    assert_eq!(total(&payment), 20, "a second replay ran the handler again");
    stop_tx.send(true).unwrap();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();

    let payment = payment.lock().unwrap();
    assert_eq!(payment.len(), 20, "every event handled by payment after the replay");
    assert!(payment.values().all(|&n| n == 1), "each handled once: {payment:?}");
    let notification = notification.lock().unwrap();
    assert_eq!(notification.len(), 20);
    assert!(notification.values().all(|&n| n == 1), "the replay reached another group");
}
