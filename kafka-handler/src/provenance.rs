//! Provenance: which attempt a record is, when it is due, where it first
//! was — and when its headers may say so.
//!
//! The runtime writes a record it forwards to a retry topic or re-drives from
//! a dead letter with `retry.*` headers naming the source record, the attempt
//! and the due time. Anyone who can write to a topic can write those headers
//! too, so they steer the runtime only on a record of the consumer group's
//! own retry topic (`<source>.<group>.retry.<n>`) or re-drive topic
//! (`<source>.<group>.redrive`), where `<source>` is the topic its
//! `retry.original.topic` names. On any other topic they are just data: the
//! record is attempt 1, due at once, and first was where it is.

use crate::extract::{FromRecord, Group};
#[cfg(any(feature = "retry-topic", feature = "dead-letter"))]
use crate::record::Header;
use crate::{HandlerError, Record};

/// Names of the provenance headers on retry and re-drive topics.
pub(crate) mod headers {
    // Public through `middleware::retry_topic::headers`; without that
    // feature only some are read.
    #![cfg_attr(not(feature = "retry-topic"), allow(dead_code, unreachable_pub))]

    /// The attempt the record is due for.
    pub const ATTEMPT: &str = "retry.attempt";
    /// When it is due, ms since the Unix epoch.
    pub const DUE: &str = "retry.due";
    /// The topic it was first read from.
    pub const ORIGINAL_TOPIC: &str = "retry.original.topic";
    /// Its partition there.
    pub const ORIGINAL_PARTITION: &str = "retry.original.partition";
    /// Its offset there.
    pub const ORIGINAL_OFFSET: &str = "retry.original.offset";
    /// Its original timestamp.
    pub const ORIGINAL_TIMESTAMP: &str = "retry.original.timestamp";
    /// The first failure.
    pub const FIRST_ERROR: &str = "retry.first.error";
    /// The latest failure.
    pub const LAST_ERROR: &str = "retry.last.error";

    /// What retry headers start with.
    pub(crate) const RETRY_PREFIX: &str = "retry.";
    /// What dead-letter headers start with.
    pub(crate) const DEAD_LETTER_PREFIX: &str = "dlt.";
}

/// The retry topic of `level` (1-based) for records of `topic` in `group`.
#[cfg(feature = "retry-topic")]
pub(crate) fn retry_topic(topic: &str, group: &str, level: usize) -> String {
    format!("{topic}.{group}.retry.{level}")
}

/// The topic where dead letters of `topic` are sent back to `group` only.
#[cfg(feature = "dead-letter")]
pub(crate) fn redrive_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.redrive")
}

/// Whether `topic` is one of `group`'s retry topics or its re-drive topic
/// for records of `source`.
fn is_own_topic(topic: &str, source: &str, group: &str) -> bool {
    let rest = topic
        .strip_prefix(source)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_prefix(group))
        .and_then(|r| r.strip_prefix('.'));
    let Some(rest) = rest else { return false };
    rest == "redrive"
        || rest.strip_prefix("retry.").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn text<'r>(record: &'r Record, name: &str) -> Option<&'r str> {
    record.header(name).and_then(|v| std::str::from_utf8(v).ok())
}

/// Whether the record's retry headers are its consumer group's own
/// provenance: it was read from the group's retry or re-drive topic for the
/// source topic its `retry.original.topic` names, and they say where in that
/// topic it was.
pub(crate) fn trusted(record: &Record) -> bool {
    Origin::from_headers(record).is_some()
}

/// The attempt the record is: its `retry.attempt` if [trusted], else 1.
pub(crate) fn attempt(record: &Record) -> u32 {
    match text(record, headers::ATTEMPT) {
        Some(n) if trusted(record) => n.parse().ok().filter(|&n| n >= 1).unwrap_or(1),
        _ => 1,
    }
}

