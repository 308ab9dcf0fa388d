//! Events/s of the runtime with a no-op handler against a hand-written
//! rdkafka at-least-once loop (store each offset after processing, commits
//! batched by librdkafka), on the same broker and topic, alternating runs.
//! The loop runs twice a round: with librdkafka's defaults, and with the
//! fetch settings the runtime uses by default; `overhead_ratio` compares
//! with the latter, so that it measures the runtime's own cost.
//! The runtime runs several times a round, each run in a process of its own
//! (subscriber and meter provider are global): plain, with metrics, with
//! tracing (record spans) and with both, exporting to an in-memory metric
//! exporter and a span exporter that drops what it gets. Tracing runs twice
//! over: every record sampled (`AlwaysOn`, records without trace context),
//! and head sampling at 1 % (`ParentBased(TraceIdRatioBased(0.01))`) on a
//! second topic whose records carry the `traceparent` a producer sampling
//! 1 % writes, with a plain run on that topic to compare with; and the 1 %
//! sampler on records without trace context, where each record is a root;
//! and every record sampled on a third topic whose records each carry a
//! sampled `traceparent`. The tracer provider is also the global one, as in
//! a service. Then the peak RSS of a process draining the whole backlog.
//!
//! Besides throughput, each instrumented row's cost in absolute terms: the
//! CPU time per record of its process minus that of the plain run on the
//! same topic (`RESULT metrics_ns_per_record`,
//! `trace_unsampled_ns_per_record`: the worse of the 1 % rows, traced topic
//! and roots; `trace_sampled_us_per_record`: the worse of roots and
//! children of a sampled context).
//!
//! `scripts/bench overhead [--events N] [--rounds R]`; to profile one side
//! on a loaded topic: `overhead --baseline-probe TOPIC` (the tuned loop),
//! `overhead --instrumented-probe TOPIC --with none` (the runtime).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use kafka_handler::Consumer;
use kafka_handler_benches::{bootstrap, create_topic, fresh, load, load_with_headers, peak_rss_mib, table};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

struct Args {
    events: u64,
    rounds: usize,
    rss_probe: Option<String>,
    baseline_probe: Option<String>,
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
    /// Tracing with head sampling at 1 %, parent-based.
    TracingSampled,
    /// Metrics, and tracing with head sampling at 1 %, parent-based.
    BothSampled,
}

impl Instrumentation {
    const ALL: [Instrumentation; 6] = [
        Instrumentation::None,
        Instrumentation::Metrics,
        Instrumentation::Tracing,
        Instrumentation::Both,
        Instrumentation::TracingSampled,
        Instrumentation::BothSampled,
    ];

    fn name(self) -> &'static str {
        match self {
            Instrumentation::None => "none",
            Instrumentation::Metrics => "metrics",
            Instrumentation::Tracing => "tracing",
            Instrumentation::Both => "both",
            Instrumentation::TracingSampled => "tracing-1pct",
            Instrumentation::BothSampled => "both-1pct",
        }
    }

    fn metrics(self) -> bool {
        matches!(self, Instrumentation::Metrics | Instrumentation::Both | Instrumentation::BothSampled)
    }

    fn tracing(self) -> bool {
        !matches!(self, Instrumentation::None | Instrumentation::Metrics)
    }

    /// The sampler of the application's tracer provider.
    fn sampler(self) -> Sampler {
        match self {
            Instrumentation::TracingSampled | Instrumentation::BothSampled => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(SAMPLED)))
            }
            _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        }
    }
}

/// The head-sampling ratio of the sampled rows, and of the producer that
/// wrote the traced topic.
const SAMPLED: f64 = 0.01;

