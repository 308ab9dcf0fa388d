//! A handler that takes 100 ms, on 3 partitions with 1,000 distinct keys:
//! key-ordered mode (`max_in_flight` 256) against per-partition mode.
//!
//! `scripts/bench slow-handler [--seconds S]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use kafka_handler::{Consumer, Ordering};
use kafka_handler_benches::{bootstrap, create_topic, fresh, load, table};

const DELAY: Duration = Duration::from_millis(100);

/// Handled events/s over `window`, after the consumer handled its first event.
async fn measure(bootstrap: &str, topic: &str, ordering: Ordering, window: Duration) -> anyhow::Result<f64> {
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let consumer = Consumer::builder()
        .bootstrap_servers(bootstrap)
        .group_id(fresh("slow"))
        .topic(topic)
        .ordering(ordering)
        .max_in_flight(256)
        .handler(move || {
            let h = h.clone();
            async move {
                tokio::time::sleep(DELAY).await;
                h.fetch_add(1, AtomicOrdering::Relaxed);
            }
        })
        .build()?;
    let h = handled.clone();
    let result = Arc::new(std::sync::Mutex::new(0.0));
    let r = result.clone();
    consumer
        .run_until(async move {
            while h.load(AtomicOrdering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Skip the ramp-up, then count over the window.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (n0, t0) = (h.load(AtomicOrdering::Relaxed), Instant::now());
            tokio::time::sleep(window).await;
            let n1 = h.load(AtomicOrdering::Relaxed);
            *r.lock().unwrap() = (n1 - n0) as f64 / t0.elapsed().as_secs_f64();
        })
        .await?;
    let eps = *result.lock().unwrap();
    Ok(eps)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut seconds = 8u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds S"),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let window = Duration::from_secs(seconds);
    let bootstrap = bootstrap();
    let topic = fresh("slow-handler");
    create_topic(&bootstrap, &topic, 3).await?;
    // Enough backlog that neither mode runs dry during its window.
    load(&bootstrap, &topic, 3_000 * (seconds + 4), 1_000, 100)?;

    let key = measure(&bootstrap, &topic, Ordering::Key, window).await?;
    let partition = measure(&bootstrap, &topic, Ordering::Partition, window).await?;
    let ideal = 256.0 / DELAY.as_secs_f64();
    table(
        &["mode", "events/s", "of ideal"],
        &[
            vec!["key-ordered, max_in_flight 256".into(), format!("{key:.0}"), format!("{:.2}", key / ideal)],
            vec![
                "per-partition (3 partitions)".into(),
                format!("{partition:.1}"),
                format!("{:.2}", partition / (3.0 / DELAY.as_secs_f64())),
            ],
        ],
    );
    println!("RESULT slow_handler_speedup {:.1}", key / partition);
    println!("RESULT key_ordered_eps {key:.0}");
    println!("RESULT key_ordered_of_ideal {:.3}", key / ideal);
    Ok(())
}
