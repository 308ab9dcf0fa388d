//! Failure handling as tower middleware.
//!
//! Handlers are [`tower::Service`]s (see [`Handler::into_service`](crate::Handler::into_service)),
//! so these layers compose with the ecosystem's (timeout, rate limit,
//! concurrency limit).
//!
#![doc = include_str!("../../../docs/failures.md")]

#[cfg(feature = "dead-letter")]
#[cfg_attr(docsrs, doc(cfg(feature = "dead-letter")))]
pub mod dead_letter;
#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub mod retry;
#[cfg(feature = "retry-topic")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry-topic")))]
pub mod retry_topic;

#[cfg(feature = "dead-letter")]
pub use self::dead_letter::{DeadLetter, DeadLetterLayer};
#[cfg(feature = "retry")]
pub use self::retry::{ExponentialBackoff, RetriesExhausted, Retry, RetryLayer, RetryPolicy};
#[cfg(feature = "retry-topic")]
pub use self::retry_topic::{RetryTopic, RetryTopicLayer};
