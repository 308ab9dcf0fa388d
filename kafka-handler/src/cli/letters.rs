//! Dead letters read back from their topic: which ones a command takes,
//! and how one is printed.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::Error;
use crate::middleware::dead_letter::headers as dlt;

/// Which dead letters a command takes.
#[derive(Args, Debug, Clone)]
pub(super) struct Filter {
    /// The dead-letter topic, e.g. `order.created.dlt`.
    #[arg(long)]
    pub(super) topic: String,
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
pub(super) struct DeadLetter {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) timestamp: Option<i64>,
    pub(super) key: Option<Bytes>,
    pub(super) payload: Option<Bytes>,
    pub(super) headers: Vec<(String, Option<Bytes>)>,
}

impl DeadLetter {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
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
pub(super) fn read(bootstrap: &str, topic: &str, mut keep: impl FnMut(DeadLetter) -> bool) -> Result<(), Error> {
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

/// The dead letters in `filter.topic` that match `filter`, up to its limit.
pub(super) fn matching(bootstrap: &str, filter: &Filter) -> Result<Vec<DeadLetter>, Error> {
    let mut found = Vec::new();
    read(bootstrap, &filter.topic, |letter| {
        if letter.matches(filter) {
            found.push(letter);
        }
        filter.limit.is_none_or(|limit| found.len() < limit)
    })?;
    Ok(found)
}

/// A dead letter on one line: where it is, where it came from, and why it
/// failed.
pub(super) fn line(l: &DeadLetter) -> String {
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
        l.key.as_deref().map(escaped).unwrap_or_default(),
        h(dlt::ERROR_MESSAGE),
    )
}

/// `bytes` as text: valid UTF-8 unchanged, any other byte escaped as `\xNN`,
/// so that binary keys, headers and payloads neither garble the terminal
/// nor are silently replaced.
pub(super) fn escaped(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(text);
    }
    let mut text = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        text.extend(chunk.invalid().escape_ascii().map(char::from));
    }
    Cow::Owned(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_what_is_not_utf8() {
        assert_eq!(escaped(b"plain {\"json\": 1}\n"), "plain {\"json\": 1}\n");
        assert_eq!(escaped("h\u{e9}llo \u{2026}".as_bytes()), "h\u{e9}llo \u{2026}");
        assert_eq!(escaped(b"\xff\xfe"), r"\xff\xfe");
        assert_eq!(escaped(b"ok\x80ok\xc3"), r"ok\x80ok\xc3");
    }
}
