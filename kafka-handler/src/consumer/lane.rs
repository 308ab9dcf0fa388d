//! A lane runs the handler for records that must be handled one after another.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::task::Poll;
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc as tokio_mpsc};

use super::attempt::{self, Attempt, Started};
use super::completion::{Completion, LaneId};
use crate::metrics::Meters;
use crate::record_span::{self, Scope};
use crate::retry_policy::{ExponentialBackoff, RetryPolicy};
use crate::{HandlerError, Record};

pub(crate) use super::service::RecordService as BoxedService;

#[derive(Clone, Debug)]
pub(crate) struct LaneConfig {
    pub(crate) service: BoxedService,
    pub(crate) in_flight: Arc<Semaphore>,
    /// The runtime's own retries, for failures no retry middleware took.
    pub(crate) fallback: ExponentialBackoff,
}

/// Finished records are reported at the latest when this many are waiting.
const REPORT_BATCH: usize = 256;

/// Handles the lane's records in order, reporting finished ones to the
/// polling thread in batches: when the lane runs dry, when a batch is full,
/// and before waiting on a handler that did not finish at once — so a slow
/// record never holds back the report of the fast ones before it.
///
/// Once `retired` is set (its partition was given up), the call in progress
/// runs to its end but nothing more starts: no queued record, no retry. A
/// handler is never cut off halfway through its effect, and a dedup claim it
/// holds is completed or released rather than left to expire.
pub(crate) async fn run_lane(
    mut rx: tokio_mpsc::UnboundedReceiver<Record>,
    config: LaneConfig,
    completions: mpsc::Sender<Completion>,
    lane: LaneId,
    first: Option<Started>,
    retired: Arc<AtomicBool>,
) {
    let LaneConfig { mut service, in_flight, fallback } = config;
    let mut records = Vec::with_capacity(64);
    let mut finished = Vec::new();
    let report = |finished: &mut Vec<(i64, Option<HandlerError>)>| {
        let finished = std::mem::replace(finished, Vec::with_capacity(16));
        let c = Completion { lane: lane.clone(), finished };
        completions.send(c).is_ok()
    };
    if let Some(Started { record, attempt, span }) = first {
        let offset = record.offset();
        let call = handle(&mut service, &in_flight, &fallback, &retired, record, Some(attempt));
        let failure = Scope::run(span, call).await.err();
        finished.push((offset, failure));
        if rx.is_empty() && !report(&mut finished) {
            return;
        }
    }
    while rx.recv_many(&mut records, 1024).await > 0 {
        for record in records.drain(..) {
            if retired.load(Relaxed) {
                return;
            }
            let offset = record.offset();
            let span = record_span::open(&record);
            let call = Scope::run(span, handle(&mut service, &in_flight, &fallback, &retired, record, None));
            tokio::pin!(call);
            let failure = match futures::poll!(&mut call) {
                Poll::Ready(result) => result.err(),
                Poll::Pending => {
                    if !finished.is_empty() && !report(&mut finished) {
                        return;
                    }
                    call.await.err()
                }
            };
            finished.push((offset, failure));
            if finished.len() >= REPORT_BATCH && !report(&mut finished) {
                return;
            }
        }
        if !finished.is_empty() && rx.is_empty() && !report(&mut finished) {
            return;
        }
    }
}

/// Runs the handler until the record succeeds or fails permanently, going on
/// from the first attempt if the polling thread `started` it.
///
/// A retryable failure that reaches the runtime (no retry middleware took it)
/// is retried in place by the `fallback` policy, holding its lane: the
/// runtime never skips a record a handler did not finish. A panic is a
/// permanent failure, so one poisonous record cannot stall the partition.
async fn handle(
    service: &mut BoxedService,
    in_flight: &Semaphore,
    fallback: &ExponentialBackoff,
    retired: &AtomicBool,
    record: Record,
    started: Option<Attempt>,
) -> Result<(), HandlerError> {
    let meters = Meters::of(&record);
    let mut failed = match started {
        None => None,
        Some(Attempt::Running(call, permit, waiting_since)) => {
            let waited = match permit {
                Some(_) => None,
                None => Some(in_flight.acquire().await.expect("the semaphore is never closed")),
            };
            let result = attempt::finish(call, waiting_since, &meters).await;
            drop((permit, waited));
            match result {
                Ok(()) => return Ok(()),
                Err(error) => Some(error),
            }
        }
        Some(Attempt::Failed(error)) => Some(error),
    };
    let mut attempt = 1u32;
    loop {
        if let Some(error) = failed.take() {
            if retired.load(Relaxed) {
                return Err(error);
            }
            let Some(delay) = fallback.retry(attempt, &error) else {
                return Err(error);
            };
            tracing::warn!(topic = record.topic(), partition = record.partition(), offset = record.offset(),
                attempt, ?delay, error = %error, "handler failed; retrying in place");
            attempt += 1;
            tokio::time::sleep(delay).await;
            meters.retry(attempt);
        }
        let result = {
            let _permit = in_flight.acquire().await.expect("the semaphore is never closed");
            attempt::finish(service.ready_call(record.clone()), Instant::now(), &meters).await
        };
        match result {
            Ok(()) => return Ok(()),
            Err(error) => failed = Some(error),
        }
    }
}
