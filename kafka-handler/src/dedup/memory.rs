//! Claims and done marks in one process's memory.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::{Claim, DedupStore, Lease, StoreError};

/// A [`DedupStore`] in this process's memory: for tests, demos and
/// single-instance services.
///
/// It is **not shared** across instances (two processes in one consumer
/// group each keep their own, so a record redelivered to the other after a
/// rebalance is handled again) and it is **lost on restart**. Use
/// [`RedisStore`](super::redis::RedisStore) or an SQL store when either
/// matters.
///
/// Claims follow the same lease rules as the other stores: a claim expires
/// after its lease, only its owner releases it, and a done mark is kept for
/// the retention the [`DedupLayer`](crate::middleware::DedupLayer) gives
/// ([`retention`](crate::middleware::DedupLayer::retention), 7 days by
/// default). The store is bounded: past [`max_entries`](Self::max_entries)
/// it forgets the oldest done marks first. Claims in progress are never
/// evicted; there are at most as many as records in flight.
///
/// ```
/// use kafka_handler::dedup::MemoryStore;
/// use kafka_handler::middleware::DedupLayer;
/// use std::time::Duration;
///
/// let dedup = DedupLayer::new(MemoryStore::new().max_entries(10_000)).retention(Duration::from_secs(3600));
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    entries: Mutex<Entries>,
    max_entries: usize,
}

type Key = (Arc<str>, Arc<str>);

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Key, State>,
    /// Done marks in the order they were made, with their expiry: the
    /// eviction order. A key whose state changed since is skipped.
    done: VecDeque<(Key, Instant)>,
}

#[derive(Debug)]
enum State {
    Claimed { owner: Arc<str>, until: Instant },
    Done { until: Instant },
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// The default bound: 100,000 entries.
    pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

    /// An empty store holding at most [`DEFAULT_MAX_ENTRIES`](Self::DEFAULT_MAX_ENTRIES).
    pub fn new() -> Self {
        Self { entries: Mutex::default(), max_entries: Self::DEFAULT_MAX_ENTRIES }
    }

    /// At most `max` entries (at least 1); past it the oldest done marks are
    /// forgotten first, so an event older than the last `max` may run again.
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max.max(1);
        self
    }

    /// Entries held now: claims and done marks, expired ones included until
    /// they are swept.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves the map consistent (each
        // change is one insert or remove), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entries {
    fn claim(&mut self, lease: &Lease, ttl: Duration, now: Instant, max: usize) -> Claim {
        let key = (lease.group.clone(), lease.event_id.clone());
        let claimed = State::Claimed { owner: lease.owner.clone(), until: now + ttl };
        match self.map.entry(key) {
            Entry::Occupied(mut e) => match e.get() {
                State::Done { until } if *until > now => Claim::Done,
                State::Claimed { owner, until } if *owner != lease.owner && *until > now => Claim::InProgress,
                _ => {
                    e.insert(claimed);
                    Claim::Acquired
                }
            },
            Entry::Vacant(e) => {
                e.insert(claimed);
                self.make_room(now, max);
                Claim::Acquired
            }
        }
    }

    fn complete(&mut self, lease: &Lease, retention: Duration, now: Instant) {
        let key = (lease.group.clone(), lease.event_id.clone());
        let until = now + retention;
        self.map.insert(key.clone(), State::Done { until });
        self.done.push_back((key, until));
    }

    fn release(&mut self, lease: &Lease) {
        if let Entry::Occupied(e) = self.map.entry((lease.group.clone(), lease.event_id.clone()))
            && matches!(e.get(), State::Claimed { owner, .. } if *owner == lease.owner)
        {
            e.remove();
        }
    }

    /// Drops expired done marks, then, while over `max`, the oldest ones.
    fn make_room(&mut self, now: Instant, max: usize) {
        while let Some((key, until)) = self.done.front() {
            let current = matches!(self.map.get(key), Some(State::Done { until: u }) if u == until);
            if current && *until > now && self.map.len() <= max {
                break;
            }
            let (key, _) = self.done.pop_front().expect("front exists");
            if current {
                self.map.remove(&key);
            }
        }
        if self.map.len() > max {
            // Only claims are left in the queue's place: sweep the expired ones.
            self.map.retain(|_, s| !matches!(s, State::Claimed { until, .. } if *until <= now));
        }
    }
}

