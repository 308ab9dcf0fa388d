//! The transaction workers: jobs taken in batches, one transaction a batch,
//! a savepoint an event, a rerun on conflict.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::{Mutex, mpsc};

use super::{Backend, CONFLICT_RERUNS, Job, Shared, TxHandler};
use crate::HandlerError;
use crate::dedup::{DedupCounters, EventId, StoreError};

/// Starts the workers that take jobs in batches; each batch is one
/// transaction.
pub(super) fn start<DB: Backend, H: TxHandler<DB>>(shared: &Arc<Shared<DB, H>>) -> mpsc::UnboundedSender<Job> {
    let (tx, rx) = mpsc::unbounded_channel();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..shared.connections {
        // The workers hold the shared state weakly: they stop once every
        // clone of the service is gone and the queue closes.
        let (shared, rx) = (Arc::downgrade(shared), rx.clone());
        tokio::spawn(async move {
            let mut carried = Vec::new();
            loop {
                let mut batch = std::mem::take(&mut carried);
                let limit = shared.upgrade().map_or(1, |s| s.max_batch);
                if batch.is_empty() {
                    if rx.lock().await.recv_many(&mut batch, limit).await == 0 {
                        return;
                    }
                } else if let Ok(mut rx) = rx.try_lock() {
                    // Never wait for the queue with jobs in hand: another
                    // worker may hold it while it waits for new jobs.
                    while batch.len() < limit {
                        let Ok(job) = rx.try_recv() else { break };
                        batch.push(job);
                    }
                }
                let Some(shared) = shared.upgrade() else { return };
                carried = run_batch(&shared, batch).await;
            }
        });
    }
    tx
}

/// One transaction for `batch`; returns the jobs left for the next one (a
/// second copy of an event already in this transaction).
async fn run_batch<DB: Backend, H: TxHandler<DB>>(shared: &Shared<DB, H>, batch: Vec<Job>) -> Vec<Job> {
    use backon::BackoffBuilder;

    let mut seen = HashSet::with_capacity(batch.len());
    let (mut now, later): (Vec<Job>, Vec<Job>) =
        batch.into_iter().partition(|job| seen.insert((job.group.clone(), job.event_id.clone())));
    // Jobs of one batch come from different lanes, so their order is free:
    // taking row locks in id order keeps concurrent transactions from
    // deadlocking on each other's dedup rows.
    now.sort_unstable_by(|a, b| (&a.group, &a.event_id).cmp(&(&b.group, &b.event_id)));
    let mut pauses = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(2))
        .with_max_delay(std::time::Duration::from_millis(250))
        .with_max_times(CONFLICT_RERUNS)
        .with_jitter()
        .build();
    let result = loop {
        match transaction(shared, &now).await {
            Err(Failure::Conflict(e)) => {
                DedupCounters::add(&shared.counters.conflicts, 1);
                let Some(pause) = pauses.next() else { break Err(e) };
                tracing::debug!(error = %e, ?pause, "transaction in conflict with another; running it again");
                tokio::time::sleep(pause).await;
            }
            Err(Failure::Database(e)) => break Err(e.to_string()),
            Ok(outcomes) => break Ok(outcomes),
        }
    };
    match result {
        Ok(outcomes) => {
            for (job, (outcome, counter)) in now.into_iter().zip(outcomes) {
                if let Some(counter) = counter {
                    DedupCounters::add(counter(&shared.counters), 1);
                }
                let _ = job.reply.send(outcome);
            }
        }
        Err(e) => {
            DedupCounters::add(&shared.counters.store_errors, 1);
            tracing::warn!(error = %e, "transaction failed; its events will be retried");
            for job in now {
                let _ = job.reply.send(Err(HandlerError::retryable(StoreError::new(e.clone()))));
            }
        }
    }
    later
}

/// A job's answer, and what to count once the transaction committed.
type Outcome = (Result<(), HandlerError>, Option<Counter>);
type Counter = fn(&DedupCounters) -> &std::sync::atomic::AtomicU64;

/// Why a transaction did not commit.
enum Failure {
    /// In conflict with a concurrent transaction: run it again.
    Conflict(String),
    /// Any other database error.
    Database(sqlx::Error),
}

impl Failure {
    fn of<DB: Backend>(error: sqlx::Error) -> Self {
        if DB::is_conflict(&error) { Self::Conflict(error.to_string()) } else { Self::Database(error) }
    }
}

/// Whether a handler's failure is its statement's conflict with a
/// concurrent transaction.
fn conflict_of<DB: Backend>(error: &HandlerError) -> Option<String> {
    let e = error.source_error().downcast_ref::<sqlx::Error>()?;
    DB::is_conflict(e).then(|| e.to_string())
}

/// Runs the jobs in one transaction and returns each outcome, in order; any
/// database error aborts the whole transaction.
///
/// The dedup rows of all jobs go in first, in one statement; then each new
/// event runs its handler after a savepoint, which is released and taken
/// again in one round trip, so that an event costs the handler's statements
/// and one more. A failed event's writes roll back to the savepoint and its
/// dedup row is deleted.
async fn transaction<DB: Backend, H: TxHandler<DB>>(
    shared: &Shared<DB, H>,
    jobs: &[Job],
) -> Result<Vec<Outcome>, Failure> {
    let mut conn = shared.pool.acquire().await.map_err(Failure::Database)?;
    DB::execute(&mut conn, DB::BEGIN).await.map_err(Failure::of::<DB>)?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    let result = async {
        let events: Vec<(&str, &str)> = jobs.iter().map(|j| (&*j.group, &*j.event_id)).collect();
        let fresh = DB::insert_processed(&mut conn, &events, &shared.consumer).await.map_err(Failure::of::<DB>)?;
        drop(events);
        let mut savepoint = false;
        for (job, fresh) in jobs.iter().zip(fresh) {
            if !fresh {
                outcomes.push((Ok(()), Some((|c| &c.hits) as Counter)));
                continue;
            }
            if !savepoint {
                DB::execute(&mut conn, "SAVEPOINT kh_event").await.map_err(Failure::of::<DB>)?;
                savepoint = true;
            }
            let mut record = job.record.clone();
            record.extensions_mut().insert(EventId(job.event_id.clone()));
            let handled = AssertUnwindSafe(shared.handler.handle(&mut conn, record)).catch_unwind().await;
            let outcome = match handled {
                Ok(outcome) => outcome,
                Err(panic) => Err(HandlerError::from_panic(panic)),
            };
            let counter: Option<Counter> = match &outcome {
                Ok(()) => {
                    DB::execute(&mut conn, "RELEASE SAVEPOINT kh_event; SAVEPOINT kh_event")
                        .await
                        .map_err(Failure::of::<DB>)?;
                    Some(|c| &c.claimed)
                }
                Err(e) => {
                    if let Some(conflict) = conflict_of::<DB>(e) {
                        return Err(Failure::Conflict(conflict));
                    }
                    DB::execute(&mut conn, "ROLLBACK TO SAVEPOINT kh_event; RELEASE SAVEPOINT kh_event")
                        .await
                        .map_err(Failure::of::<DB>)?;
                    savepoint = false;
                    DB::delete_processed(&mut conn, &job.group, &job.event_id).await.map_err(Failure::of::<DB>)?;
                    None
                }
            };
            outcomes.push((outcome, counter));
        }
        DB::execute(&mut conn, "COMMIT").await.map_err(Failure::of::<DB>)
    }
    .await;
    if result.is_err() {
        // The connection goes back to the pool: leave no transaction open.
        let _ = DB::execute(&mut conn, "ROLLBACK").await;
    }
    result.map(|()| outcomes)
}
