//! In-place retries with backoff.
//!
//! The record's lane waits during the backoff, so records behind it in the
//! same partition (or key) wait too; that keeps order. When the policy gives
//! up, the last error becomes a permanent [`RetriesExhausted`] failure, which
//! a [`DeadLetterLayer`](super::DeadLetterLayer) outside it sends to the
//! dead-letter topic, and which a [`RetryTopicLayer`](super::RetryTopicLayer)
//! outside it sends to the next retry topic instead when the last failure was
//! retryable: each delivery from a retry topic gets the in-place retries
//! again. Each attempt's number is in the record's extensions as
//! [`Attempt`], counted across both.

mod layer;

use std::task::{Context, Poll};

use tower::Service;

pub use self::layer::RetryLayer;
use crate::extract::Attempt;
pub use crate::failure::RetriesExhausted;
use crate::handler::BoxHandlerFuture;
use crate::outcome::BoxError;
pub use crate::retry_policy::{ExponentialBackoff, RetryPolicy};
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(HandlerError::from_error)
    }

    fn call(&mut self, record: Record) -> Self::Future {
        // The ready service makes the first attempt; the clone stays here.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        Box::pin(async move {
            // A stage outside (a retry topic) may have counted attempts already.
            let first = record.extensions().get::<Attempt>().map_or(1, |a| a.0);
            let mut attempt = first;
            loop {
                let mut this = record.clone();
                this.extensions_mut().insert(Attempt(attempt));
                let Err(error) = super::call_inner(&mut inner, this).await else {
                    return Ok(());
                };
                match policy.retry(attempt - first + 1, &error) {
                    Some(delay) => {
                        tracing::warn!(topic = record.topic(), partition = record.partition(),
                            offset = record.offset(), attempt, ?delay, error = %error, "retrying");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                        crate::metrics::Meters::of(&record).retry(attempt);
                    }
                    None if attempt == first => return Err(error),
                    None => return Err(RetriesExhausted::after(attempt, error)),
                }
            }
        })
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
