//! What a running consumer last looked like, for health checks and metrics.
//!
//! The polling thread publishes a snapshot of its partitions a few times a
//! second; readers (a health endpoint, a metrics exporter) take it from here
//! without ever touching the scheduler, which may be busy waiting for a
//! revoked partition's records. The runtime writes into it and nothing here
//! knows the runtime.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;

/// How often the polling thread publishes its snapshot.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// The state of one consumer shared with readers on other threads.
#[derive(Debug)]
pub(crate) struct Observed {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) group: Arc<str>,
    pub(crate) stall_timeout: Duration,
    origin: Instant,
    lifecycle: AtomicU8,
    /// When the polling thread last polled, ms after `origin`.
    last_poll: AtomicU64,
    /// When the last snapshot was published, ms after `origin`.
    published: AtomicU64,
    /// Whether the consumer has joined its group (an assignment, maybe empty, arrived).
    pub(crate) joined: AtomicBool,
    brokers: AtomicU8,
    snapshot: Mutex<Snapshot>,
    /// Offsets the group committed, per partition, as librdkafka reported them.
    committed: Mutex<HashMap<(Arc<str>, i32), i64>>,
    /// The end of each partition: librdkafka's statistics, and the broker's
    /// answer for partitions whose fetching is paused.
    high: Mutex<HashMap<(Arc<str>, i32), i64>>,
    pub(crate) commit_failures: AtomicU64,
    pub(crate) rebalances: AtomicU64,
}

/// Where the consumer is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    Built = 0,
    Running = 1,
    Stopped = 2,
}

/// Whether librdkafka's last statistics saw a broker connection up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Brokers {
    Unknown = 0,
    Up = 1,
    Down = 2,
}

/// The partitions as the polling thread last saw them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) partitions: Vec<PartitionView>,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) counts: Counts,
}

/// Records finished by the scheduler, by outcome.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) handled: u64,
    pub(crate) failed_permanently: u64,
    pub(crate) abandoned: u64,
}

/// One assigned partition.
#[derive(Clone, Debug)]
pub(crate) struct PartitionView {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) paused: bool,
    /// Records fetched and not finished.
    pub(crate) in_flight: usize,
    pub(crate) oldest: Option<Oldest>,
    /// Where the group stands in the partition when no commit was seen yet:
    /// the finished watermark, else the oldest unfinished offset.
    pub(crate) position: Option<i64>,
}

/// The oldest unfinished record of a partition: everything before it finished.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Oldest {
    pub(crate) offset: i64,
    /// The record's timestamp, ms since the Unix epoch.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) timestamp: Option<i64>,
    /// Since when it is the oldest unfinished record (as far as snapshots can tell).
    pub(crate) since: Instant,
}

impl Observed {
    pub(crate) fn new(group: Arc<str>, stall_timeout: Duration) -> Self {
        Self {
            group,
            stall_timeout,
            origin: Instant::now(),
            lifecycle: AtomicU8::new(Lifecycle::Built as u8),
            last_poll: AtomicU64::new(0),
            published: AtomicU64::new(0),
            joined: AtomicBool::new(false),
            brokers: AtomicU8::new(Brokers::Unknown as u8),
            snapshot: Mutex::default(),
            committed: Mutex::default(),
            high: Mutex::default(),
            commit_failures: AtomicU64::new(0),
            rebalances: AtomicU64::new(0),
        }
    }

    /// The consumer starts running: it counts as polling from now on.
    pub(crate) fn start(&self) {
        self.polled(Instant::now(), PUBLISH_EVERY);
        self.set_lifecycle(Lifecycle::Running);
    }

    /// The consumer stopped: it holds no partitions and no work any more.
    /// The partitions stay in the snapshot, so that their lag is still
    /// exported (as last committed) after the stop instead of vanishing.
    pub(crate) fn stop(&self) {
        for p in &mut self.snapshot().partitions {
            p.in_flight = 0;
            p.oldest = None;
            p.paused = false;
        }
        self.set_lifecycle(Lifecycle::Stopped);
    }

    /// Partitions assigned now: none once stopped.
    pub(crate) fn assigned(&self) -> usize {
        match self.lifecycle() {
            Lifecycle::Stopped => 0,
            _ => self.snapshot().partitions.len(),
        }
    }

    pub(crate) fn set_lifecycle(&self, lifecycle: Lifecycle) {
        self.lifecycle.store(lifecycle as u8, Relaxed);
    }

    pub(crate) fn lifecycle(&self) -> Lifecycle {
        match self.lifecycle.load(Relaxed) {
            0 => Lifecycle::Built,
            1 => Lifecycle::Running,
            _ => Lifecycle::Stopped,
        }
    }

    pub(crate) fn set_brokers(&self, brokers: Brokers) {
        self.brokers.store(brokers as u8, Relaxed);
    }

    pub(crate) fn brokers(&self) -> Brokers {
        match self.brokers.load(Relaxed) {
            1 => Brokers::Up,
            2 => Brokers::Down,
            _ => Brokers::Unknown,
        }
    }

