//! Test events and the handled-event log that proves the invariants.
//!
//! Every test event carries a key and a per-key sequence number. A consumer
//! appends one line per handled event to a log file (`O_APPEND`, one `write`
//! per line, so lines of concurrent processes never interleave and the file
//! order is the order in which handling finished). Tests then count:
//! missing events, duplicated effects, and per-key order.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use kafka_handler::{Outgoing, Producer};
use serde::{Deserialize, Serialize};

/// The payload of every test event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TestEvent {
    pub event_id: String,
    pub key: String,
    pub seq: u64,
}

/// Produces `count` events spread over `keys` keys, in per-key sequence,
/// starting at global index `start` (so several batches continue each key).
pub async fn produce(producer: &Producer, topic: &str, keys: u64, start: u64, count: u64) {
    let mut pending = futures::stream::FuturesOrdered::new();
    use futures::StreamExt;
    for i in start..start + count {
        let event =
            TestEvent { event_id: uuid::Uuid::new_v4().to_string(), key: format!("k{}", i % keys), seq: i / keys };
        let record = Outgoing::json(topic, &event).expect("encode").key(event.key.clone());
        let producer = producer.clone();
        pending.push_back(async move { producer.send(record).await });
        if pending.len() >= 2_000 {
            pending.next().await.expect("pending").expect("produce");
        }
    }
    while let Some(r) = pending.next().await {
        r.expect("produce");
    }
}

/// The expected (key, seq) pairs for `count` events over `keys` keys.
pub fn expected(keys: u64, count: u64) -> HashSet<(String, u64)> {
    (0..count).map(|i| (format!("k{}", i % keys), i / keys)).collect()
}

/// Appends one handled event to the log.
pub fn append(log: &Path, event: &TestEvent, partition: i32, offset: i64) {
    let line = format!("{} {} {} {} {}\n", event.key, event.seq, partition, offset, std::process::id());
    let mut f = OpenOptions::new().create(true).append(true).open(log).expect("open log");
    f.write_all(line.as_bytes()).expect("write log");
}

/// One line of the log.
#[derive(Clone, Debug)]
pub struct Handled {
    pub key: String,
    pub seq: u64,
    pub partition: i32,
    pub offset: i64,
    pub pid: u32,
}

/// Reads the log (missing file: empty).
pub fn read_log(log: &Path) -> Vec<Handled> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some(Handled {
                key: it.next()?.to_owned(),
                seq: it.next()?.parse().ok()?,
                partition: it.next()?.parse().ok()?,
                offset: it.next()?.parse().ok()?,
                pid: it.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The counted invariants of one run.
#[derive(Debug, Default)]
pub struct Tally {
    /// Events produced that were never handled.
    pub missing: usize,
    /// Handled more than once (extra executions of the effect).
    pub duplicated: usize,
    /// Times a key's event was handled before an earlier event of that key
    /// had been handled at least once.
    pub order_violations: usize,
    /// Distinct events handled.
    pub handled: usize,
    /// Handled events that were never produced.
    pub unexpected: usize,
}

/// Counts missing, duplicated, unexpected and out-of-order events.
pub fn tally(expected: &HashSet<(String, u64)>, log: &[Handled]) -> Tally {
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    // Per key: the highest seq below which every seq was handled at least once.
    let mut contiguous: HashMap<&str, u64> = HashMap::new();
    let mut per_key_seen: HashMap<&str, HashSet<u64>> = HashMap::new();
    let mut t = Tally::default();
    for h in log {
        *seen.entry((h.key.clone(), h.seq)).or_default() += 1;
        let next = contiguous.entry(&h.key).or_insert(0);
        if h.seq > *next {
            t.order_violations += 1;
        }
        let set = per_key_seen.entry(&h.key).or_default();
        set.insert(h.seq);
        while set.contains(next) {
            *next += 1;
        }
    }
    t.handled = seen.keys().filter(|k| expected.contains(*k)).count();
    t.unexpected = seen.keys().filter(|k| !expected.contains(*k)).count();
    t.missing = expected.len() - t.handled;
    t.duplicated = seen.values().map(|&n| n - 1).sum();
    t
}

/// Waits until `done` holds for the log, or fails with the last tally.
pub async fn wait_for(log: &Path, timeout: Duration, mut done: impl FnMut(&[Handled]) -> bool) -> Vec<Handled> {
    let deadline = Instant::now() + timeout;
    loop {
        let entries = read_log(log);
        if done(&entries) {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} with {} log lines in {}",
            entries.len(),
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Distinct events in the log.
pub fn distinct(log: &[Handled]) -> usize {
    log.iter().map(|h| (&h.key, h.seq)).collect::<HashSet<_>>().len()
}

/// Reads every record of `topic`, from the start to its end as of now.
pub fn read_records(bootstrap: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kh-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).expect("watermarks");
        remaining += high - low;
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while remaining > 0 && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            remaining -= 1;
            records.push(m.detach());
        }
    }
    records
}

/// Reads every test event in `topic`, from the start to the current end.
pub async fn read_topic(bootstrap: &str, topic: &str) -> Vec<TestEvent> {
    use rdkafka::Message as _;
    read_records(bootstrap, topic)
        .iter()
        .filter_map(|m| m.payload().and_then(|p| serde_json::from_slice(p).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(key: &str, seq: u64) -> Handled {
        Handled { key: key.into(), seq, partition: 0, offset: 0, pid: 0 }
    }

    #[test]
    fn tally_counts_each_invariant() {
        let exp = expected(2, 6); // k0:0,1,2  k1:0,1,2
        let log = vec![h("k0", 0), h("k1", 0), h("k0", 1), h("k0", 1), h("k1", 2), h("k0", 2)];
        let t = tally(&exp, &log);
        assert_eq!(t.missing, 1, "k1:1 never handled");
        assert_eq!(t.duplicated, 1, "k0:1 twice");
        assert_eq!(t.order_violations, 1, "k1:2 before k1:1");
        assert_eq!(t.unexpected, 0);
    }

    #[test]
    fn replays_are_not_order_violations() {
        let exp = expected(1, 3);
        let log = vec![h("k0", 0), h("k0", 1), h("k0", 1), h("k0", 2), h("k0", 0)];
        assert_eq!(tally(&exp, &log).order_violations, 0);
    }
}
