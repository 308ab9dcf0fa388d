//! `kafka-handler dlt list | show | replay`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::middleware::dead_letter::{headers as dlt, redrive_topic};
use crate::middleware::retry_topic::headers as retry;
use crate::{Error, Outgoing, Producer};

#[derive(Subcommand, Debug)]
pub(super) enum DltCommand {
    /// Lists dead letters, one line each.
    List {
        #[command(flatten)]
        filter: Filter,
    },
    /// Shows one dead letter: provenance, headers and payload.
    Show {
        /// The dead-letter topic.
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        #[arg(long)]
        offset: i64,
    },
    /// Sends dead letters back to the group that failed them, and to no other.
    /// The payload is unchanged, so the event id is kept and deduplication
    /// makes a second replay harmless.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Only print what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// At most this many records per second (0: no limit).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
    },
}

/// Which dead letters a command takes.
#[derive(Args, Debug, Clone)]
pub(super) struct Filter {
    /// The dead-letter topic, e.g. `order.created.dlt`.
    #[arg(long)]
    topic: String,
    /// Only dead letters of this consumer group.
    #[arg(long)]
    group: Option<String>,
    /// Only this error kind: decode, tombstone, event-id, panic, retries-exhausted, permanent.
    #[arg(long)]
    kind: Option<String>,
    /// Only records with this key.
    #[arg(long)]
    key: Option<String>,
    /// Only dead letters written since: ms since the epoch, or an age such as `90s`, `15m`, `2h`, `3d`.
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Only dead letters written until (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// At most this many.
    #[arg(long)]
    limit: Option<usize>,
}

fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| format!("`{s}`: expected ms since the epoch or an age like 15m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    Ok(now_millis() - secs * 1000)
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A dead letter as read back.
struct DeadLetter {
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Bytes>,
    payload: Option<Bytes>,
    headers: Vec<(String, Option<Bytes>)>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn matches(&self, f: &Filter) -> bool {
        let eq = |want: &Option<String>, got: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == got);
        eq(&f.group, self.header(dlt::GROUP))
            && eq(&f.kind, self.header(dlt::ERROR_KIND))
            && f.key.as_deref().is_none_or(|k| self.key.as_deref() == Some(k.as_bytes()))
            && f.since.is_none_or(|t| self.timestamp.is_some_and(|ts| ts >= t))
            && f.until.is_none_or(|t| self.timestamp.is_some_and(|ts| ts <= t))
    }
}

/// Reads `topic` from the start to its end as of now.
fn read(bootstrap: &str, topic: &str, mut keep: impl FnMut(DeadLetter) -> bool) -> Result<(), Error> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kafka-handler-cli")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> =
        metadata.topics().first().map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
    if partitions.is_empty() {
        return Err(Error::Config(format!("topic {topic} does not exist")));
    }
    let mut ends = std::collections::HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
        }
    }
    consumer.assign(&tpl)?;
    while !ends.is_empty() {
        // Nothing for a while: the rest up to the end were transaction markers.
        let Some(message) = consumer.poll(Duration::from_secs(5)) else {
            break;
        };
        let m = message?;
        if ends.get(&m.partition()).is_some_and(|&end| m.offset() + 1 >= end) {
            ends.remove(&m.partition());
        }
        let headers = m
            .headers()
            .map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice))).collect())
            .unwrap_or_default();
        let letter = DeadLetter {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(Bytes::copy_from_slice),
            payload: m.payload().map(Bytes::copy_from_slice),
            headers,
        };
        if !keep(letter) {
            break;
        }
    }
    Ok(())
}

fn matching(bootstrap: &str, filter: &Filter) -> Result<Vec<DeadLetter>, Error> {
    let mut found = Vec::new();
    read(bootstrap, &filter.topic, |letter| {
        if letter.matches(filter) {
            found.push(letter);
        }
        filter.limit.is_none_or(|limit| found.len() < limit)
    })?;
    Ok(found)
}

