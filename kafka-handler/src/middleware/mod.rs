//! Failure handling as tower middleware.
//!
//! Handlers are [`tower::Service`]s (see [`Handler::into_service`](crate::Handler::into_service)),
//! so these layers compose with the ecosystem's (timeout, rate limit,
//! concurrency limit).
//!
#![doc = include_str!("../docs/failures.md")]

#[cfg(feature = "dead-letter")]
#[cfg_attr(docsrs, doc(cfg(feature = "dead-letter")))]
pub mod dead_letter;
pub mod dedup;
#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub mod retry;
#[cfg(feature = "retry-topic")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry-topic")))]
pub mod retry_topic;

#[cfg(feature = "dead-letter")]
pub use self::dead_letter::{DeadLetter, DeadLetterLayer};
pub use self::dedup::{Dedup, DedupLayer};
#[cfg(feature = "retry")]
pub use self::retry::{Retry, RetryLayer};
#[cfg(feature = "retry-topic")]
pub use self::retry_topic::{RetryTopic, RetryTopicLayer};
pub use crate::failure::RetriesExhausted;
pub use crate::retry_policy::{ExponentialBackoff, RetryPolicy};

/// Waits for `inner` to be ready and calls it, classifying any error with
/// [`HandlerError::from_error`]: what every layer here does with its inner service.
#[cfg(any(feature = "retry", feature = "retry-topic", feature = "dead-letter"))]
pub(crate) async fn call_inner<S>(inner: &mut S, record: crate::Record) -> Result<(), crate::HandlerError>
where
    S: tower::Service<crate::Record, Response = ()>,
    S::Error: Into<crate::BoxError>,
{
    use tower::ServiceExt;
    let ready = inner.ready().await.map_err(crate::HandlerError::from_error)?;
    ready.call(record).await.map_err(crate::HandlerError::from_error)
}
