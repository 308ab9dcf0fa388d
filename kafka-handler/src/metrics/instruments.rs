//! The instruments, their names and units: the table in `docs/observability.md`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::{KeyValue, StringValue};

use super::observed::{Observed, PartitionView};
use super::{DedupCounts, Meters};
use crate::{Disposition, HandlerError};

/// Bucket bounds of the duration histogram, in seconds: from a cache hit to a
/// slow external API.
const DURATION_BOUNDS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Attempt numbers above this are reported as this, to bound cardinality.
const MAX_ATTEMPT: u32 = 10;

/// The instruments recorded into as events happen, with their attribute
/// sets bound in advance: recording allocates nothing.
#[derive(Debug)]
pub(crate) struct Recorders {
    group: KeyValue,
    duration: Histogram<f64>,
    outcomes: [[KeyValue; 2]; 3],
    retries: Counter<u64>,
    /// By attempt, 0 to [`MAX_ATTEMPT`].
    attempts: Vec<[KeyValue; 2]>,
    dead_letters: Counter<u64>,
}

impl Recorders {
    pub(super) fn handler_call(&self, took: Duration, result: &Result<(), HandlerError>) {
        let outcome = match result.as_ref().map_err(HandlerError::disposition) {
            Ok(()) => 0,
            Err(Disposition::Permanent) => 2,
            Err(_) => 1,
        };
        self.duration.record(took.as_secs_f64(), &self.outcomes[outcome]);
    }

    pub(super) fn retry(&self, attempt: u32) {
        self.retries.add(1, &self.attempts[attempt.min(MAX_ATTEMPT) as usize]);
    }

    pub(super) fn dead_letter(&self, topic: &str, kind: &'static str) {
        // Rare: the topic's attribute is made when it happens.
        let attrs = [self.group.clone(), KeyValue::new("topic", topic.to_owned()), KeyValue::new("kind", kind)];
        self.dead_letters.add(1, &attrs);
    }
}

/// An attribute whose value is shared, not copied, each time it is cloned.
fn shared(key: &'static str, value: &Arc<str>) -> KeyValue {
    KeyValue::new(key, StringValue::from(Arc::clone(value)))
}

/// Makes the consumer's instruments in `meter`. Observable ones read
/// `observed` (and the dedup counters) when the exporter collects, until the
/// consumer is dropped.
pub(crate) fn register<D: DedupCounts>(meter: &Meter, observed: &Arc<Observed>, dedup: Option<Arc<D>>) -> Meters {
    let group = shared("group", &observed.group);
    per_partition(meter, observed);
    per_group(meter, observed, &group);
    if let Some(counters) = dedup {
        dedup_counters(meter, counters, &group);
    }
    let outcome = |o: &'static str| [group.clone(), KeyValue::new("outcome", o)];
    let recorders = Recorders {
        duration: meter
            .f64_histogram("kafka_handler.process.duration")
            .with_unit("s")
            .with_description("Duration of handler calls that waited (calls that finish without waiting are only counted, in kafka_handler.consumer.records)")
            .with_boundaries(DURATION_BOUNDS.to_vec())
            .build(),
        outcomes: [outcome("ok"), outcome("retryable"), outcome("permanent")],
        attempts: (0..=MAX_ATTEMPT).map(|n| [group.clone(), KeyValue::new("attempt", i64::from(n))]).collect(),
        retries: meter
            .u64_counter("kafka_handler.consumer.retries")
            .with_unit("{retry}")
            .with_description("Failed records tried again, by the attempt coming (2 = first retry)")
            .build(),
        dead_letters: meter
            .u64_counter("kafka_handler.consumer.dead_letters")
            .with_unit("{record}")
            .with_description("Records written to a dead-letter topic, by source topic and kind of failure")
            .build(),
        group,
    };
    Meters { inner: Some(Arc::new(recorders)) }
}

/// Calls `each` for every assigned partition, with its attributes.
fn for_partitions(observed: &Weak<Observed>, mut each: impl FnMut(&Observed, &PartitionView, &[KeyValue])) {
    let Some(observed) = observed.upgrade() else { return };
    let snapshot = observed.snapshot().clone();
    let group = shared("group", &observed.group);
    for p in &snapshot.partitions {
        let attrs = [group.clone(), shared("topic", &p.topic), KeyValue::new("partition", i64::from(p.partition))];
        each(&observed, p, &attrs);
    }
}