fn line(l: &DeadLetter) -> String {
    let h = |name| l.header(name).unwrap_or("-");
    format!(
        "{}@{}  from {}[{}]@{}  group={}  kind={}  attempts={}  key={}  {}",
        l.partition,
        l.offset,
        h(dlt::ORIGINAL_TOPIC),
        h(dlt::ORIGINAL_PARTITION),
        h(dlt::ORIGINAL_OFFSET),
        h(dlt::GROUP),
        h(dlt::ERROR_KIND),
        h(dlt::ATTEMPTS),
        l.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default(),
        h(dlt::ERROR_MESSAGE),
    )
}

pub(super) async fn run(bootstrap: &str, command: DltCommand) -> Result<(), Error> {
    match command {
        DltCommand::List { filter } => {
            let found = matching(bootstrap, &filter)?;
            for l in &found {
                println!("{}", line(l));
            }
            eprintln!("{} dead letters", found.len());
        }
        DltCommand::Show { topic, partition, offset } => {
            let mut found = None;
            read(bootstrap, &topic, |l| {
                if (l.partition, l.offset) == (partition, offset) {
                    found = Some(l);
                    return false;
                }
                true
            })?;
            let l = found.ok_or_else(|| Error::Config(format!("no dead letter at {topic}[{partition}]@{offset}")))?;
            println!("{}", line(&l));
            for (name, value) in &l.headers {
                println!("  {name}: {}", value.as_deref().map(String::from_utf8_lossy).unwrap_or("(null)".into()));
            }
            match l.payload.as_deref() {
                Some(p) => println!("{}", String::from_utf8_lossy(p)),
                None => println!("(no payload)"),
            }
        }
        DltCommand::Replay { filter, dry_run, rate } => replay(bootstrap, &filter, dry_run, rate).await?,
    }
    Ok(())
}

async fn replay(bootstrap: &str, filter: &Filter, dry_run: bool, rate: f64) -> Result<(), Error> {
    let found = matching(bootstrap, filter)?;
    if dry_run {
        for l in &found {
            println!("would replay {}", line(l));
        }
        eprintln!("{} dead letters would be replayed", found.len());
        return Ok(());
    }
    let producer = Producer::builder().bootstrap_servers(bootstrap).build()?;
    let progress = indicatif::ProgressBar::new(found.len() as u64);
    let mut pace = (rate > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / rate)));
    let mut replayed = 0;
    for l in &found {
        let (Some(topic), Some(group)) = (l.header(dlt::ORIGINAL_TOPIC), l.header(dlt::GROUP)) else {
            progress.println(format!("skipping {}@{}: no provenance headers", l.partition, l.offset));
            continue;
        };
        if l.header(dlt::PAYLOAD_DROPPED).is_some() {
            progress.println(format!("skipping {}@{}: its payload was too large to keep", l.partition, l.offset));
            continue;
        }
        if let Some(pace) = pace.as_mut() {
            pace.tick().await;
        }
        producer.send(redrive(l, topic, group)).await?;
        replayed += 1;
        progress.inc(1);
    }
    progress.finish_and_clear();
    eprintln!("replayed {replayed} of {} dead letters", found.len());
    Ok(())
}

/// The dead letter as the failing group will read it again: original key,
/// value and headers, and where it first was, so a new failure keeps that
/// provenance.
fn redrive(l: &DeadLetter, topic: &str, group: &str) -> Outgoing {
    let mut out = Outgoing::from_parts(redrive_topic(topic, group), l.key.clone(), l.payload.clone());
    for (name, value) in l.headers.iter().filter(|(n, _)| !n.starts_with("dlt.") && !n.starts_with("retry.")) {
        out = out.raw_header(name.clone(), value.clone());
    }
    let h = |name| l.header(name).unwrap_or_default().to_owned();
    out = out
        .header(retry::ORIGINAL_TOPIC, topic.to_owned())
        .header(retry::ORIGINAL_PARTITION, h(dlt::ORIGINAL_PARTITION))
        .header(retry::ORIGINAL_OFFSET, h(dlt::ORIGINAL_OFFSET));
    if let Some(ts) = l.header(dlt::ORIGINAL_TIMESTAMP) {
        out = out.header(retry::ORIGINAL_TIMESTAMP, ts.to_owned());
    }
    out
}
