//! Extractors: take a record apart into the values a handler asks for.
//!
//! Every argument of a handler function implements [`FromRecord`]. A handler
//! asks only for what it needs, in the spirit of axum's extractors:
//!
//! ```
//! use kafka_handler::extract::{Json, Key, Metadata};
//! # #[derive(serde::Deserialize)] struct OrderCreated { order_id: u64 }
//!
//! async fn handle(meta: Metadata, Key(user): Key, Json(order): Json<OrderCreated>) {
//!     println!("{}@{} for {:?}: order {}", meta.topic, meta.offset, user, order.order_id);
//! }
//! ```
//!
//! An extractor that fails makes the record fail with the extractor's
//! [`HandlerError`]: a payload that does not decode is a *permanent* failure,
//! never retried and never silently skipped.

#[cfg(feature = "json")]
mod json;
mod metadata;

use std::fmt;

#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub use self::json::Json;
pub use self::metadata::{Attempt, Group, Headers, Key, Metadata, Payload, State};
pub use crate::dedup::EventId;
pub use crate::provenance::Origin;

use crate::{HandlerError, Record};

/// Something a handler can take as an argument, built from the record.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be taken from a Kafka record",
    label = "not an extractor",
    note = "handler arguments must implement `FromRecord`: `Json<T>`, `Key`, `Payload`, `Headers`, `Metadata`, `Origin`, `Attempt`, `Group`, `EventId`, `State<T>` or `Record`",
    note = "for a payload type that implements `serde::Deserialize`, ask for `Json<{Self}>`"
)]
pub trait FromRecord: Sized {
    /// Extracts the value. Extractors run in argument order; one may take a
    /// value out of the record's extensions.
    fn from_record(record: &mut Record) -> Result<Self, HandlerError>;

    /// Whether the extractor may read the record's headers. The runtime copies
    /// a record's headers out of librdkafka only when something may read them.
    #[doc(hidden)]
    const __READS_HEADERS: bool = true;
}

impl FromRecord for Record {
    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        Ok(record.clone())
    }
}

impl<T: FromRecord> FromRecord for Option<T> {
    fn from_record(record: &mut Record) -> Result<Self, HandlerError> {
        Ok(T::from_record(record).ok())
    }

    const __READS_HEADERS: bool = T::__READS_HEADERS;
}

/// A record's payload could not be decoded into the handler's type.
///
/// Always a [permanent](crate::Disposition::Permanent) failure.
#[derive(Debug)]
pub struct DecodeError {
    reason: String,
    tombstone: bool,
}

impl DecodeError {
    /// A decode failure with the given reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), tombstone: false }
    }

    /// The record has no payload (a tombstone) to decode.
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    pub(crate) fn tombstone() -> Self {
        Self { reason: "the record has no payload (a tombstone)".into(), tombstone: true }
    }

    /// Whether the record had no payload at all.
    pub(crate) fn is_tombstone(&self) -> bool {
        self.tombstone
    }

    /// Why the payload did not decode.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "payload does not decode: {}", self.reason)
    }
}

impl std::error::Error for DecodeError {}
