//! One attempt of a record: how it starts, how it ends.
//!
//! Both ways of starting a record know this module and nothing of each
//! other: [`inline`](super::inline) polls a call once on the polling thread
//! and makes a [`Started`] of what did not finish, a [`lane`](super::lane)
//! goes on with it or makes its own calls. Whichever way, a call ends here:
//! a panic is a permanent failure, and a call that waited reports its time
//! and outcome to the metrics.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::FutureExt;
use tokio::sync::OwnedSemaphorePermit;

use crate::handler::BoxHandlerFuture;
use crate::metrics::Meters;
use crate::record_span::Scope;
use crate::{HandlerError, Record};

/// Polls `call` once; a panic is a permanent failure.
pub(crate) fn poll_once(call: &mut BoxHandlerFuture, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
    std::panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx)))
        .unwrap_or_else(|panic| Poll::Ready(Err(HandlerError::from_panic(panic))))
}

/// Runs `call` to its end, waiting since `since`; a panic is a permanent
/// failure, and the time and outcome go to `meters`.
pub(crate) async fn finish(
    call: impl Future<Output = Result<(), HandlerError>>,
    since: Instant,
    meters: &Meters,
) -> Result<(), HandlerError> {
    let result = AssertUnwindSafe(call).catch_unwind().await.unwrap_or_else(|p| Err(HandlerError::from_panic(p)));
    meters.handler_call(since.elapsed(), &result);
    result
}

/// A record whose first attempt the polling thread started and that did not
/// finish at once: the lane takes it over.
pub(crate) struct Started {
    pub(crate) record: Record,
    pub(crate) attempt: Attempt,
    /// The record's span or trace context, opened when its first attempt
    /// started.
    pub(crate) span: Option<Scope>,
}

pub(crate) enum Attempt {
    /// Still running, holding its in-flight slot (`None` if a lane took the
    /// last slot after the first poll: the call then waits for one before it
    /// goes on); waiting since the instant.
    Running(BoxHandlerFuture, Option<OwnedSemaphorePermit>, Instant),
    /// Failed with a retryable error.
    Failed(HandlerError),
}
