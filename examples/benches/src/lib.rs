//! What the benchmark programs share: the broker, topics, a fast loader, the
//! table they print.

#![allow(unreachable_pub)]

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};

/// The broker `scripts/bench` started.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .expect("KAFKA_BOOTSTRAP_SERVERS is not set: run benchmarks with scripts/bench NAME")
}

/// A fresh name, so runs never share topics or groups.
pub fn fresh(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Creates a topic and waits for its metadata.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    create_topic_with(bootstrap, topic, partitions, &[]).await
}

/// Creates a topic with the topic-level settings `config` and waits for its
/// metadata.
pub async fn create_topic_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let new = config.iter().fold(NewTopic::new(topic, partitions, TopicReplication::Fixed(1)), |t, (k, v)| t.set(k, v));
    for r in admin.create_topics([&new], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }
    for _ in 0..300 {
        let md = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(5))?;
        if md.topics().first().is_some_and(|t| t.partitions().len() == partitions as usize) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("topic {topic} not ready")
}

/// Loads `count` JSON events of about `size` bytes, keyed over `keys` keys,
/// as fast as librdkafka batches them.
pub fn load(bootstrap: &str, topic: &str, count: u64, keys: u64, size: usize) -> anyhow::Result<()> {
    load_with_headers(bootstrap, topic, count, keys, size, |_| None)
}

/// Like [`load`], the `i`th event with the headers `headers(i)` gives it.
pub fn load_with_headers(
    bootstrap: &str,
    topic: &str,
    count: u64,
    keys: u64,
    size: usize,
    mut headers: impl FnMut(u64) -> Option<rdkafka::message::OwnedHeaders>,
) -> anyhow::Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    let pad = "x".repeat(size.saturating_sub(60));
    for i in 0..count {
        let key = format!("k{}", i % keys);
        let payload = format!(r#"{{"eventId":"{i:016}","key":"{key}","seq":{},"p":"{pad}"}}"#, i / keys);
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
        if let Some(headers) = headers(i) {
            record = record.headers(headers);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Prints a table with a header row.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).chain([header[c].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.to_vec());
    println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Peak resident memory of this process, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time this process has used so far (user and system, all threads), in
/// seconds; Linux `/proc/self/stat`, at its 10 ms resolution.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses: state is
    // field 3, utime and stime are fields 14 and 15, in clock ticks (100/s).
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let (user, system): (f64, f64) = (fields.next()?.parse().ok()?, fields.next()?.parse().ok()?);
    Some((user + system) / 100.0)
}
