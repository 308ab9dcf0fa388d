//! The open-loop load: a request every 1/rate s on a thread of its own,
//! whatever the answers take, so neither a slow server nor the benchmark's
//! other work can hold the schedule back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orders::demo::{Load, order_body};

/// What one fixed-rate run saw.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Latency of each 2xx answer, in ms, from the moment it was sent.
    pub(crate) latencies: Vec<f64>,
    /// Answers other than 2xx, and requests that failed.
    pub(crate) errors: u64,
    /// How late each request left against its schedule, in ms.
    pub(crate) lag: Vec<f64>,
    /// First to last send.
    pub(crate) sending: Duration,
    pub(crate) sent: u64,
}

impl Outcome {
    /// Requests per second actually sent.
    pub(crate) fn send_rate(&self) -> f64 {
        if self.sent < 2 { 0.0 } else { (self.sent - 1) as f64 / self.sending.as_secs_f64().max(1e-9) }
    }
}

/// Sends `rate` requests per second for `seconds` to `url` from a thread with
/// its own runtime, each request on its own task, with a fresh
/// `Idempotency-Key` as a careful client sends; the orders come from `users`
/// distinct users.
pub(crate) async fn fixed_rate(url: String, rate: u64, seconds: u64, users: usize) -> anyhow::Result<Outcome> {
    let thread = std::thread::Builder::new().name("load".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(send(url, rate, seconds, users))
    })?;
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))?
}

async fn send(url: String, rate: u64, seconds: u64, users: usize) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()?;
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let load = Load { users, ..Load::new(1) };
    // Users spread over the whole range, not the first `total` of it.
    let offset = fastrand::usize(..users.max(1));
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let total = rate * seconds;
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut last = start;
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let sent = Instant::now();
        last = sent;
        let body = order_body(&load, i as usize + offset);
        let request = http.post(&url).header("Idempotency-Key", uuid::Uuid::new_v4().to_string()).json(&body);
        let outcome = outcome.clone();
        tasks.spawn(async move {
            let ok = match request.send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            let latency = sent.elapsed().as_secs_f64() * 1e3;
            let mut outcome = outcome.lock().expect("not poisoned");
            outcome.lag.push(sent.duration_since(due).as_secs_f64() * 1e3);
            if ok {
                outcome.latencies.push(latency);
            } else {
                outcome.errors += 1;
            }
        });
        // Reap finished tasks as we go, so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut outcome = std::mem::take(&mut *outcome.lock().expect("not poisoned"));
    outcome.sending = last.duration_since(start);
    outcome.sent = total;
    Ok(outcome)
}
