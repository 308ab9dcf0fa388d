//! In-place retries with backoff.
//!
//! The record's lane waits during the backoff, so records behind it in the
//! same partition (or key) wait too; that keeps order. When the policy gives
//! up, the last error becomes a permanent [`RetriesExhausted`] failure, which
//! a [`DeadLetterLayer`](super::DeadLetterLayer) outside it sends to the
//! dead-letter topic. Each attempt's number is in the record's extensions as
//! [`Attempt`].

mod layer;
mod policy;

use std::fmt;
use std::task::{Context, Poll};

use tower::Service;

pub use self::layer::RetryLayer;
pub use self::policy::{ExponentialBackoff, RetryPolicy};
use crate::extract::Attempt;
use crate::handler::BoxHandlerFuture;
use crate::outcome::BoxError;
use crate::{HandlerError, Record};

/// Retries the inner service's failures as its policy says.
#[derive(Clone, Debug)]
pub struct Retry<S, P> {
    inner: S,
    policy: P,
}

impl<S, P> Retry<S, P> {
    /// Wraps `inner`.
    pub fn new(inner: S, policy: P) -> Self {
        Self { inner, policy }
    }
}

impl<S, P> Service<Record> for Retry<S, P>
where
    S: Service<Record, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send,
    P: RetryPolicy,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxHandlerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, record: Record) -> Self::Future {
        let mut inner = self.inner.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let mut attempt = 1;
            loop {
                let mut this = record.clone();
                this.extensions_mut().insert(Attempt(attempt));
                let Err(error) = super::call_inner(&mut inner, this).await else {
                    return Ok(());
                };
                match policy.retry(attempt, &error) {
                    Some(delay) => {
                        tracing::warn!(topic = record.topic(), partition = record.partition(),
                            offset = record.offset(), attempt, ?delay, error = %error, "retrying");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                        crate::metrics::Meters::of(&record).retry(attempt);
                    }
                    None if attempt == 1 => return Err(error),
                    None => return Err(HandlerError::permanent(RetriesExhausted { attempts: attempt, last: error })),
                }
            }
        })
    }
}

/// The retry policy gave up: how many attempts were made and the last failure.
#[derive(Debug)]
pub struct RetriesExhausted {
    /// Attempts made, the first included.
    pub attempts: u32,
    /// The last attempt's failure.
    pub last: HandlerError,
}

impl fmt::Display for RetriesExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gave up after {} attempts: {}", self.attempts, self.last.source_error())
    }
}

impl std::error::Error for RetriesExhausted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.last)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::{Disposition, Handler};

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_with_the_policy_delays() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let handler = move |Attempt(n): Attempt| {
            let c = c.clone();
            async move {
                assert_eq!(c.fetch_add(1, Ordering::SeqCst) + 1, n, "attempt numbers count up");
                if n < 3 { Err(HandlerError::retryable("down")) } else { Ok(()) }
            }
        };
        let policy = ExponentialBackoff::default().without_jitter();
        let mut svc = RetryLayer::with_policy(policy).layer(handler.into_service());
        let started = tokio::time::Instant::now();
        svc.ready().await.unwrap().call(Record::builder("t").build()).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(3), "1 s + 2 s of backoff");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_with_a_permanent_retries_exhausted() {
        let handler = || async { Err::<(), _>(HandlerError::retryable("down")) };
        let mut svc =
            RetryLayer::with_policy(ExponentialBackoff::default().max_retries(2)).layer(handler.into_service());
        let err = svc.ready().await.unwrap().call(Record::builder("t").build()).await.unwrap_err();
        assert_eq!(err.disposition(), Disposition::Permanent);
        let exhausted = err.source_error().downcast_ref::<RetriesExhausted>().unwrap();
        assert_eq!(exhausted.attempts, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let handler = move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(HandlerError::permanent("bad")) }
        };
        let mut svc = RetryLayer::new().layer(handler.into_service());
        let err = svc.ready().await.unwrap().call(Record::builder("t").build()).await.unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(err.source_error().downcast_ref::<RetriesExhausted>().is_none());
    }
}
