//! The metrics and health endpoint against a real broker, fetched over HTTP.

use std::time::{Duration, Instant};

use kafka_handler::endpoint::Endpoint;
use kafka_handler::{Consumer, Producer};
use kafka_handler_tests::events::produce;
use kafka_handler_tests::{bootstrap, create_topic, init_tracing, random_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// `GET path` with a plain HTTP/1.1 request: the status and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn wait_for_status(addr: std::net::SocketAddr, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (got, body) = get(addr, path).await;
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "{path} stayed {got}, not {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Invariant: one endpoint serves the consumer's metrics under their
/// Prometheus names and its probes; readiness turns 200 once the consumer
/// has joined and 503 when it stops, liveness 503 when it stops, and the
/// gauges stay in the export after the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_follow_a_consumer_through_its_life() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("endpoint");
    create_topic(&bootstrap, &topic, 2, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    produce(&producer, &topic, 4, 0, 20).await;

    let endpoint = Endpoint::new().unwrap();
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(random_name("endpoint"))
        .topic(&topic)
        // A handler that waits, so that its calls are timed too.
        .handler(|| tokio::time::sleep(Duration::from_millis(1)))
        .meter_provider(endpoint.meter_provider())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(endpoint.health(consumer.health()).serve_on(listener));

    assert_eq!(get(addr, "/health/ready").await.0, 503, "not ready before run");
    assert_eq!(get(addr, "/health/live").await.0, 200, "live before run");

    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));
    wait_for_status(addr, "/health/ready", 200).await;
    let gauges = ["kafka_handler_consumer_lag{", "kafka_handler_consumer_partitions_assigned{"];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let handled = text.lines().any(|l| l.starts_with("kafka_handler_consumer_records_total") && l.ends_with(" 20"));
        let missing: Vec<_> = ["kafka_handler_process_duration_seconds_count"]
            .iter()
            .chain(&gauges)
            .filter(|name| !text.lines().any(|l| l.starts_with(*name)))
            .collect();
        if handled && missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "20 records handled: {handled}, missing: {missing:?}\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(60), task).await.expect("shutdown").unwrap().unwrap();
    wait_for_status(addr, "/health/ready", 503).await;
    assert_eq!(get(addr, "/health/live").await.0, 503, "not live after stop");
    let (_, after) = get(addr, "/metrics").await;
    for name in gauges.iter().chain(&["kafka_handler_consumer_records_total"]) {
        assert!(after.lines().any(|l| l.starts_with(name)), "{name} gone after stop:\n{after}");
    }
    server.abort();
}