/// The retry level the record is at: `n` on the group's own retry topic of
/// level `n` for its source topic, else 0 (the source or re-drive topic,
/// where the retry path starts over). Not derived from the attempt number:
/// in-place retries add attempts within a level.
#[cfg(feature = "retry-topic")]
pub(crate) fn retry_level(record: &Record) -> usize {
    let Some(origin) = Origin::from_headers(record) else { return 0 };
    record
        .topic()
        .strip_prefix(origin.topic.as_str())
        .and_then(|rest| rest.rsplit_once(".retry."))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// When the record is due, ms since the Unix epoch: its `retry.due` if
/// [trusted], else `None` (due at once).
#[cfg(feature = "retry-topic")]
pub(crate) fn due(record: &Record) -> Option<u64> {
    // The header is looked for first: most records have none, and finding
    // the group costs more.
    let due = text(record, headers::DUE)?;
    trusted(record).then(|| due.parse().ok()).flatten()
}

/// The record's headers that travel with it when the runtime forwards it to a
/// retry or dead-letter topic: all but its `dlt.*` headers, and its
/// `retry.*` ones unless it is [trusted]. The runtime writes its own
/// provenance in their place, so that it is the only value of those names.
#[cfg(any(feature = "retry-topic", feature = "dead-letter"))]
pub(crate) fn carried(record: &Record, trusted: bool) -> impl Iterator<Item = &Header> {
    record.headers().iter().filter(move |h| {
        !h.name.starts_with(headers::DEAD_LETTER_PREFIX) && (trusted || !h.name.starts_with(headers::RETRY_PREFIX))
    })
}

/// Where the record first was: for a record of the consumer group's own
/// retry or re-drive topic, the source record's coordinates from its
/// provenance headers; for any other record, its own.
///
/// A handler that must know which topic an event was published to asks for
/// this rather than reading headers: a `retry.original.topic` header on a
/// record of any other topic was written by whoever produced it, and is
/// ignored.
///
/// ```
/// use kafka_handler::extract::{Group, Origin};
/// use kafka_handler::Record;
///
/// // A retry of this group's: where the record first was.
/// let retry = Record::builder("order.created.inventory.retry.1")
///     .header("retry.original.topic", "order.created")
///     .header("retry.original.partition", "2")
///     .header("retry.original.offset", "41")
///     .state(Group("inventory".into()))
///     .build();
/// assert_eq!(Origin::of(&retry).topic, "order.created");
/// assert_eq!(Origin::of(&retry).offset, 41);
///
/// // The same headers on a source topic are only data.
/// let forged = Record::builder("order.created")
///     .offset(7)
///     .header("retry.original.topic", "order.events")
///     .header("retry.original.partition", "0")
///     .header("retry.original.offset", "1")
///     .state(Group("inventory".into()))
///     .build();
/// assert_eq!(Origin::of(&forged).topic, "order.created");
/// assert_eq!(Origin::of(&forged).offset, 7);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Origin {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset in the partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch, if the record had a timestamp.
    pub timestamp: Option<i64>,
}

impl Origin {
    /// Where the record first was: for a record of the consumer group's own
    /// retry or re-drive topic, the source record's coordinates from its
    /// provenance headers; for any other record, its own.
    pub fn of(record: &Record) -> Origin {
        Self::from_headers(record).unwrap_or_else(|| Origin {
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
            timestamp: record.timestamp(),
        })
    }

    /// The source coordinates in the headers of a record of the group's own
    /// retry or re-drive topic.
    fn from_headers(record: &Record) -> Option<Origin> {
        let topic = text(record, headers::ORIGINAL_TOPIC)?;
        let Group(group) = record.lookup::<Group>()?;
        if !is_own_topic(record.topic(), topic, group) {
            return None;
        }
        Some(Origin {
            topic: topic.to_owned(),
            partition: text(record, headers::ORIGINAL_PARTITION)?.parse().ok()?,
            offset: text(record, headers::ORIGINAL_OFFSET)?.parse().ok()?,
            timestamp: text(record, headers::ORIGINAL_TIMESTAMP).and_then(|t| t.parse().ok()),
        })
    }
}

impl FromRecord for Origin {
    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        Ok(Origin::of(record))
    }
}

#[cfg(all(test, feature = "retry-topic", feature = "dead-letter"))]
mod tests {
    use super::*;

    const SOURCE: &str = "order.created";

    fn record(topic: &str, group: &str) -> Record {
        Record::builder(topic)
            .partition(1)
            .offset(5)
            .timestamp(1_000)
            .header(headers::ORIGINAL_TOPIC, SOURCE)
            .header(headers::ORIGINAL_PARTITION, "2")
            .header(headers::ORIGINAL_OFFSET, "41")
            .header(headers::ORIGINAL_TIMESTAMP, "900")
            .header(headers::ATTEMPT, "3")
            .header(headers::DUE, "4102444800000")
            .state(Group(group.into()))
            .build()
    }

