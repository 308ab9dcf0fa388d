//! A lane runs the handler for records that must be handled one after another.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::FutureExt;
use tokio::sync::{mpsc as tokio_mpsc, Semaphore};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use super::scheduler::{Completion, LaneKey};
use crate::{Disposition, HandlerError, Record};

pub(crate) type BoxedService = BoxCloneSyncService<Record, (), HandlerError>;

#[derive(Clone, Debug)]
pub(crate) struct LaneConfig {
    pub(crate) service: BoxedService,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) backoff: ExponentialBuilder,
}

/// Handles the lane's records in order, reporting each to the polling thread.
pub(crate) async fn run_lane(
    mut rx: tokio_mpsc::UnboundedReceiver<Record>,
    config: LaneConfig,
    completions: mpsc::Sender<Completion>,
    topic: Arc<str>,
    partition: i32,
    epoch: u64,
    lane: LaneKey,
) {
    let LaneConfig { mut service, in_flight, backoff } = config;
    while let Some(record) = rx.recv().await {
        let offset = record.offset();
        let failure = handle(&mut service, &in_flight, &backoff, record).await.err();
        let completion = Completion {
            topic: Arc::clone(&topic),
            partition,
            epoch,
            offset,
            lane: lane.clone(),
            failure,
        };
        if completions.send(completion).is_err() {
            return;
        }
    }
}

/// Runs the handler until the record succeeds or fails permanently.
///
/// A retryable failure that reaches the runtime (no retry middleware took it)
/// is retried in place with capped exponential backoff, holding its lane: the
/// runtime never skips a record a handler did not finish. A panic is a
/// permanent failure, so one poisonous record cannot stall the partition.
async fn handle(
    service: &mut BoxedService,
    in_flight: &Semaphore,
    backoff: &ExponentialBuilder,
    record: Record,
) -> Result<(), HandlerError> {
    let mut delays = backoff.build();
    let mut attempt = 1u32;
    loop {
        let result = {
            let _permit = in_flight.acquire().await.expect("the semaphore is never closed");
            let call = async { service.ready().await?.call(record.clone()).await };
            AssertUnwindSafe(call).catch_unwind().await.unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(HandlerError::permanent(format!("handler panicked: {message}")))
            })
        };
        let error = match result {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let delay = match error.disposition() {
            Disposition::Permanent => return Err(error),
            Disposition::RetryAfter(delay) => delay,
            Disposition::Retryable => delays.next().unwrap_or(std::time::Duration::from_secs(10)),
        };
        tracing::warn!(topic = record.topic(), partition = record.partition(), offset = record.offset(),
            attempt, ?delay, error = %error, "handler failed; retrying in place");
        attempt += 1;
        tokio::time::sleep(delay).await;
    }
}