fn args() -> Args {
    let mut a = Args {
        events: 1_000_000,
        rounds: 3,
        rss_probe: None,
        baseline_probe: None,
        instrumented_probe: None,
        with: Instrumentation::Both,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--events" => a.events = it.next().and_then(|v| v.parse().ok()).expect("--events N"),
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds R"),
            "--rss-probe" => a.rss_probe = it.next(),
            "--baseline-probe" => a.baseline_probe = it.next(),
            "--instrumented-probe" => a.instrumented_probe = it.next(),
            "--with" => {
                let name = it.next().expect("--with NAME");
                a.with = *Instrumentation::ALL.iter().find(|i| i.name() == name).expect("--with: unknown name");
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// The baseline: what a careful team writes by hand.
/// With `tuned`, it fetches as the runtime does by default
/// (`fetch.queue.backoff.ms=10`, `fetch.wait.max.ms=100`,
/// `queued.max.messages.kbytes=32768`); otherwise with librdkafka's defaults.
fn baseline(bootstrap: &str, topic: &str, events: u64, tuned: bool) -> anyhow::Result<f64> {
    let mut config = ClientConfig::new();
    if tuned {
        config
            .set("fetch.queue.backoff.ms", "10")
            .set("fetch.wait.max.ms", "100")
            .set("queued.max.messages.kbytes", "32768");
    }
    let consumer: BaseConsumer = config
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
/// propagator) through the OpenTelemetry layer to [`DropSpans`] with the
/// sampler `with` says, as `with` says; errors logged. Without tracing, no
/// propagator is set, so the runtime does not read trace context.
fn instrument(with: Instrumentation) -> (SdkMeterProvider, SdkTracerProvider) {
    let meters = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(InMemoryMetricExporter::default()).with_interval(Duration::from_secs(1)).build(),
        )
        .build();
    // Trace context is read only where it is asked for: rows without tracing
    // run as a service that does not trace, with no propagator.
    if with.tracing() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    let tracer = SdkTracerProvider::builder().with_sampler(with.sampler()).with_batch_exporter(DropSpans).build();
    // As a service does: the runtime asks the global provider's sampler about
    // records without trace context before it makes their spans.
    if with.tracing() {
        opentelemetry::global::set_tracer_provider(tracer.clone());
    }
    let level = if with.tracing() { LevelFilter::DEBUG } else { LevelFilter::OFF };
    let spans = Targets::new().with_target("kafka_handler::record", level);
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer.tracer("overhead")).with_filter(spans))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(LevelFilter::ERROR))
        .init();
    (meters, tracer)
}

