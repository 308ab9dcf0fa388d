//! Events/s of the runtime with a no-op handler against a hand-written
//! rdkafka at-least-once loop (store each offset after processing, commits
//! batched by librdkafka), on the same broker and topic, alternating runs.
//! The runtime runs four times a round, each run in a process of its own
//! (subscriber and meter provider are global): plain, with metrics, with
//! tracing (record spans), with both, exporting to an in-memory metric
//! exporter and a span exporter that drops what it gets.
//! Then the peak RSS of a process draining the whole backlog with the runtime.
//!
//! `scripts/bench overhead [--events N] [--rounds R]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use kafka_handler::Consumer;
use kafka_handler_benches::{bootstrap, create_topic, fresh, load, peak_rss_mib, table};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

struct Args {
    events: u64,
    rounds: usize,
    rss_probe: Option<String>,
    instrumented_probe: Option<String>,
    with: Instrumentation,
}

/// What an instrumented run turns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Instrumentation {
    None,
    Metrics,
    Tracing,
    Both,
}

impl Instrumentation {
    fn name(self) -> &'static str {
        match self {
            Instrumentation::None => "none",
            Instrumentation::Metrics => "metrics",
            Instrumentation::Tracing => "tracing",
            Instrumentation::Both => "both",
        }
    }
}

fn args() -> Args {
    let mut a =
        Args { events: 1_000_000, rounds: 3, rss_probe: None, instrumented_probe: None, with: Instrumentation::Both };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--events" => a.events = it.next().and_then(|v| v.parse().ok()).expect("--events N"),
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds R"),
            "--rss-probe" => a.rss_probe = it.next(),
            "--instrumented-probe" => a.instrumented_probe = it.next(),
            "--with" => {
                a.with = match it.next().as_deref() {
                    Some("none") => Instrumentation::None,
                    Some("metrics") => Instrumentation::Metrics,
                    Some("tracing") => Instrumentation::Tracing,
                    _ => Instrumentation::Both,
                }
            }
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

/// The runtime with a no-op handler, its metrics going to `meters` if given.
async fn runtime(bootstrap: &str, topic: &str, events: u64, meters: Option<&SdkMeterProvider>) -> anyhow::Result<f64> {
    let handled = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::OnceLock::new());
    let (h, f) = (handled.clone(), first.clone());
    let mut builder =
        Consumer::builder().from_env().bootstrap_servers(bootstrap).group_id(fresh("runtime")).topic(topic).handler(
            move || {
                f.get_or_init(Instant::now);
                h.fetch_add(1, AtomicOrdering::Relaxed);
                std::future::ready(())
            },
        );
    if let Some(provider) = meters {
        builder = builder.meter_provider(provider);
    }
    let consumer = builder.build()?;
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

/// Drops the spans it is given: what tracing costs the runtime, without the
/// cost of a real exporter's I/O.
#[derive(Debug)]
struct DropSpans;

impl SpanExporter for DropSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

/// Metrics to an in-memory exporter every second, record spans (and the W3C
/// propagator) through the OpenTelemetry layer to [`DropSpans`], as `with`
/// says; errors logged.
fn instrument(with: Instrumentation) -> (SdkMeterProvider, SdkTracerProvider) {
    let meters = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(InMemoryMetricExporter::default()).with_interval(Duration::from_secs(1)).build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = SdkTracerProvider::builder().with_batch_exporter(DropSpans).build();
    let level = match with {
        Instrumentation::None | Instrumentation::Metrics => LevelFilter::OFF,
        Instrumentation::Tracing | Instrumentation::Both => LevelFilter::DEBUG,
    };
    let spans = Targets::new().with_target("kafka_handler::record", level);
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer.tracer("overhead")).with_filter(spans))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(LevelFilter::ERROR))
        .init();
    (meters, tracer)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args();
    let bootstrap = bootstrap();
    if let Some(topic) = args.instrumented_probe {
        let (meters, tracer) = instrument(args.with);
        let metered = matches!(args.with, Instrumentation::Metrics | Instrumentation::Both).then_some(&meters);
        let eps = runtime(&bootstrap, &topic, args.events, metered).await?;
        println!("{eps:.0}");
        meters.shutdown()?;
        tracer.shutdown()?;
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(topic) = args.rss_probe {
        let eps = runtime(&bootstrap, &topic, args.events, None).await?;
        eprintln!("{eps:.0} events/s");
        println!("{:.1}", peak_rss_mib().unwrap_or(f64::NAN));
        return Ok(());
    }

    let topic = fresh("overhead");
    create_topic(&bootstrap, &topic, 12).await?;
    let t = Instant::now();
    load(&bootstrap, &topic, args.events, 10_000, 100)?;
    println!("loaded {} events of ~100 B into 12 partitions of {topic} in {:.1?}", args.events, t.elapsed());

    let exe = std::env::current_exe()?;
    let mut base = Vec::new();
    // The runtime's runs each in a process of their own, alike but for what
    // they turn on: subscriber and meter provider are global.
    let mut runtimes = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let kinds = [Instrumentation::None, Instrumentation::Metrics, Instrumentation::Tracing, Instrumentation::Both];
    for _ in 0..args.rounds {
        let (b, t) = (bootstrap.clone(), topic.clone());
        base.push(tokio::task::spawn_blocking(move || baseline(&b, &t, args.events)).await??);
        for (runs, with) in runtimes.iter_mut().zip(kinds) {
            let probe = std::process::Command::new(&exe)
                .args(["--instrumented-probe", &topic, "--events", &args.events.to_string(), "--with", with.name()])
                .output()?;
            let stderr = String::from_utf8_lossy(&probe.stderr);
            anyhow::ensure!(probe.status.success(), "instrumented run ({}) failed: {stderr}", with.name());
            runs.push(String::from_utf8_lossy(&probe.stdout).trim().parse::<f64>()?);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let b = median(&mut base);
    let [o, m, t, i] = runtimes.each_mut().map(median);

    let probe =
        std::process::Command::new(exe).args(["--rss-probe", &topic, "--events", &args.events.to_string()]).output()?;
    let rss: f64 = String::from_utf8_lossy(&probe.stdout).trim().parse().unwrap_or(f64::NAN);

    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    table(
        &["consumer", "events/s (median)", "runs"],
        &[
            vec!["hand-written rdkafka loop".into(), format!("{b:.0}"), fmt(&base)],
            vec!["kafka-handler, no-op handler".into(), format!("{o:.0}"), fmt(&runtimes[0])],
            vec!["kafka-handler, metrics".into(), format!("{m:.0}"), fmt(&runtimes[1])],
            vec!["kafka-handler, tracing (record spans)".into(), format!("{t:.0}"), fmt(&runtimes[2])],
            vec!["kafka-handler, metrics + tracing".into(), format!("{i:.0}"), fmt(&runtimes[3])],
        ],
    );
    println!("peak RSS draining a {}-event backlog with the runtime: {rss:.1} MiB", args.events);
    println!("RESULT overhead_ratio {:.3}", o / b);
    println!("metrics only: {:.3} of the runtime's throughput; tracing only: {:.3}", m / o, t / o);
    println!("RESULT metrics_overhead_ratio {:.3}", i / o);
    println!("RESULT peak_rss_mb {rss:.1}");
    Ok(())
}