fn per_partition(meter: &Meter, observed: &Arc<Observed>) {
    let weak = Arc::downgrade(observed);
    meter
        .i64_observable_gauge("kafka_handler.consumer.lag")
        .with_unit("{record}")
        .with_description("Records between the group's committed offset and the end of the partition")
        .with_callback(move |gauge| {
            for_partitions(&weak, |observed, p, attrs| {
                if let Some(lag) = observed.lag(p) {
                    gauge.observe(lag, attrs);
                }
            })
        })
        .build();
    let weak = Arc::downgrade(observed);
    meter
        .f64_observable_gauge("kafka_handler.consumer.time_lag")
        .with_unit("s")
        .with_description("Age of the partition's oldest unfinished record (0 when nothing is pending)")
        .with_callback(move |gauge| {
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            for_partitions(&weak, |_, p, attrs| {
                let age = match p.oldest {
                    None => 0.0,
                    Some(oldest) => match oldest.timestamp {
                        Some(ts) => (now_ms - ts).max(0) as f64 / 1000.0,
                        None => oldest.since.elapsed().as_secs_f64(),
                    },
                };
                gauge.observe(age, attrs);
            })
        })
        .build();
    let weak = Arc::downgrade(observed);
    meter
        .i64_observable_gauge("kafka_handler.consumer.in_flight")
        .with_unit("{record}")
        .with_description("Records fetched and not finished")
        .with_callback(move |gauge| for_partitions(&weak, |_, p, attrs| gauge.observe(p.in_flight as i64, attrs)))
        .build();
    let weak = Arc::downgrade(observed);
    meter
        .i64_observable_gauge("kafka_handler.consumer.stalled")
        .with_description("1 when the partition's oldest unfinished record has not finished within the stall timeout")
        .with_callback(move |gauge| {
            for_partitions(&weak, |observed, p, attrs| {
                let stalled = p.oldest.is_some_and(|o| o.since.elapsed() >= observed.stall_timeout);
                gauge.observe(i64::from(stalled), attrs);
            })
        })
        .build();
}

fn per_group(meter: &Meter, observed: &Arc<Observed>, group: &KeyValue) {
    let (weak, attrs) = (Arc::downgrade(observed), [group.clone()]);
    meter
        .i64_observable_gauge("kafka_handler.consumer.partitions.assigned")
        .with_unit("{partition}")
        .with_description("Partitions assigned to the consumer")
        .with_callback(move |gauge| {
            if let Some(o) = weak.upgrade() {
                gauge.observe(o.assigned() as i64, &attrs);
            }
        })
        .build();
    let (weak, attrs) = (Arc::downgrade(observed), [group.clone()]);
    meter
        .i64_observable_gauge("kafka_handler.consumer.partitions.paused")
        .with_unit("{partition}")
        .with_description("Assigned partitions whose fetching is paused (back-pressure, a retry not due yet)")
        .with_callback(move |gauge| {
            if let Some(o) = weak.upgrade() {
                gauge.observe(o.snapshot().partitions.iter().filter(|p| p.paused).count() as i64, &attrs);
            }
        })
        .build();
    let weak = Arc::downgrade(observed);
    let attrs: Vec<[KeyValue; 2]> = ["ok", "permanent", "abandoned"]
        .into_iter()
        .map(|outcome| [group.clone(), KeyValue::new("outcome", outcome)])
        .collect();
    meter
        .u64_observable_counter("kafka_handler.consumer.records")
        .with_unit("{record}")
        .with_description("Records finished, by outcome: ok, permanent (failed, committed past), abandoned (given up with their partition, redelivered)")
        .with_callback(move |counter| {
            if let Some(o) = weak.upgrade() {
                let counts = o.snapshot().counts;
                for (value, attrs) in [counts.handled, counts.failed_permanently, counts.abandoned].into_iter().zip(&attrs) {
                    counter.observe(value, attrs);
                }
            }
        })
        .build();
    for (name, unit, description, read) in [
        (
            "kafka_handler.consumer.commit_failures",
            "{commit}",
            "Offset commits that failed (they are retried with the next commit)",
            (|o: &Observed| o.commit_failures.load(Relaxed)) as fn(&Observed) -> u64,
        ),
        (
            "kafka_handler.consumer.rebalances",
            "{rebalance}",
            "Assignments received from the group (each rebalance ends with one)",
            |o: &Observed| o.rebalances.load(Relaxed),
        ),
    ] {
        let (weak, attrs) = (Arc::downgrade(observed), [group.clone()]);
        meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |counter| {
                if let Some(o) = weak.upgrade() {
                    counter.observe(read(&o), &attrs);
                }
            })
            .build();
    }
}

fn dedup_counters<D: DedupCounts>(meter: &Meter, counters: Arc<D>, group: &KeyValue) {
    for (name, unit, description, read) in [
        (
            "kafka_handler.dedup.hits",
            "{record}",
            "Records skipped because their event was handled before",
            D::hits as fn(&D) -> u64,
        ),
        (
            "kafka_handler.dedup.waits",
            "{wait}",
            "Times a record waited for its event's claim held by another consumer",
            D::waits,
        ),
        (
            "kafka_handler.dedup.store_errors",
            "{error}",
            "Dedup store calls that failed (the records were retried)",
            D::store_errors,
        ),
    ] {
        let (counters, attrs) = (Arc::downgrade(&counters), [group.clone()]);
        meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |counter| {
                if let Some(c) = counters.upgrade() {
                    counter.observe(read(&c), &attrs);
                }
            })
            .build();
    }
}