/// Loads `count` events like [`load`]'s, each with the `traceparent` of a
/// producer that samples `ratio` of its traces: a fresh trace per event,
/// the sampled flag on one in `1 / ratio`.
fn load_traced(bootstrap: &str, topic: &str, count: u64, ratio: f64) -> anyhow::Result<()> {
    let every = (1.0 / ratio) as u64;
    load_with_headers(bootstrap, topic, count, 10_000, 100, |i| {
        let ids = uuid::Uuid::new_v4().as_u128();
        let flags = if i % every == 0 { "01" } else { "00" };
        let traceparent = format!("00-{:032x}-{:016x}-{flags}", ids, (ids as u64) | 1);
        Some(OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(&traceparent) }))
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args();
    let bootstrap = bootstrap();
    if let Some(topic) = args.instrumented_probe {
        let (meters, tracer) = instrument(args.with);
        let metered = args.with.metrics().then_some(&meters);
        let cpu = cpu_seconds();
        let eps = runtime(&bootstrap, &topic, args.events, metered).await?;
        let cpu_us = (cpu_seconds() - cpu) * 1e6 / args.events as f64;
        println!("{eps:.0} {cpu_us:.2}");
        meters.shutdown()?;
        tracer.shutdown()?;
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(topic) = args.baseline_probe {
        // The tuned loop alone in this process, to profile it.
        let cpu = cpu_seconds();
        let eps = baseline(&bootstrap, &topic, args.events, true)?;
        let cpu_us = (cpu_seconds() - cpu) * 1e6 / args.events as f64;
        println!("{eps:.0} {cpu_us:.2}");
        return Ok(());
    }
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
    let traced = fresh("overhead-traced");
    create_topic(&bootstrap, &traced, 12).await?;
    let t = Instant::now();
    load_traced(&bootstrap, &traced, args.events, SAMPLED)?;
    println!("loaded the same with a traceparent each (1 % sampled) into {traced} in {:.1?}", t.elapsed());
    let sampled = fresh("overhead-sampled");
    create_topic(&bootstrap, &sampled, 12).await?;
    let t = Instant::now();
    load_traced(&bootstrap, &sampled, args.events, 1.0)?;
    println!("loaded the same with a sampled traceparent each into {sampled} in {:.1?}", t.elapsed());

    let exe = std::env::current_exe()?;
    let (mut base, mut tuned) = (Vec::new(), Vec::new());
    // The runtime's runs each in a process of their own, alike but for what
    // they turn on and the topic they read: subscriber and meter provider
    // are global.
    let rows: [(&str, &str, Instrumentation); 10] = [
        ("kafka-handler, no-op handler", &topic, Instrumentation::None),
        ("kafka-handler, metrics", &topic, Instrumentation::Metrics),
        ("kafka-handler, tracing, every record sampled", &topic, Instrumentation::Tracing),
        ("kafka-handler, metrics + tracing, every record sampled", &topic, Instrumentation::Both),
        ("kafka-handler, no-op handler, traced topic", &traced, Instrumentation::None),
        ("kafka-handler, tracing, 1 % sampled, traced topic", &traced, Instrumentation::TracingSampled),
        ("kafka-handler, metrics + tracing, 1 % sampled, traced topic", &traced, Instrumentation::BothSampled),
        ("kafka-handler, tracing, 1 % sampler, no trace context (roots)", &topic, Instrumentation::TracingSampled),
        ("kafka-handler, metrics + tracing, 1 % sampler, no trace context", &topic, Instrumentation::BothSampled),
        ("kafka-handler, tracing, every record sampled, sampled trace context", &sampled, Instrumentation::Tracing),
    ];
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); rows.len()];
    for _ in 0..args.rounds {
        let (b, t) = (bootstrap.clone(), topic.clone());
        base.push(tokio::task::spawn_blocking(move || baseline(&b, &t, args.events, false)).await??);
        let (b, t) = (bootstrap.clone(), topic.clone());
        tuned.push(tokio::task::spawn_blocking(move || baseline(&b, &t, args.events, true)).await??);
        for (runs, (_, topic, with)) in runs.iter_mut().zip(&rows) {
            let probe = std::process::Command::new(&exe)
                .args(["--instrumented-probe", topic, "--events", &args.events.to_string(), "--with", with.name()])
                .output()?;
            let stderr = String::from_utf8_lossy(&probe.stderr);
            anyhow::ensure!(probe.status.success(), "instrumented run ({}) failed: {stderr}", with.name());
            let stdout = String::from_utf8_lossy(&probe.stdout);
            let mut fields = stdout.split_whitespace().map(str::parse::<f64>);
            let (Some(Ok(eps)), Some(Ok(cpu))) = (fields.next(), fields.next()) else {
                anyhow::bail!("instrumented run ({}) printed {stdout:?}", with.name());
            };
            runs.push((eps, cpu));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let b = median(base.clone());
    let bt = median(tuned.clone());
    let eps: Vec<f64> = runs.iter().map(|r| median(r.iter().map(|x| x.0).collect())).collect();
    let cpu: Vec<f64> = runs.iter().map(|r| median(r.iter().map(|x| x.1).collect())).collect();

    let probe =
        std::process::Command::new(exe).args(["--rss-probe", &topic, "--events", &args.events.to_string()]).output()?;
    let rss: f64 = String::from_utf8_lossy(&probe.stdout).trim().parse().unwrap_or(f64::NAN);

    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    let mut table_rows = vec![
        vec!["hand-written rdkafka loop, librdkafka's defaults".into(), format!("{b:.0}"), "".into(), fmt(&base)],
        vec![
            "hand-written rdkafka loop, the runtime's fetch settings".into(),
            format!("{bt:.0}"),
            "".into(),
            fmt(&tuned),
        ],
    ];
    for (i, (name, _, _)) in rows.iter().enumerate() {
        let these: Vec<f64> = runs[i].iter().map(|x| x.0).collect();
        table_rows.push(vec![(*name).into(), format!("{:.0}", eps[i]), format!("{:.2}", cpu[i]), fmt(&these)]);
    }
    table(&["consumer", "events/s (median)", "CPU µs/event (median)", "runs"], &table_rows);
    println!("peak RSS draining a {}-event backlog with the runtime: {rss:.1} MiB", args.events);
    // Against the loop given the same fetch settings: the runtime's own
    // cost, not its defaults.
    println!("against the loop with librdkafka's defaults: {:.3}", eps[0] / b);
    println!("RESULT overhead_ratio {:.3}", eps[0] / bt);
    println!(
        "every record sampled: metrics only {:.3}, tracing only {:.3}, metrics + tracing {:.3} of the runtime's throughput",
        eps[1] / eps[0],
        eps[2] / eps[0],
        eps[3] / eps[0]
    );
    println!(
        "1 % sampled (traced topic, against the plain run on it): tracing only {:.3}, metrics + tracing {:.3}",
        eps[5] / eps[4],
        eps[6] / eps[4]
    );
    // Throughput hides a cost where the runs are not CPU-bound; CPU time
    // per record does not.
    println!(
        "CPU per record, plain ÷ instrumented: every record sampled {:.3}, 1 % sampled {:.3}, 1 % sampler on roots {:.3}",
        cpu[0] / cpu[3],
        cpu[4] / cpu[6],
        cpu[0] / cpu[8]
    );
    println!(
        "1 % sampler, records without trace context: tracing only {:.3}, metrics + tracing {:.3}",
        eps[7] / eps[0],
        eps[8] / eps[0]
    );
    // In absolute terms: CPU time per record of the instrumented run minus
    // that of the plain run on the same topic.
    let ns = |with: usize, plain: usize| (cpu[with] - cpu[plain]) * 1000.0;
    println!(
        "CPU ns per record added: metrics {:.0}; tracing, every record sampled {:.0}; \
         tracing at 1 %, traced topic {:.0}, roots {:.0}; metrics + tracing at 1 %, traced topic {:.0}, roots {:.0}",
        ns(1, 0),
        ns(2, 0),
        ns(5, 4),
        ns(7, 0),
        ns(6, 4),
        ns(8, 0)
    );
    println!("RESULT metrics_ns_per_record {:.0}", ns(1, 0));
    // The worse of the two ways a record goes unsampled: its producer did
    // not sample its trace, or it starts one the sampler drops.
    println!("RESULT trace_unsampled_ns_per_record {:.0}", ns(5, 4).max(ns(7, 0)));
    // A sampled record's span: a root's, and a child's of the producer's
    // span (against the plain run on the traced topic: the same headers).
    println!(
        "CPU µs per sampled record added: roots {:.2}, children of a sampled trace context {:.2}",
        cpu[2] - cpu[0],
        cpu[9] - cpu[4]
    );
    println!("RESULT trace_sampled_us_per_record {:.2}", (cpu[2] - cpu[0]).max(cpu[9] - cpu[4]));
    // What a production service runs: traces sampled at the head (1 %),
    // the consumers following the producer's decision; against the plain
    // runtime on the same records.
    println!("RESULT metrics_overhead_ratio {:.3}", eps[6] / eps[4]);
    println!("RESULT peak_rss_mb {rss:.1}");
    Ok(())
}

/// CPU time (user + system) this process has used, in seconds.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th of them, in clock ticks (100 a second).
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<f64>().ok()).sum();
    ticks / 100.0
}
