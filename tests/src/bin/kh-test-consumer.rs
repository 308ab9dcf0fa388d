//! A consumer process for tests that kill, stop and scale consumers: it
//! handles test events and appends each to a log file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kafka_handler::dedup::DedupCounters;
use kafka_handler::extract::{Json, Metadata};
use kafka_handler::{Consumer, HandlerError, Ordering, Producer};
use kafka_handler_tests::events::{TestEvent, append};
use kafka_handler_tests::stores::{self, Mode, TxService};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    bootstrap: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    log: PathBuf,
    #[arg(long, value_enum, default_value = "partition")]
    ordering: OrderingArg,
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
    /// How long each handler call takes.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// `classic` (cooperative-sticky) or `consumer` (KIP-848).
    #[arg(long, default_value = "classic")]
    group_protocol: String,
    /// Events whose sequence number is a multiple of this fail permanently
    /// and go to the dead-letter topic (0: none fail).
    #[arg(long, default_value_t = 0)]
    fail_every: u64,
    /// Dedup mode; in the transactional modes the effect is a database row
    /// instead of a log line.
    #[arg(long, value_enum, default_value = "none")]
    dedup: Mode,
    /// The SQLite file of the SQLite modes.
    #[arg(long, default_value = "dedup.sqlite")]
    sqlite: PathBuf,
    /// `auto.commit.interval.ms` (0: the runtime's default).
    #[arg(long, default_value_t = 0)]
    commit_interval_ms: u64,
    /// Writes the dedup counters (`claimed hits waits store_errors`) here.
    #[arg(long)]
    stats: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OrderingArg {
    Partition,
    Key,
    Unordered,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let ordering = match args.ordering {
        OrderingArg::Partition => Ordering::Partition,
        OrderingArg::Key => Ordering::Key,
        OrderingArg::Unordered => Ordering::Unordered,
    };
    let log = args.log.clone();
    let delay = Duration::from_millis(args.delay_ms);
    let fail_every = args.fail_every;
    let handler = move |meta: Metadata, Json(event): Json<TestEvent>| {
        let log = log.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fail_every > 0 && event.seq % fail_every == 0 {
                return Err(HandlerError::permanent("rejected by the test"));
            }
            append(&log, &event, meta.partition, meta.offset);
            Ok(())
        }
    };
    let mut builder = Consumer::builder()
        .bootstrap_servers(&args.bootstrap)
        .group_id(args.group)
        .topic(args.topic)
        .ordering(ordering)
        .max_in_flight(args.max_in_flight);
    let counters: Arc<DedupCounters> = if let Some(tx) = TxService::new(args.dedup, &args.sqlite).await {
        let counters = tx.counters();
        builder = match tx {
            TxService::Postgres(s) => builder.service(s),
            TxService::Sqlite(s) => builder.service(s),
        };
        counters
    } else {
        builder = builder.handler(handler);
        match stores::layer(args.dedup, &args.sqlite).await {
            Some(layer) => {
                let counters = layer.counters();
                builder = builder.dedup(layer);
                counters
            }
            None => Arc::default(),
        }
    };
    if let Some(path) = args.stats.clone() {
        tokio::spawn(async move {
            loop {
                let c = &counters;
                let line = format!("{} {} {} {}\n", c.claimed(), c.hits(), c.waits(), c.store_errors());
                let tmp = path.with_extension("tmp");
                if std::fs::write(&tmp, line).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    if args.commit_interval_ms > 0 {
        builder = builder.set("auto.commit.interval.ms", args.commit_interval_ms.to_string());
    }
    if fail_every > 0 {
        let producer = Producer::builder().bootstrap_servers(&args.bootstrap).build()?;
        builder = builder.dead_letter(producer);
    }
    if args.group_protocol == "consumer" {
        builder = builder.set("group.protocol", "consumer");
    } else {
        builder = builder.set("session.timeout.ms", "10000").set("heartbeat.interval.ms", "1000");
    }
    builder.build()?.run().await?;
    eprintln!("kh-test-consumer: stopped cleanly");
    Ok(())
}
