//! Several consumers in one process, on librdkafka's mock cluster: one
//! signal shuts them all down, one health report covers them all.
//! Invariant: every record of each topic handled by its own group once
//! (0 missing, 0 duplicated), and both consumers stop on the one signal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_handler::extract::{Group, Payload};
use kafka_handler::mock::MockCluster;
use kafka_handler::{Consumer, Consumers, Outgoing, Producer};
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_run_under_one_signal_with_one_health_report() {
    let cluster = MockCluster::start(1).unwrap();
    cluster.create_topic("order.created", 2).unwrap();
    cluster.create_topic("order.events", 2).unwrap();
    let producer = Producer::builder().bootstrap_servers(cluster.bootstrap_servers()).build().unwrap();
    for i in 0..50 {
        producer.send(Outgoing::new("order.created", format!("created-{i}"))).await.unwrap();
        producer.send(Outgoing::new("order.events", format!("event-{i}"))).await.unwrap();
    }
    let handled: Arc<Mutex<HashMap<(String, String), usize>>> = Arc::default();
    let consumer = |group: &str, topic: &str| {
        let h = handled.clone();
        Consumer::builder()
            .bootstrap_servers(cluster.bootstrap_servers())
            .group_id(group)
            .topic(topic)
            .handler(move |Group(group): Group, Payload(payload): Payload| {
                let payload = String::from_utf8_lossy(&payload.unwrap_or_default()).into_owned();
                *h.lock().unwrap().entry((group.to_string(), payload)).or_default() += 1;
                async {}
            })
            .build()
            .unwrap()
    };
    let consumers =
        Consumers::new().with(consumer("inventory", "order.created")).with(consumer("notification", "order.events"));
    let health = consumers.health();
    let report = health.report();
    assert!(report.live && !report.ready, "built, not running: {report:?}");

    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(consumers.run_until(async move {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while handled.lock().unwrap().len() < 100 || !health.report().ready {
        assert!(
            Instant::now() < deadline,
            "timed out: {} handled, {:?}",
            handled.lock().unwrap().len(),
            health.report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = health.report();
    assert!(report.ready && report.live, "both running: {report:?}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), run).await.expect("both stop on one signal").unwrap().unwrap();
    let report = health.report();
    assert!(!report.ready && !report.live, "stopped: {report:?}");

    let handled = handled.lock().unwrap();
    let groups = |g: &str| handled.keys().filter(|(group, _)| group == g).count();
    let doubled = handled.values().filter(|&&n| n > 1).count();
    eprintln!(
        "inventory {} of 50, notification {} of 50, {doubled} doubled",
        groups("inventory"),
        groups("notification")
    );
    assert_eq!((groups("inventory"), groups("notification"), doubled), (50, 50, 0));
}