    /// Notes that the polling thread polls now; returns whether a snapshot
    /// is due, `every` after the last one.
    pub(crate) fn polled(&self, now: Instant, every: Duration) -> bool {
        let ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        self.last_poll.store(ms, Relaxed);
        let published = self.published.load(Relaxed);
        if published != 0 && ms.saturating_sub(published) < every.as_millis() as u64 {
            return false;
        }
        self.published.store(ms.max(1), Relaxed);
        true
    }

    /// How long ago the polling thread last polled.
    pub(crate) fn since_last_poll(&self, now: Instant) -> Duration {
        let at = self.origin + Duration::from_millis(self.last_poll.load(Relaxed));
        now.saturating_duration_since(at)
    }

    pub(crate) fn snapshot(&self) -> MutexGuard<'_, Snapshot> {
        self.snapshot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the snapshot, keeping for each oldest unfinished record the
    /// time it was first seen as such.
    pub(crate) fn publish(&self, mut next: Snapshot) {
        let mut current = self.snapshot();
        let previous: HashMap<(&str, i32, u64), Oldest> =
            current.partitions.iter().filter_map(|p| Some(((&*p.topic, p.partition, p.epoch), p.oldest?))).collect();
        for p in &mut next.partitions {
            if let (Some(oldest), Some(before)) = (&mut p.oldest, previous.get(&(&*p.topic, p.partition, p.epoch)))
                && before.offset == oldest.offset
            {
                oldest.since = before.since;
            }
        }
        drop(previous);
        *current = next;
        let assigned = |topic: &Arc<str>, partition: i32| {
            current.partitions.iter().any(|p| p.topic == *topic && p.partition == partition)
        };
        lock(&self.committed).retain(|(t, p), _| assigned(t, *p));
        lock(&self.high).retain(|(t, p), _| assigned(t, *p));
    }

    /// Notes offsets the group committed.
    pub(crate) fn committed(&self, offsets: impl IntoIterator<Item = (Arc<str>, i32, i64)>) {
        let mut committed = lock(&self.committed);
        for (topic, partition, offset) in offsets {
            committed.insert((topic, partition), offset);
        }
    }

    /// Notes the end offset of a partition (it only grows).
    pub(crate) fn high(&self, topic: Arc<str>, partition: i32, high: i64) {
        let mut known = lock(&self.high);
        let entry = known.entry((topic, partition)).or_insert(high);
        *entry = (*entry).max(high);
    }

    /// Whether the end offset of a partition is known.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn knows_high(&self, topic: &Arc<str>, partition: i32) -> bool {
        lock(&self.high).contains_key(&(Arc::clone(topic), partition))
    }

    /// Records between the group's committed offset and the end of the
    /// partition; `None` while neither is known.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn lag(&self, p: &PartitionView) -> Option<i64> {
        let key = (Arc::clone(&p.topic), p.partition);
        let high = lock(&self.high).get(&key).copied()?;
        let committed = lock(&self.committed).get(&key).copied().or(p.position)?;
        Some((high - committed).max(0))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(oldest: Option<(i64, Instant)>, position: Option<i64>) -> PartitionView {
        PartitionView {
            topic: Arc::from("t"),
            partition: 0,
            epoch: 1,
            paused: false,
            in_flight: usize::from(oldest.is_some()),
            oldest: oldest.map(|(offset, since)| Oldest { offset, timestamp: None, since }),
            position,
        }
    }

    #[test]
    fn lag_is_the_end_minus_the_committed_offset_else_the_position() {
        let o = Observed::new(Arc::from("g"), Duration::from_secs(60));
        let p = view(None, Some(10));
        assert_eq!(o.lag(&p), None, "the end is not known yet");
        o.high(Arc::from("t"), 0, 100);
        assert_eq!(o.lag(&p), Some(90), "no commit seen: from where the consumer stands");
        o.high(Arc::from("t"), 0, 50);
        assert_eq!(o.lag(&p), Some(90), "an older answer does not move the end back");
        o.committed([(Arc::from("t"), 0, 60)]);
        assert_eq!(o.lag(&p), Some(40));
        o.committed([(Arc::from("t"), 0, 120)]);
        assert_eq!(o.lag(&p), Some(0), "never negative");
    }

    #[test]
    fn the_oldest_record_keeps_the_time_it_was_first_seen() {
        let o = Observed::new(Arc::from("g"), Duration::from_secs(60));
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        let since = |o: &Observed| o.snapshot().partitions[0].oldest.unwrap().since;
        o.publish(Snapshot { partitions: vec![view(Some((7, t0)), None)], counts: Counts::default() });
        o.publish(Snapshot { partitions: vec![view(Some((7, t1)), None)], counts: Counts::default() });
        assert_eq!(since(&o), t0, "still the same record");
        o.publish(Snapshot { partitions: vec![view(Some((8, t1)), None)], counts: Counts::default() });
        assert_eq!(since(&o), t1, "a new oldest record");
    }
}
