//! Produce-to-handle latency: an open-loop producer writes at a fixed rate,
//! whatever the consumer does, and the handler notes for each record how
//! long ago it was created (now − its create time). Per rate, without dedup
//! and with Redis dedup, default settings: p50, p99 and max.
//!
//! The create time is the instant the producer hands the record to
//! librdkafka, written into the payload in µs, which the handler reads (the
//! Kafka timestamp has it in ms). The producer is configured as
//! `kafka_handler::Producer` configures one (`linger.ms` 5, idempotent,
//! `acks=all`), so the latency includes the producer's batching. The topics
//! use `message.timestamp.type=LogAppendTime`, so each record's Kafka
//! timestamp is when the broker appended it: the handler also notes now −
//! that, the consumer's share (truncated to the ms: up to 1 ms too high).
//! A short run before the measured ones warms up the broker.
//!
//! `scripts/bench latency [--seconds S] [--rates 1000,10000] [--only none|redis]
//! [--set KEY=VALUE]... [--producer-linger-ms MS]`: `--set` gives the
//! consumer a librdkafka setting (to measure what a default costs, e.g.
//! `--set fetch.wait.max.ms=10`).

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_handler::Consumer;
use kafka_handler::dedup::redis::RedisStore;
use kafka_handler::extract::{Json, Metadata};
use kafka_handler::middleware::DedupLayer;
use kafka_handler_benches::{bootstrap, fresh, table};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use serde::Deserialize;

/// Partitions of each run's topic.
const PARTITIONS: i32 = 12;
/// Records created in the first second of a run are not counted: the
/// producer's and the consumer's connections are still warming up.
const WARM_UP: Duration = Duration::from_secs(1);

struct Args {
    seconds: u64,
    rates: Vec<u64>,
    dedup: Vec<bool>,
    settings: Vec<(String, String)>,
    producer_linger_ms: u32,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        seconds: 30,
        rates: vec![1_000, 10_000],
        dedup: vec![false, true],
        settings: Vec::new(),
        producer_linger_ms: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => a.seconds = value()?.parse()?,
            "--rates" => a.rates = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--only" => {
                a.dedup = match value()?.as_str() {
                    "none" => vec![false],
                    "redis" => vec![true],
                    other => anyhow::bail!("--only none|redis, not {other}"),
                }
            }
            "--set" => {
                let setting = value()?;
                let (key, value) =
                    setting.split_once('=').ok_or_else(|| anyhow::anyhow!("--set KEY=VALUE, not {setting}"))?;
                a.settings.push((key.to_owned(), value.to_owned()));
            }
            "--producer-linger-ms" => a.producer_linger_ms = value()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

