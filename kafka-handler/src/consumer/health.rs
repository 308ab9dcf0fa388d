//! Readiness and liveness of a running consumer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::observed::{Brokers, Lifecycle, Observed};

/// Answers health checks for a [`Consumer`](crate::Consumer), from any thread,
/// before, while and after it runs.
///
/// Take it with [`Consumer::health`](crate::Consumer::health) before calling
/// `run`, and serve its [`report`](Health::report) on a health endpoint:
///
/// ```no_run
/// # async fn run() -> Result<(), kafka_handler::Error> {
/// let consumer = kafka_handler::Consumer::builder()
///     .from_env()
///     .group_id("inventory")
///     .topic("order.created")
///     .handler(|| async {})
///     .build()?;
/// let health = consumer.health();
/// tokio::spawn(async move {
///     loop {
///         let report = health.report();
///         if !report.live {
///             eprintln!("not live: {report:?}");
///         }
///         tokio::time::sleep(std::time::Duration::from_secs(10)).await;
///     }
/// });
/// consumer.run().await
/// # }
/// ```
///
/// The health of several consumers, as one report, is their handles
/// collected: `[a.health(), b.health()].into_iter().collect::<Health>()`
/// (or [`Consumers::health`](crate::Consumers::health)).
#[derive(Clone, Debug)]
pub struct Health {
    observed: Vec<Arc<Observed>>,
}

/// A consumer's health, as [`Health::report`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// Running, joined to its group (with or without partitions: a member
    /// beyond the partition count idles as a standby), and a broker is
    /// reachable (as librdkafka's last statistics saw the connections;
    /// assumed until they say otherwise).
    pub ready: bool,
    /// Not stopped, the polling thread polled within the stall timeout, and
    /// no partition is [stalled](Self::stalled). Before `run` a consumer is
    /// live and not ready.
    pub live: bool,
    /// Partitions assigned to this consumer.
    pub assigned: usize,
    /// How long ago the polling thread last polled; `None` before `run`.
    pub last_poll: Option<Duration>,
    /// Partitions whose oldest unfinished record has not finished for longer
    /// than the stall timeout.
    pub stalled: Vec<Stalled>,
}

/// A partition holding unfinished work for longer than the stall timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stalled {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The oldest unfinished record: nothing from here on is committed.
    pub offset: i64,
    /// How long that record has been the oldest unfinished one.
    pub stalled_for: Duration,
    /// Records of the partition fetched and not finished.
    pub in_flight: usize,
}

impl Health {
    pub(crate) fn new(observed: Arc<Observed>) -> Self {
        Self { observed: vec![observed] }
    }

    /// The consumer's health now; of several consumers, ready and live when
    /// each is, with their partitions and stalls together.
    pub fn report(&self) -> HealthReport {
        let mut reports = self.observed.iter().map(|o| report(o));
        let Some(mut all) = reports.next() else {
            return HealthReport { ready: true, live: true, assigned: 0, last_poll: None, stalled: Vec::new() };
        };
        for one in reports {
            all.ready &= one.ready;
            all.live &= one.live;
            all.assigned += one.assigned;
            all.last_poll = all.last_poll.max(one.last_poll);
            all.stalled.extend(one.stalled);
        }
        all
    }
}

impl FromIterator<Health> for Health {
    fn from_iter<I: IntoIterator<Item = Health>>(healths: I) -> Self {
        Self { observed: healths.into_iter().flat_map(|h| h.observed).collect() }
    }
}

fn report(observed: &Observed) -> HealthReport {
    let now = Instant::now();
    let lifecycle = observed.lifecycle();
    let snapshot = observed.snapshot();
    let stalled: Vec<Stalled> = snapshot
        .partitions
        .iter()
        .filter_map(|p| {
            let oldest = p.oldest?;
            let stalled_for = now.saturating_duration_since(oldest.since);
            (stalled_for >= observed.stall_timeout).then(|| Stalled {
                group: observed.group.to_string(),
                topic: p.topic.to_string(),
                partition: p.partition,
                offset: oldest.offset,
                stalled_for,
                in_flight: p.in_flight,
            })
        })
        .collect();
    drop(snapshot);
    let assigned = observed.assigned();
    let last_poll = (lifecycle != Lifecycle::Built).then(|| observed.since_last_poll(now));
    let running = lifecycle == Lifecycle::Running;
    HealthReport {
        ready: running
            && observed.joined.load(std::sync::atomic::Ordering::Relaxed)
            && observed.brokers() != Brokers::Down,
        live: lifecycle == Lifecycle::Built
            || (running && last_poll.is_some_and(|age| age < observed.stall_timeout) && stalled.is_empty()),
        assigned,
        last_poll,
        stalled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::observed::{Oldest, PartitionView, Snapshot};

    #[test]
    fn a_partition_whose_oldest_record_outlives_the_timeout_is_stalled() {
        let observed = Arc::new(Observed::new(Arc::from("g"), Duration::from_millis(50)));
        let health = Health::new(Arc::clone(&observed));
        let report = health.report();
        assert!(report.live && !report.ready && report.last_poll.is_none(), "not started: {report:?}");
        observed.start();
        observed.joined.store(true, std::sync::atomic::Ordering::Relaxed);
        let partition = |offset: Option<i64>| PartitionView {
            topic: Arc::from("orders"),
            partition: 3,
            epoch: 1,
            paused: false,
            in_flight: 2,
            oldest: offset.map(|offset| Oldest { offset, timestamp: None, since: Instant::now() }),
            position: None,
        };
        observed.publish(Snapshot { partitions: vec![partition(Some(41))], counts: Default::default() });
        let report = health.report();
        assert!(report.ready && report.live && report.stalled.is_empty(), "{report:?}");
        std::thread::sleep(Duration::from_millis(60));
        observed.polled(Instant::now(), Duration::from_secs(1));
        let report = health.report();
        assert!(report.ready && !report.live, "{report:?}");
        assert_eq!(
            (report.stalled[0].topic.as_str(), report.stalled[0].partition, report.stalled[0].offset),
            ("orders", 3, 41)
        );
        observed.publish(Snapshot { partitions: vec![partition(None)], counts: Default::default() });
        assert!(health.report().live, "nothing pending: not stalled");
        observed.stop();
        let report = health.report();
        assert!(!report.live && !report.ready && report.assigned == 0, "stopped: {report:?}");
    }
}