impl DedupStore for MemoryStore {
    fn claim<'a>(&'a self, leases: &'a [Lease], ttl: Duration) -> BoxFuture<'a, Result<Vec<Claim>, StoreError>> {
        let now = Instant::now();
        let mut entries = self.lock();
        let claims = leases.iter().map(|l| entries.claim(l, ttl, now, self.max_entries)).collect();
        Box::pin(std::future::ready(Ok(claims)))
    }

    fn complete<'a>(&'a self, leases: &'a [Lease], retention: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        let now = Instant::now();
        let mut entries = self.lock();
        for l in leases {
            entries.complete(l, retention, now);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn release<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut entries = self.lock();
        for l in leases {
            entries.release(l);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// The store answers at once.
    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        f.now_or_never().expect("ready")
    }

    fn lease(id: &str, owner: &str) -> Lease {
        Lease { group: "g".into(), event_id: id.into(), owner: owner.into() }
    }

    const LONG: Duration = Duration::from_secs(60);

    fn claim(store: &MemoryStore, l: Lease, ttl: Duration) -> Claim {
        block_on(store.claim(&[l], ttl)).unwrap()[0]
    }

    #[test]
    fn a_claim_blocks_others_until_done_or_released() {
        let store = MemoryStore::new();
        assert_eq!(claim(&store, lease("e", "a"), LONG), Claim::Acquired);
        assert_eq!(claim(&store, lease("e", "a"), LONG), Claim::Acquired, "the owner claims again");
        assert_eq!(claim(&store, lease("e", "b"), LONG), Claim::InProgress);
        block_on(store.release(&[lease("e", "b")])).unwrap();
        assert_eq!(claim(&store, lease("e", "b"), LONG), Claim::InProgress, "only the owner releases");
        block_on(store.release(&[lease("e", "a")])).unwrap();
        assert_eq!(claim(&store, lease("e", "b"), LONG), Claim::Acquired);
        block_on(store.complete(&[lease("e", "b")], LONG)).unwrap();
        assert_eq!(claim(&store, lease("e", "c"), LONG), Claim::Done);
        let other_group = Lease { group: "h".into(), ..lease("e", "c") };
        assert_eq!(claim(&store, other_group, LONG), Claim::Acquired, "groups are independent");
    }

    #[test]
    fn an_expired_lease_can_be_claimed() {
        let store = MemoryStore::new();
        assert_eq!(claim(&store, lease("e", "a"), Duration::from_millis(20)), Claim::Acquired);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(claim(&store, lease("e", "b"), LONG), Claim::Acquired);
        block_on(store.release(&[lease("e", "a")])).unwrap();
        assert_eq!(claim(&store, lease("e", "c"), LONG), Claim::InProgress, "the late owner released nothing");
    }

    #[test]
    fn done_marks_expire_after_retention() {
        let store = MemoryStore::new();
        claim(&store, lease("e", "a"), LONG);
        block_on(store.complete(&[lease("e", "a")], Duration::from_millis(20))).unwrap();
        assert_eq!(claim(&store, lease("e", "b"), LONG), Claim::Done);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(claim(&store, lease("e", "b"), LONG), Claim::Acquired);
        // The expired mark is swept when a new key arrives.
        block_on(store.complete(&[lease("e", "b")], Duration::from_millis(1))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        claim(&store, lease("f", "a"), LONG);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn the_bound_forgets_the_oldest_done_marks_first() {
        let store = MemoryStore::new().max_entries(3);
        for id in ["1", "2", "3"] {
            claim(&store, lease(id, "a"), LONG);
        }
        block_on(store.complete(&[lease("2", "a"), lease("1", "a")], LONG)).unwrap();
        claim(&store, lease("4", "a"), LONG);
        assert_eq!(store.len(), 3);
        assert_eq!(claim(&store, lease("2", "b"), LONG), Claim::Acquired, "the oldest done mark went");
        assert_eq!(claim(&store, lease("3", "b"), LONG), Claim::InProgress, "claims stay");
        assert_eq!(claim(&store, lease("4", "b"), LONG), Claim::InProgress);
        // "1" went to make room for "2"'s new claim.
        assert_eq!(claim(&store, lease("1", "b"), LONG), Claim::Acquired);
    }
}
