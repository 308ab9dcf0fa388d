//! The crate's error type.

use rdkafka::error::KafkaError;

/// Errors of the runtime, the producer and configuration.
///
/// Handler failures are not `Error`s: they are [`HandlerError`](crate::HandlerError)s,
/// which the runtime acts on instead of returning.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The consumer or producer was configured inconsistently.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Built-in middleware written twice, or in an order in which it cannot
    /// work: `.first(..)` must be written before `.then(..)`, since each of
    /// the builder's middleware calls wraps those written before it.
    #[error("{}", layering(first, then))]
    Layering {
        /// The builder method that must come first.
        first: &'static str,
        /// The one written before it.
        then: &'static str,
    },
    /// librdkafka reported an error.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A record could not be serialized for publishing.
    #[error("could not encode the record: {0}")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The consumer's polling thread stopped unexpectedly.
    #[error("the consumer's polling thread stopped: {0}")]
    Runtime(String),
}

fn layering(first: &str, then: &str) -> String {
    if first == then {
        format!("invalid configuration: `.{first}(..)` is written twice")
    } else {
        format!(
            "invalid configuration: `.{first}(..)` must be written before `.{then}(..)`; built-in middleware works \
             in this order, innermost first: retry, retry_topics, dedup, dead_letter"
        )
    }
}
