//! The dead-letter topic: where records go that will never succeed, with the
//! reason on the record.
//!
//! A record that fails permanently — a business rule, a payload that does not
//! decode, a handler panic, retries exhausted — is published to
//! `<original topic>.dlt` with its original key, value and headers plus
//! provenance headers, and only once the broker acknowledged the dead letter
//! is the record finished and its offset stored. A crash in between may write
//! a dead letter twice; it never loses one. If the dead letter cannot be
//! written the record fails *retryably*, so the runtime tries again instead
//! of moving on.
//!
//! | header | value |
//! | --- | --- |
//! | `dlt.original.topic`, `dlt.original.partition`, `dlt.original.offset` | where the record was |
//! | `dlt.original.timestamp` | its timestamp, ms since the epoch (if it had one) |
//! | `dlt.group` | the consumer group that gave up on it |
//! | `dlt.error.kind` | `decode` (the payload does not decode, also when dedup reads the event id from a payload that is not JSON), `tombstone` (no payload, and the handler or dedup needs one), `event-id` (with dedup on, a valid payload without a usable event id: missing or malformed), `panic`, `retries-exhausted` or `permanent` |
//! | `dlt.error.message` | the error, as text |
//! | `dlt.attempts` | how many attempts were made |
//! | `dlt.payload.dropped` | only when the payload was too large for the dead-letter topic: its size; the dead letter then has no value |
//!
//! The original topic is where the record first was, before any retry topic:
//! see [`Origin`](crate::extract::Origin). The dead letter's `dlt.*` headers
//! are the runtime's only: a record's own headers of those names are not
//! copied, nor its `retry.*` ones unless it came from the group's own retry
//! or re-drive topic.

mod layer;

use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures::FutureExt;
use tower::Service;

pub use self::layer::DeadLetterLayer;
use crate::extract::{Attempt, Group, Origin};
use crate::failure::{FailureKind, RetriesExhausted};
use crate::handler::BoxHandlerFuture;
use crate::outcome::BoxError;
use crate::provenance;
use crate::{Disposition, HandlerError, Outgoing, Record};

/// Header names of the provenance a dead letter carries.
pub mod headers {
    /// The topic the record was read from.
    pub const ORIGINAL_TOPIC: &str = "dlt.original.topic";
    /// Its partition.
    pub const ORIGINAL_PARTITION: &str = "dlt.original.partition";
    /// Its offset.
    pub const ORIGINAL_OFFSET: &str = "dlt.original.offset";
    /// Its timestamp, ms since the Unix epoch.
    pub const ORIGINAL_TIMESTAMP: &str = "dlt.original.timestamp";
    /// The consumer group that gave up.
    pub const GROUP: &str = "dlt.group";
    /// `decode`, `tombstone`, `event-id`, `panic`, `retries-exhausted` or `permanent`.
    pub const ERROR_KIND: &str = "dlt.error.kind";
    /// The error message.
    pub const ERROR_MESSAGE: &str = "dlt.error.message";
    /// Attempts made.
    pub const ATTEMPTS: &str = "dlt.attempts";
    /// Present when the payload was too large for the dead-letter topic and
    /// was left out: its size in bytes. Read it from the original offset.
    pub const PAYLOAD_DROPPED: &str = "dlt.payload.dropped";
}

pub(crate) use crate::provenance::redrive_topic;

/// Publishes permanently failed records to the dead-letter topic.
#[derive(Clone, Debug)]
pub struct DeadLetter<S> {
    inner: S,
    config: DeadLetterLayer,
}

impl<S> Service<Record> for DeadLetter<S>
where
    S: Service<Record, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxHandlerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(HandlerError::from_error)
    }

    fn call(&mut self, record: Record) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let call = super::call_inner(&mut inner, record.clone());
            let (error, kind) = match AssertUnwindSafe(call).catch_unwind().await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) if error.disposition() != Disposition::Permanent => return Err(error),
                Ok(Err(error)) => {
                    let kind = FailureKind::of(&error).as_str();
                    (error, kind)
                }
                Err(panic) => (HandlerError::from_panic(panic), "panic"),
            };
            let attempt = record.extensions().get::<Attempt>().map_or(1, |a| a.0);
            let attempts = RetriesExhausted::attempts_of(&error, attempt);
            let letter = dead_letter(&config, &record, &error, kind, attempts, true);
            let topic = letter.topic().to_owned();
            let mut result = config.producer.send(letter).await;
            if result.as_ref().is_err_and(is_too_large) {
                // Keep the provenance even when the payload cannot travel.
                let dropped = dead_letter(&config, &record, &error, kind, attempts, false)
                    .header(headers::PAYLOAD_DROPPED, record.payload().map_or(0, <[u8]>::len).to_string());
                result = config.producer.send(dropped).await;
            }
            match result {
                Ok(at) => {
                    crate::record_span::forwarded(&topic, kind, &error);
                    crate::metrics::Meters::of(&record).dead_letter(&Origin::of(&record).topic, kind);
                    tracing::warn!(topic = record.topic(), partition = record.partition(), offset = record.offset(),
                        dlt_partition = at.partition, dlt_offset = at.offset, kind, error = %error,
                        "record sent to the dead-letter topic");
                    Ok(())
                }
                Err(e) => Err(HandlerError::retryable(format!("could not write the dead letter: {e}"))),
            }
        })
    }
}

/// The dead letter is larger than the producer or the topic accepts.
fn is_too_large(error: &crate::Error) -> bool {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge;
    matches!(error, crate::Error::Kafka(KafkaError::MessageProduction(MessageSizeTooLarge)))
}

fn dead_letter(
    config: &DeadLetterLayer,
    record: &Record,
    error: &HandlerError,
    kind: &str,
    attempts: u32,
    with_payload: bool,
) -> Outgoing {
    let Origin { topic: original_topic, partition, offset, timestamp, .. } = Origin::of(record);
    let topic = format!("{original_topic}{}", config.suffix);
    let payload = if with_payload { record.payload().map(bytes::Bytes::copy_from_slice) } else { None };
    let mut out = Outgoing::from_parts(topic, record.key().map(bytes::Bytes::copy_from_slice), payload);
    for h in provenance::carried(record, provenance::trusted(record)) {
        out = out.raw_header(h.name.clone(), h.value.clone());
    }
    let group = record.lookup::<Group>().map(|g| g.0.to_string()).unwrap_or_default();
    out = out
        .header(headers::ORIGINAL_TOPIC, original_topic)
        .header(headers::ORIGINAL_PARTITION, partition.to_string())
        .header(headers::ORIGINAL_OFFSET, offset.to_string())
        .header(headers::GROUP, group)
        .header(headers::ERROR_KIND, kind.to_owned())
        .header(headers::ERROR_MESSAGE, error.source_error().to_string())
        .header(headers::ATTEMPTS, attempts.to_string());
    if let Some(ts) = timestamp {
        out = out.header(headers::ORIGINAL_TIMESTAMP, ts.to_string());
    }
    out
}
