//! Events/s of the runtime with a no-op handler against a hand-written
//! rdkafka at-least-once loop (store each offset after processing, commits
//! batched by librdkafka), on the same broker and topic, alternating runs.
//! Then the peak RSS of a process draining the whole backlog with the runtime.
//!
//! `scripts/bench overhead [--events N] [--rounds R]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use kafka_handler::Consumer;
use kafka_handler_benches::{bootstrap, create_topic, fresh, load, peak_rss_mib, table};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

struct Args {
    events: u64,
    rounds: usize,
    rss_probe: Option<String>,
}

fn args() -> Args {
    let mut a = Args { events: 1_000_000, rounds: 3, rss_probe: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--events" => a.events = it.next().and_then(|v| v.parse().ok()).expect("--events N"),
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds R"),
            "--rss-probe" => a.rss_probe = it.next(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// The baseline: what a careful team writes by hand.
fn baseline(bootstrap: &str, topic: &str, events: u64) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", fresh("baseline"))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut seen = 0u64;
    let mut start = None;
    while seen < events {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            start.get_or_insert_with(Instant::now);
            std::hint::black_box(&message);
            consumer.store_offset_from_message(&message)?;
            seen += 1;
        }
    }
    Ok(events as f64 / start.expect("received").elapsed().as_secs_f64())
}

/// The runtime with a no-op handler.
async fn runtime(bootstrap: &str, topic: &str, events: u64) -> anyhow::Result<f64> {
    let handled = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::OnceLock::new());
    let (h, f) = (handled.clone(), first.clone());
    let consumer = Consumer::builder()
        .from_env()
        .bootstrap_servers(bootstrap)
        .group_id(fresh("runtime"))
        .topic(topic)
        .handler(move || {
            f.get_or_init(Instant::now);
            h.fetch_add(1, AtomicOrdering::Relaxed);
            std::future::ready(())
        })
        .build()?;
    let h = handled.clone();
    consumer
        .run_until(async move {
            while h.load(AtomicOrdering::Relaxed) < events {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await?;
    let start = *first.get().expect("received");
    Ok(events as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = args();
    let bootstrap = bootstrap();
    if let Some(topic) = args.rss_probe {
        let eps = runtime(&bootstrap, &topic, args.events).await?;
        eprintln!("{eps:.0} events/s");
        println!("{:.1}", peak_rss_mib().unwrap_or(f64::NAN));
        return Ok(());
    }

    let topic = fresh("overhead");
    create_topic(&bootstrap, &topic, 12).await?;
    let t = Instant::now();
    load(&bootstrap, &topic, args.events, 10_000, 100)?;
    println!("loaded {} events of ~100 B into 12 partitions of {topic} in {:.1?}", args.events, t.elapsed());

    let mut base = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..args.rounds {
        let (b, t) = (bootstrap.clone(), topic.clone());
        base.push(tokio::task::spawn_blocking(move || baseline(&b, &t, args.events)).await??);
        ours.push(runtime(&bootstrap, &topic, args.events).await?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, o) = (median(&mut base), median(&mut ours));

    let exe = std::env::current_exe()?;
    let probe =
        std::process::Command::new(exe).args(["--rss-probe", &topic, "--events", &args.events.to_string()]).output()?;
    let rss: f64 = String::from_utf8_lossy(&probe.stdout).trim().parse().unwrap_or(f64::NAN);

    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    table(
        &["consumer", "events/s (median)", "runs"],
        &[
            vec!["hand-written rdkafka loop".into(), format!("{b:.0}"), fmt(&base)],
            vec!["kafka-handler, no-op handler".into(), format!("{o:.0}"), fmt(&ours)],
        ],
    );
    println!("peak RSS draining a {}-event backlog with the runtime: {rss:.1} MiB", args.events);
    println!("RESULT overhead_ratio {:.3}", o / b);
    println!("RESULT peak_rss_mb {rss:.1}");
    Ok(())
}