#[derive(Deserialize)]
struct Event {
    /// When the producer created the record, µs since the Unix epoch.
    #[serde(rename = "createdUs")]
    created_us: u64,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// What one run saw: each counted record's latency in µs, since it was
/// created and since the broker appended it, and how many records were
/// produced and handled.
struct Run {
    latencies_us: Vec<u64>,
    since_append_us: Vec<u64>,
    produced: u64,
    handled: u64,
}

/// Writes `rate` records a second to `topic` for `seconds`, on a thread of
/// its own, never waiting for the consumer; returns how many it wrote.
fn produce(bootstrap: &str, topic: &str, rate: u64, seconds: u64, linger_ms: u32) -> anyhow::Result<u64> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", linger_ms.to_string())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let total = rate * seconds;
    let pad = "x".repeat(40);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        // Catch up with the schedule, then sleep a little: the rate holds
        // over each millisecond without a timer per record.
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
        while sent < due {
            let created = SystemTime::now().duration_since(UNIX_EPOCH)?;
            let key = format!("k{}", sent % 10_000);
            let payload =
                format!(r#"{{"eventId":"{}-{sent}","createdUs":{},"p":"{pad}"}}"#, topic, created.as_micros());
            let mut record = BaseRecord::to(topic).key(&key).payload(&payload).timestamp(created.as_millis() as i64);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(sent)
}

/// One run: a fresh topic and group, the consumer joined before the
/// producer starts, until every record written is handled (or 30 s after
/// the producer finished).
async fn run(bootstrap: &str, args: &Args, rate: u64, redis: Option<&str>) -> anyhow::Result<Run> {
    let topic = fresh("latency");
    create_topic(bootstrap, &topic).await?;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity((rate * args.seconds) as usize)));
    let since_append = Arc::new(Mutex::new(Vec::with_capacity((rate * args.seconds) as usize)));
    let handled = Arc::new(AtomicU64::new(0));
    let counted_from = Arc::new(AtomicU64::new(u64::MAX));
    let (l, a, h, from) = (latencies.clone(), since_append.clone(), handled.clone(), counted_from.clone());
    let mut builder =
        Consumer::builder().from_env().bootstrap_servers(bootstrap).group_id(fresh("latency")).topic(&topic).handler(
            move |meta: Metadata, Json(event): Json<Event>| {
                let now = now_us();
                if event.created_us >= from.load(AtomicOrdering::Relaxed) {
                    l.lock().unwrap().push(now.saturating_sub(event.created_us));
                    let appended = meta.timestamp.map_or(now, |ms| ms.max(0) as u64 * 1000);
                    a.lock().unwrap().push(now.saturating_sub(appended));
                }
                h.fetch_add(1, AtomicOrdering::Relaxed);
                std::future::ready(())
            },
        );
    for (key, value) in &args.settings {
        builder = builder.set(key, value);
    }
    if let Some(url) = redis {
        builder = builder.dedup(DedupLayer::new(RedisStore::connect(url).await?));
    }
    let consumer = builder.build()?;
    let health = consumer.health();
    let produced = Arc::new(AtomicU64::new(0));
    let (p, h) = (produced.clone(), handled.clone());
    let (bootstrap, seconds, linger) = (bootstrap.to_owned(), args.seconds, args.producer_linger_ms);
    consumer
        .run_until(async move {
            let joined = Instant::now();
            while !(health.report().ready && health.report().assigned == PARTITIONS as usize) {
                if joined.elapsed() > Duration::from_secs(60) {
                    eprintln!("the consumer did not get its partitions within 60 s");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            counted_from.store(now_us() + WARM_UP.as_micros() as u64, AtomicOrdering::Relaxed);
            let t = topic.clone();
            match tokio::task::spawn_blocking(move || produce(&bootstrap, &t, rate, seconds, linger)).await {
                Ok(Ok(n)) => p.store(n, AtomicOrdering::Relaxed),
                Ok(Err(e)) => eprintln!("producer failed: {e}"),
                Err(e) => eprintln!("producer panicked: {e}"),
            }
            let done = Instant::now();
            while h.load(AtomicOrdering::Relaxed) < p.load(AtomicOrdering::Relaxed)
                && done.elapsed() < Duration::from_secs(30)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await?;
    let latencies_us = std::mem::take(&mut *latencies.lock().unwrap());
    let since_append_us = std::mem::take(&mut *since_append.lock().unwrap());
    Ok(Run {
        latencies_us,
        since_append_us,
        produced: produced.load(AtomicOrdering::Relaxed),
        handled: handled.load(AtomicOrdering::Relaxed),
    })
}

/// Creates a topic whose records are stamped with the broker's append time.
async fn create_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    kafka_handler_benches::create_topic_with(
        bootstrap,
        topic,
        PARTITIONS,
        &[("message.timestamp.type", "LogAppendTime")],
    )
    .await
}

/// The `q` quantile of sorted values (nearest rank), in ms.
fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = args()?;
    let bootstrap = bootstrap();
    let redis_url = std::env::var("REDIS_URL").ok();
    let settings = if args.settings.is_empty() {
        "default settings".to_owned()
    } else {
        args.settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
    };
    println!(
        "{} s per run, {PARTITIONS} partitions, no-op handler, producer linger.ms={}, consumer: {settings}",
        args.seconds, args.producer_linger_ms
    );
    // Warm-up, not counted: the first run on a fresh broker is slower.
    let warm_up = Args { seconds: 3, rates: Vec::new(), dedup: Vec::new(), settings: args.settings.clone(), ..args };
    run(&bootstrap, &warm_up, 1_000, None).await?;
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for &rate in &args.rates {
        for &dedup in &args.dedup {
            let redis = if dedup {
                Some(
                    redis_url
                        .as_deref()
                        .ok_or_else(|| anyhow::anyhow!("REDIS_URL is not set: run with scripts/bench latency"))?,
                )
            } else {
                None
            };
            let mut run = run(&bootstrap, &args, rate, redis).await?;
            run.latencies_us.sort_unstable();
            run.since_append_us.sort_unstable();
            let (p50, p99) = (quantile_ms(&run.latencies_us, 0.50), quantile_ms(&run.latencies_us, 0.99));
            let max = run.latencies_us.last().map_or(f64::NAN, |&us| us as f64 / 1000.0);
            rows.push(vec![
                format!("{rate}"),
                if dedup { "Redis".into() } else { "off".into() },
                format!("{p50:.2}"),
                format!("{p99:.2}"),
                format!("{max:.2}"),
                format!("{:.2}", quantile_ms(&run.since_append_us, 0.50)),
                format!("{:.2}", quantile_ms(&run.since_append_us, 0.99)),
                format!("{}", run.latencies_us.len()),
                format!("{}/{}", run.handled, run.produced),
            ]);
            results.push((rate, dedup, p99));
        }
    }
    table(
        &[
            "events/s",
            "dedup",
            "p50 ms",
            "p99 ms",
            "max ms",
            "since append p50",
            "since append p99",
            "counted",
            "handled/produced",
        ],
        &rows,
    );
    let top = args.rates.iter().copied().max().unwrap_or(0);
    for (rate, dedup, p99) in results {
        if rate == top {
            let name = if dedup { "latency_redis_p99_ms" } else { "latency_p99_ms" };
            println!("RESULT {name} {p99:.2}");
        }
    }
    Ok(())
}
