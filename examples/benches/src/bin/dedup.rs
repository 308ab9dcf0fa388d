//! Dedup under load, on one topic of JSON events with unique `eventId`s,
//! key-ordered (keyed by user id), a fresh consumer group per run:
//!
//! 1. a no-op handler with Redis dedup against the same consumer without
//!    dedup, interleaved runs; and once with dedup in a store in this
//!    process's memory, which answers at once: what the consumer and the
//!    dedup layer cost without Redis;
//! 2. transactional PostgreSQL mode with durable commits, one effect row per
//!    event, over a few in-flight, batch and connection settings; the fastest
//!    setting of a first pass is run again and its median counts.
//!
//! Each run is timed from the first record handled to the last one done (for
//! the transactional mode: committed), consumer start-up excluded. CPU time
//! per event (this process, and the Redis server's own from `INFO cpu`)
//! shows what a run costs regardless of what else the machine is doing.
//!
//! `scripts/bench dedup [--events N] [--rounds R] [--only memory|redis|postgres]`
//! (`memory`: the no-dedup and in-memory runs only, interleaved).

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kafka_handler::dedup::MemoryStore;
use kafka_handler::dedup::postgres::PostgresStore;
use kafka_handler::dedup::redis::RedisStore;
use kafka_handler::dedup::transactional::{Transactional, TxHandler};
use kafka_handler::extract::{FromRecord, Json};
use kafka_handler::middleware::DedupLayer;
use kafka_handler::{Consumer, ConsumerBuilder, HandlerError, Ordering, Record, ResultExt};
use kafka_handler_benches::{bootstrap, cpu_seconds, create_topic, fresh, load, table};
use serde::Deserialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres};

/// Distinct keys (user ids) over the events.
const USERS: u64 = 10_000;

struct Args {
    events: u64,
    rounds: usize,
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args { events: 200_000, rounds: 3, only: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--events" => a.events = it.next().and_then(|v| v.parse().ok()).expect("--events N"),
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds R"),
            "--only" => a.only = it.next(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// What one run measured.
#[derive(Clone, Copy)]
struct Run {
    events_per_second: f64,
    /// CPU time of this process per event, in µs.
    cpu_us: f64,
    /// CPU time of the Redis server per event, in µs.
    redis_cpu_us: Option<f64>,
}

/// When (and at what CPU time) the first record was handled and the last
/// one was done.
#[derive(Clone)]
struct Clock {
    events: u64,
    handled: Arc<AtomicU64>,
    first: Arc<OnceLock<(Instant, f64)>>,
    last: Arc<OnceLock<(Instant, f64)>>,
}

impl Clock {
    fn new(events: u64) -> Self {
        Self { events, handled: Arc::default(), first: Arc::default(), last: Arc::default() }
    }

    fn now() -> (Instant, f64) {
        (Instant::now(), cpu_seconds().unwrap_or(f64::NAN))
    }

    fn start(&self) {
        self.first.get_or_init(Self::now);
    }

    /// Counts a handled record; the last one ends the run.
    fn tick(&self) {
        self.start();
        if self.handled.fetch_add(1, AtomicOrdering::Relaxed) + 1 == self.events {
            let _ = self.last.set(Self::now());
        }
    }

    /// Until `done` says the last record is done, then ends the run.
    async fn wait(&self, done: impl Fn() -> bool) {
        while !done() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = self.last.set(Self::now());
    }

    fn run(&self, redis_cpu_us: Option<f64>) -> Run {
        let ((t0, cpu0), (t1, cpu1)) = (self.first.get().expect("handled"), self.last.get().expect("done"));
        let events = self.events as f64;
        Run {
            events_per_second: events / (*t1 - *t0).as_secs_f64(),
            cpu_us: (cpu1 - cpu0) * 1e6 / events,
            redis_cpu_us,
        }
    }
}

fn consumer(bootstrap: &str, topic: &str, group: &str) -> ConsumerBuilder {
    Consumer::builder().from_env().bootstrap_servers(bootstrap).group_id(group).topic(topic).ordering(Ordering::Key)
}

/// CPU seconds the Redis server has used (`INFO cpu`, main process).
async fn redis_cpu_seconds(url: &str) -> anyhow::Result<f64> {
    let mut connection = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut connection).await?;
    Ok(info
        .lines()
        .filter_map(|l| l.strip_prefix("used_cpu_user:").or_else(|| l.strip_prefix("used_cpu_sys:")))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum())
}

/// Where a no-op handler checks its events.
enum Store<'a> {
    None,
    Memory,
    Redis(&'a str),
}

/// A no-op handler, with dedup or without.
async fn no_op(bootstrap: &str, topic: &str, events: u64, store: Store<'_>) -> anyhow::Result<Run> {
    let redis = match store {
        Store::Redis(url) => Some(url),
        _ => None,
    };
    let clock = Clock::new(events);
    let c = clock.clone();
    let mut builder = consumer(bootstrap, topic, &fresh("dedup-bench")).handler(move || {
        c.tick();
        std::future::ready(())
    });
    let redis_before = match store {
        Store::Redis(url) => {
            builder = builder.dedup(DedupLayer::new(RedisStore::connect(url).await?));
            Some(redis_cpu_seconds(url).await?)
        }
        Store::Memory => {
            builder = builder.dedup(DedupLayer::new(MemoryStore::default()));
            None
        }
        Store::None => None,
    };
    let c = clock.clone();
    builder
        .build()?
        .run_until(async move { c.wait(|| c.handled.load(AtomicOrdering::Relaxed) >= events).await })
        .await?;
    let redis_cpu_us = match (redis, redis_before) {
        (Some(url), Some(before)) => Some((redis_cpu_seconds(url).await? - before) * 1e6 / events as f64),
        _ => None,
    };
    Ok(clock.run(redis_cpu_us))
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "eventId")]
    event_id: String,
    seq: i64,
}

