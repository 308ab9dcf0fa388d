//! `scripts/bench order-api`: a fixed-rate load on the order API running on
//! the real components (Kafka, PostgreSQL, Redis from the environment), the
//! event-driven endpoint and the inline one in the same run, with the
//! domain's provider latencies. Prints a table and `RESULT` lines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use orders::config::Settings;
use orders::demo::{Load, drive, e2e_latencies, order_body, percentile, wait_settled};
use orders::simulator::SimulatorConfig;
use orders::system::{Parts, System};
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
struct Args {
    /// Orders per second sent to `POST /orders`.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Orders per second sent to `POST /orders/sync` (the original system
    /// managed about 100).
    #[arg(long, default_value_t = 100)]
    sync_rate: u64,
    /// How long, in seconds.
    #[arg(long, default_value_t = 5)]
    sync_seconds: u64,
    /// Provider latency in ms (the domain's is 1,000).
    #[arg(long, default_value_t = 1000)]
    latency_ms: u64,
}

/// Sends `rate` requests per second for `seconds` to `path`, each on its own
/// task, whatever the answers take (an open loop: a slow server does not
/// slow the load down). Returns the latencies of 2xx answers in ms and the
/// count of other outcomes.
async fn fixed_rate(base: &str, path: &str, rate: u64, seconds: u64) -> (Vec<f64>, u64) {
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(2048).build().unwrap();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = Load::new(1);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..rate * seconds {
        ticker.tick().await;
        let (http, url, body) = (http.clone(), format!("{base}{path}"), order_body(&load, i as usize));
        let (latencies, errors) = (latencies.clone(), errors.clone());
        tasks.spawn(async move {
            let started = Instant::now();
            match http.post(url).json(&body).send().await {
                Ok(r) if r.status().is_success() => latencies.lock().await.push(started.elapsed().as_secs_f64() * 1e3),
                _ => {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let latencies = std::mem::take(&mut *latencies.lock().await);
    (latencies, errors.load(std::sync::atomic::Ordering::Relaxed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("error").init();
    let args = Args::parse();
    let admin = std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!("DATABASE_URL: run with scripts/bench"))?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let pool = sqlx::PgPool::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE orders_bench_{id}"))).execute(&pool).await?;
    let settings = Settings {
        kafka: Some(std::env::var("KAFKA_BOOTSTRAP_SERVERS")?),
        database_url: Some(format!("{}/orders_bench_{id}", admin.rsplit_once('/').expect("a database").0)),
        redis_url: std::env::var("REDIS_URL").ok(),
        simulator_url: None,
        prefix: format!("b{id}-"),
        partitions: 6,
        api_addr: "127.0.0.1:0".parse()?,
        retry_delays_ms: vec![1000, 2000, 4000],
        http_timeout_ms: 5000,
        dedup_lease_ms: 30_000,
        metrics_addr: None,
        data_dir: std::env::temp_dir(),
    };
    let system = System::start(settings, SimulatorConfig::uniform(args.latency_ms, 0.0), Parts::all()).await?;
    let base = format!("http://{}", system.api_addr.expect("the API runs"));
    println!("order API on PostgreSQL, Kafka, Redis; providers answer in {} ms", args.latency_ms);

    drive(&base, &Load { concurrency: 8, ..Load::new(100) }).await?;
    wait_settled(&system.db, Duration::from_secs(60)).await?;

    let since = orders::config::now_ms();
    println!("POST /orders at {} orders/s for {} s …", args.rate, args.seconds);
    let started = Instant::now();
    let (mut fast, fast_errors) = fixed_rate(&base, "/orders", args.rate, args.seconds).await;
    let sent_in = started.elapsed();
    let open = wait_settled(&system.db, Duration::from_secs(300)).await?;
    let drained_in = started.elapsed();
    let mut e2e = e2e_latencies(&system.db, since).await?;

    println!("POST /orders/sync at {} orders/s for {} s …", args.sync_rate, args.sync_seconds);
    let (mut slow, slow_errors) = fixed_rate(&base, "/orders/sync", args.sync_rate, args.sync_seconds).await;

    let (f50, f99) = (percentile(&mut fast, 50.0), percentile(&mut fast, 99.0));
    let (s50, s99) = (percentile(&mut slow, 50.0), percentile(&mut slow, 99.0));
    let (e50, e99) = (percentile(&mut e2e, 50.0), percentile(&mut e2e, 99.0));
    println!();
    println!("| endpoint | rate (orders/s) | answered | errors | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    println!("| `POST /orders` | {} | {} | {fast_errors} | {f50:.1} | {f99:.1} |", args.rate, fast.len());
    println!("| `POST /orders/sync` | {} | {} | {slow_errors} | {s50:.1} | {s99:.1} |", args.sync_rate, slow.len());
    println!();
    println!(
        "async orders sent in {:.1} s, every follow-up done {:.1} s after the first ({open} still open); end to end p50 {e50:.0} ms, p99 {e99:.0} ms",
        sent_in.as_secs_f64(),
        drained_in.as_secs_f64()
    );
    println!("RESULT order_api_p50_ms {f50:.1}");
    println!("RESULT order_api_p99_ms {f99:.1}");
    println!("RESULT order_api_sync_p50_ms {s50:.1}");
    println!("RESULT order_api_speedup {:.1}", if f50 > 0.0 { s50 / f50 } else { 0.0 });
    println!("RESULT order_e2e_p50_ms {e50:.0}");
    println!("RESULT order_e2e_p99_ms {e99:.0}");
    system.stop().await
}
