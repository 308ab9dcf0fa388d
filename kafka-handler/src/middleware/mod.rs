//! Failure handling as tower middleware.
//!
//! Handlers are [`tower::Service`]s (see [`Handler::into_service`](crate::Handler::into_service)),
//! so these layers compose with the ecosystem's (timeout, rate limit,
//! concurrency limit). Add them on the builder, innermost first:
//!
//! ```no_run
//! use kafka_handler::middleware::{DeadLetterLayer, RetryLayer};
//! use kafka_handler::{Consumer, Producer};
//! # async fn handle() {}
//! # fn run() -> Result<(), kafka_handler::Error> {
//! let producer = Producer::builder().from_env().build()?;
//! let consumer = Consumer::builder()
//!     .from_env()
//!     .group_id("inventory")
//!     .topic("order.created")
//!     .handler(handle)
//!     .layer(RetryLayer::new()) // 1 s → 2 s → 4 s, then give up
//!     .layer(DeadLetterLayer::new(producer)) // give-ups and permanent failures → order.created.dlt
//!     .build()?;
//! # Ok(()) }
//! ```

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
