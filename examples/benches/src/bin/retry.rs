//! Retry topics under load: 10% of records fail once and go through a 1 s
//! retry topic. Measures how late retries run against their due time, and
//! the throughput of the healthy records against a run with no failures,
//! same topic and handler cost, in one run.
//!
//! `scripts/bench retry [--events N]`

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_handler::extract::{Attempt, Headers, Json};
use kafka_handler::middleware::RetryTopicLayer;
use kafka_handler::{Consumer, HandlerError, Producer};
use kafka_handler_benches::{bootstrap, create_topic, fresh, load, table};
use serde::Deserialize;

const COST: Duration = Duration::from_millis(1);

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "eventId")]
    event_id: String,
}

impl Event {
    fn fails(&self) -> bool {
        self.event_id.parse::<u64>().is_ok_and(|i| i % 10 == 0)
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Healthy records per second, and each retry's lateness in ms.
async fn run(bootstrap: &str, topic: &str, events: u64, failures: bool) -> anyhow::Result<(f64, Vec<i64>)> {
    let healthy = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let lateness = Arc::new(Mutex::new(Vec::new()));
    let first = Arc::new(std::sync::OnceLock::new());
    let last = Arc::new(Mutex::new(Instant::now()));
    let (h, r, l, f, t) = (healthy.clone(), retried.clone(), lateness.clone(), first.clone(), last.clone());
    let handler = move |Attempt(n): Attempt, headers: Headers, Json(ev): Json<Event>| {
        let (h, r, l, f, t) = (h.clone(), r.clone(), l.clone(), f.clone(), t.clone());
        async move {
            f.get_or_init(Instant::now);
            if failures && ev.fails() {
                if n == 1 {
                    return Err(HandlerError::retryable("simulated outage"));
                }
                let due: i64 =
                    headers.get("retry.due").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()).unwrap_or(0);
                l.lock().unwrap().push(now_ms() - due);
                r.fetch_add(1, AtomicOrdering::Relaxed);
            }
            tokio::time::sleep(COST).await;
            if !(failures && ev.fails()) {
                h.fetch_add(1, AtomicOrdering::Relaxed);
                *t.lock().unwrap() = Instant::now();
            }
            Ok::<(), HandlerError>(())
        }
    };
    // A record waits for its retry copy to be acknowledged: send it at once.
    let producer = Producer::builder().bootstrap_servers(bootstrap).set("linger.ms", "0").build()?;
    let mut builder =
        Consumer::builder().bootstrap_servers(bootstrap).group_id(fresh("retry-bench")).topic(topic).handler(handler);
    if failures {
        builder = builder.retry_topics(RetryTopicLayer::with_delays(producer, [Duration::from_secs(1)]));
    }
    let expected_healthy = if failures { events - events.div_ceil(10) } else { events };
    let expected_retried = if failures { events.div_ceil(10) } else { 0 };
    let (h, r) = (healthy.clone(), retried.clone());
    builder
        .build()?
        .run_until(async move {
            while h.load(AtomicOrdering::Relaxed) < expected_healthy
                || r.load(AtomicOrdering::Relaxed) < expected_retried
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await?;
    let elapsed = *last.lock().unwrap() - *first.get().expect("handled");
    let eps = expected_healthy as f64 / elapsed.as_secs_f64();
    let lateness = std::mem::take(&mut *lateness.lock().unwrap());
    Ok((eps, lateness))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut events = 24_000u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--events" => events = it.next().and_then(|v| v.parse().ok()).expect("--events N"),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let bootstrap = bootstrap();
    let topic = fresh("retry-bench");
    create_topic(&bootstrap, &topic, 12).await?;
    load(&bootstrap, &topic, events, 1_000, 100)?;

    let (clean, _) = run(&bootstrap, &topic, events, false).await?;
    let (with_failures, mut lateness) = run(&bootstrap, &topic, events, true).await?;
    lateness.sort_unstable();
    let pct = |p: f64| {
        lateness.get(((lateness.len() as f64 * p) as usize).min(lateness.len().saturating_sub(1))).copied().unwrap_or(0)
    };
    table(
        &["run", "healthy records/s", "retries", "lateness p50 ms", "lateness p99 ms", "max ms"],
        &[
            vec!["no failures".into(), format!("{clean:.0}"), "0".into(), "-".into(), "-".into(), "-".into()],
            vec![
                "10% fail once, 1 s retry topic".into(),
                format!("{with_failures:.0}"),
                lateness.len().to_string(),
                pct(0.5).to_string(),
                pct(0.99).to_string(),
                lateness.last().copied().unwrap_or(0).to_string(),
            ],
        ],
    );
    println!("RESULT retry_delay_p99_ms {}", pct(0.99));
    println!("RESULT retry_hol_ratio {:.3}", with_failures / clean);
    Ok(())
}
