//! What the PostgreSQL and SQLite stores share: the migrations table, the
//! timeout, the batch shape and the periodic clean-up.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use super::{Claim, Lease, StoreError};

/// Where the shipped migrations record themselves: not sqlx's default
/// `_sqlx_migrations`, which belongs to the application's own migrator.
pub(crate) const MIGRATIONS_TABLE: &str = "_kafka_handler_migrations";

/// How long a store call may take, pool acquire included, by default.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a store call within `timeout`, so that an unreachable database is an
/// error within seconds, not after the pool's own (long) acquire timeout.
pub(crate) async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(StoreError::new),
        Err(_) => Err(StoreError::new(format!("no answer within {timeout:?}"))),
    }
}

/// A batch without repeated (group, event id), sorted so that concurrent
/// batches lock their rows in the same order.
pub(crate) struct Distinct<'a> {
    /// The distinct leases: the first copy of each.
    pub(crate) leases: Vec<&'a Lease>,
    /// For each lease of the batch, its index in `leases`, and whether it
    /// is a repeated copy.
    slots: Vec<(usize, bool)>,
}

impl<'a> Distinct<'a> {
    pub(crate) fn new(batch: &'a [Lease]) -> Self {
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|&a, &b| key(&batch[a]).cmp(&key(&batch[b])).then(a.cmp(&b)));
        let mut leases = Vec::with_capacity(batch.len());
        let mut slots = vec![(0, false); batch.len()];
        let mut seen: HashMap<(&str, &str), usize> = HashMap::with_capacity(batch.len());
        for i in order {
            match seen.get(&key(&batch[i])) {
                Some(&at) => slots[i] = (at, true),
                None => {
                    seen.insert(key(&batch[i]), leases.len());
                    slots[i] = (leases.len(), false);
                    leases.push(&batch[i]);
                }
            }
        }
        Self { leases, slots }
    }

    /// One claim per lease of the batch, from the claims of the distinct
    /// leases. A repeated copy of an acquired event is in progress: its
    /// first copy holds it.
    pub(crate) fn spread(&self, claims: &[Claim]) -> Vec<Claim> {
        self.slots
            .iter()
            .map(|&(at, repeated)| match claims[at] {
                Claim::Acquired if repeated => Claim::InProgress,
                claim => claim,
            })
            .collect()
    }
}

fn key(lease: &Lease) -> (&str, &str) {
    (&lease.group, &lease.event_id)
}

/// Calls `purge` every `every` until the task is aborted; failures are
/// logged and tried again at the next tick.
pub(crate) fn spawn_purge<F, Fut>(every: Duration, mut purge: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<u64, StoreError>> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match purge().await {
                Ok(deleted) => tracing::debug!(deleted, "dedup rows purged"),
                Err(error) => tracing::warn!(%error, "dedup purge failed; tried again later"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(event_id: &str, owner: &str) -> Lease {
        Lease { group: "g".into(), event_id: event_id.into(), owner: owner.into() }
    }

    #[test]
    fn a_repeated_event_is_claimed_once_and_answered_like_its_first_copy() {
        let batch = [lease("b", "1"), lease("a", "2"), lease("b", "3"), lease("c", "4"), lease("c", "5")];
        let distinct = Distinct::new(&batch);
        let ids: Vec<&str> = distinct.leases.iter().map(|l| &*l.event_id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(&*distinct.leases[1].owner, "1", "the first copy claims");
        let claims = distinct.spread(&[Claim::Done, Claim::Acquired, Claim::InProgress]);
        assert_eq!(claims, [Claim::Acquired, Claim::Done, Claim::InProgress, Claim::InProgress, Claim::InProgress]);
    }
}