/// Writes one effect row per event, in the dedup transaction.
#[derive(Clone)]
struct InsertEffect(Clock);

impl TxHandler<Postgres> for InsertEffect {
    async fn handle(&self, conn: &mut PgConnection, mut record: Record) -> Result<(), HandlerError> {
        self.0.start();
        let Json(event) = Json::<Event>::from_record(&mut record)?;
        sqlx::query("INSERT INTO bench_effects (event_id, amount) VALUES ($1, $2)")
            .bind(event.event_id)
            .bind(event.seq)
            .execute(conn)
            .await
            .retryable()?;
        Ok(())
    }
}

/// What the transactional mode is tried with.
#[derive(Clone, Copy)]
struct Setting {
    max_in_flight: usize,
    max_batch: usize,
    connections: usize,
}

const SETTINGS: [Setting; 6] = [
    Setting { max_in_flight: 256, max_batch: 256, connections: 2 },
    Setting { max_in_flight: 512, max_batch: 256, connections: 2 },
    Setting { max_in_flight: 1024, max_batch: 512, connections: 2 },
    Setting { max_in_flight: 1024, max_batch: 256, connections: 4 },
    Setting { max_in_flight: 2048, max_batch: 1024, connections: 2 },
    Setting { max_in_flight: 2048, max_batch: 512, connections: 4 },
];

/// Events committed in transactional PostgreSQL mode.
async fn transactional(bootstrap: &str, topic: &str, events: u64, url: &str, s: Setting) -> anyhow::Result<Run> {
    let pool = PgPoolOptions::new().max_connections(s.connections as u32).connect(url).await?;
    let clock = Clock::new(events);
    let service =
        Transactional::new(pool.clone(), InsertEffect(clock.clone())).max_batch(s.max_batch).connections(s.connections);
    let counters = service.counters();
    let c = clock.clone();
    consumer(bootstrap, topic, &fresh("dedup-bench-tx"))
        .max_in_flight(s.max_in_flight)
        .service(service)
        .build()?
        .run_until(async move { c.wait(|| counters.claimed() >= events).await })
        .await?;
    pool.close().await;
    Ok(clock.run(None))
}

/// A server setting, as `SHOW` prints it.
async fn show(pool: &PgPool, setting: &str) -> anyhow::Result<String> {
    let (value,): (String,) = sqlx::query_as("SELECT current_setting($1)").bind(setting).fetch_one(pool).await?;
    Ok(value)
}

fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Events/s of each run, slowest first.
fn runs(v: &[Run]) -> String {
    let mut eps: Vec<f64> = v.iter().map(|r| r.events_per_second).collect();
    eps.sort_by(f64::total_cmp);
    eps.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" · ")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = args();
    let bootstrap = bootstrap();
    let topic = fresh("dedup");
    create_topic(&bootstrap, &topic, 12).await?;
    let t = Instant::now();
    load(&bootstrap, &topic, args.events, USERS, 100)?;
    println!(
        "loaded {} events of ~100 B, {USERS} user ids as keys, into 12 partitions of {topic} in {:.1?}",
        args.events,
        t.elapsed()
    );
    let mut results = Vec::new();

    let only = |part: &str| args.only.as_deref().is_none_or(|o| o == part);
    if only("memory") || only("redis") {
        let url = only("redis")
            .then(|| std::env::var("REDIS_URL").expect("REDIS_URL is not set: run with scripts/bench dedup"));
        let (mut base, mut memory, mut redis) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            base.push(no_op(&bootstrap, &topic, args.events, Store::None).await?);
            memory.push(no_op(&bootstrap, &topic, args.events, Store::Memory).await?);
            if let Some(url) = &url {
                redis.push(no_op(&bootstrap, &topic, args.events, Store::Redis(url)).await?);
            }
        }
        let eps = |v: &[Run]| median(v.iter().map(|r| r.events_per_second));
        let cpu = |v: &[Run]| median(v.iter().map(|r| r.cpu_us));
        let (b, m) = (eps(&base), eps(&memory));
        println!("\nno-op handler, Ordering::Key, max_in_flight 256, {} interleaved runs each\n", args.rounds);
        let mut rows = vec![
            vec!["no dedup".into(), format!("{b:.0}"), runs(&base), format!("{:.2}", cpu(&base)), "-".into()],
            vec![
                "dedup, in-memory store".into(),
                format!("{m:.0}"),
                runs(&memory),
                format!("{:.2}", cpu(&memory)),
                "-".into(),
            ],
        ];
        if !redis.is_empty() {
            rows.push(vec![
                "Redis dedup".into(),
                format!("{:.0}", eps(&redis)),
                runs(&redis),
                format!("{:.2}", cpu(&redis)),
                format!("{:.1}", median(redis.iter().filter_map(|r| r.redis_cpu_us))),
            ]);
        }
        table(&["consumer", "events/s (median)", "runs", "CPU µs/event, consumer", "CPU µs/event, Redis"], &rows);
        results.push(format!("RESULT dedup_memory_added_us {:.2}", cpu(&memory) - cpu(&base)));
        results.push(format!("RESULT dedup_memory_ratio {:.3}", m / b));
        if !redis.is_empty() {
            let r = eps(&redis);
            println!("Redis dedup costs {:.1} µs per record (from the medians)", (1.0 / r - 1.0 / b) * 1e6);
            results.push(format!("RESULT dedup_redis_ratio {:.3}", r / b));
        }
    }

    if only("postgres") {
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL is not set: run with scripts/bench dedup");
        let pool = PgPoolOptions::new().max_connections(1).connect(&url).await?;
        PostgresStore::new(pool.clone()).migrate().await?;
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS bench_effects (event_id TEXT, amount BIGINT)").execute(&pool).await?;
        let (sync, fsync) = (show(&pool, "synchronous_commit").await?, show(&pool, "fsync").await?);
        pool.close().await;
        anyhow::ensure!(
            sync == "on" && fsync == "on",
            "commits are not durable: synchronous_commit {sync}, fsync {fsync}"
        );

        let mut measured: Vec<(Setting, Vec<Run>)> = Vec::new();
        for s in SETTINGS {
            measured.push((s, vec![transactional(&bootstrap, &topic, args.events, &url, s).await?]));
        }
        let first = |i: usize| measured[i].1[0].events_per_second;
        let best = (0..measured.len()).max_by(|&a, &b| first(a).total_cmp(&first(b))).expect("settings");
        for _ in 1..args.rounds {
            let run = transactional(&bootstrap, &topic, args.events, &url, measured[best].0).await?;
            measured[best].1.push(run);
        }
        println!(
            "\ntransactional PostgreSQL, one effect row per event, Ordering::Key; \
             SHOW synchronous_commit: {sync}; SHOW fsync: {fsync}\n"
        );
        let rows: Vec<Vec<String>> = measured
            .iter()
            .enumerate()
            .map(|(i, (s, v))| {
                vec![
                    s.max_in_flight.to_string(),
                    s.max_batch.to_string(),
                    s.connections.to_string(),
                    format!(
                        "{:.0}{}",
                        median(v.iter().map(|r| r.events_per_second)),
                        if i == best { " (best)" } else { "" }
                    ),
                    runs(v),
                    format!("{:.1}", median(v.iter().map(|r| r.cpu_us))),
                ]
            })
            .collect();
        table(
            &["max_in_flight", "max_batch", "connections", "events/s (median)", "runs", "CPU µs/event, consumer"],
            &rows,
        );
        let eps = median(measured[best].1.iter().map(|r| r.events_per_second));
        results.push(format!("RESULT dedup_postgres_tx_eps {eps:.0}"));
    }

    println!();
    for line in results {
        println!("{line}");
    }
    Ok(())
}