    fn source() -> Origin {
        Origin { topic: SOURCE.into(), partition: 2, offset: 41, timestamp: Some(900) }
    }

    fn own(topic: &str) -> Origin {
        Origin { topic: topic.into(), partition: 1, offset: 5, timestamp: Some(1_000) }
    }

    #[test]
    fn the_groups_own_retry_topic_is_trusted() {
        let r = record("order.created.inventory.retry.2", "inventory");
        assert!(trusted(&r));
        assert_eq!(Origin::of(&r), source());
        assert_eq!(attempt(&r), 3);
        assert_eq!(due(&r), Some(4_102_444_800_000));
    }

    #[test]
    fn the_groups_own_redrive_topic_is_trusted() {
        let r = record("order.created.inventory.redrive", "inventory");
        assert!(trusted(&r));
        assert_eq!(Origin::of(&r), source());
        assert_eq!(attempt(&r), 3);
    }

    #[test]
    fn another_groups_retry_topic_is_not() {
        for (topic, group) in [
            ("order.created.inventory.retry.1", "payment"),
            ("order.created.inventory.redrive", "payment"),
            ("order.created.inventory.retry.1", "inv"),
        ] {
            let r = record(topic, group);
            assert!(!trusted(&r), "{topic} in {group}");
            assert_eq!(Origin::of(&r), own(topic));
            assert_eq!(attempt(&r), 1);
            assert_eq!(due(&r), None);
        }
    }

    #[test]
    fn a_source_topic_with_forged_headers_is_not() {
        for topic in [
            "order.created",
            "order.events",
            // Named like a retry topic, but not of the topic the headers claim.
            "order.events.inventory.retry.1",
            "order.created.inventory.retry.",
            "order.created.inventory.retry.1x",
            "order.created.inventory.redrive.1",
        ] {
            let r = record(topic, "inventory");
            assert!(!trusted(&r), "{topic}");
            assert_eq!(Origin::of(&r), own(topic));
            assert_eq!(attempt(&r), 1);
            assert_eq!(due(&r), None);
        }
    }

    #[test]
    fn without_a_group_nothing_is_trusted() {
        let r = Record::builder("t.g.retry.1")
            .header(headers::ORIGINAL_TOPIC, "t")
            .header(headers::ORIGINAL_PARTITION, "0")
            .header(headers::ORIGINAL_OFFSET, "0")
            .header(headers::ATTEMPT, "2")
            .build();
        assert!(!trusted(&r));
        assert_eq!(attempt(&r), 1);
    }

    #[test]
    fn without_coordinates_nothing_is_trusted() {
        let r = Record::builder("t.g.retry.1")
            .offset(3)
            .header(headers::ORIGINAL_TOPIC, "t")
            .header(headers::ORIGINAL_PARTITION, "x")
            .header(headers::ORIGINAL_OFFSET, "0")
            .header(headers::DUE, "4102444800000")
            .state(Group("g".into()))
            .build();
        assert!(!trusted(&r));
        assert_eq!(Origin::of(&r).offset, 3);
        assert_eq!(due(&r), None);
    }

    #[test]
    fn a_nonsense_attempt_counts_as_the_first() {
        for n in ["0", "-1", "x", ""] {
            let r = Record::builder("t.g.retry.1")
                .header(headers::ORIGINAL_TOPIC, "t")
                .header(headers::ORIGINAL_PARTITION, "0")
                .header(headers::ORIGINAL_OFFSET, "0")
                .header(headers::ATTEMPT, n)
                .state(Group("g".into()))
                .build();
            assert_eq!(attempt(&r), 1, "{n:?}");
        }
    }

    #[test]
    fn forged_provenance_does_not_travel() {
        let forged = Record::builder(SOURCE)
            .header("eventType", "OrderCreated")
            .header(headers::ORIGINAL_TOPIC, "order.events")
            .header("dlt.original.topic", "order.events")
            .state(Group("inventory".into()))
            .build();
        let names: Vec<_> = carried(&forged, trusted(&forged)).map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["eventType"]);
        let retry = record("order.created.inventory.retry.1", "inventory");
        assert_eq!(carried(&retry, true).count(), retry.headers().len());
    }
}
