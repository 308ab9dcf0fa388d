//! What the mock-cluster tests share.

use std::time::{Duration, Instant};

use kafka_handler::Consumer;
use tokio::sync::oneshot;

/// Runs `consumer` until `done` returns true (or 30 s pass), then shuts it down.
pub(crate) async fn run_until(consumer: Consumer, mut done: impl FnMut() -> bool) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run_until(async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}
