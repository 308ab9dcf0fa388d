//! The kind of a permanent failure, one vocabulary for the dead letter's
//! `dlt.error.kind`, the record span's `error.type` and the dead-letter
//! metric's `kind`.

use crate::HandlerError;
use crate::dedup::{EventIdError, EventIdErrorKind};
use crate::extract::DecodeError;

/// Why a record failed for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The payload does not decode: not the handler's type, or not JSON at
    /// all when dedup reads the event id from a payload field.
    Decode,
    /// The record has no payload, and what handles it needs one.
    Tombstone,
    /// With dedup on, a valid payload without a usable event id.
    EventId,
    /// The handler panicked.
    Panic,
    /// Retries were used up.
    RetriesExhausted,
    /// Anything else the handler or a middleware called permanent.
    Permanent,
}

impl FailureKind {
    pub(crate) fn of(error: &HandlerError) -> Self {
        let source = error.source_error();
        if let Some(e) = source.downcast_ref::<DecodeError>() {
            return if e.is_tombstone() { Self::Tombstone } else { Self::Decode };
        }
        if let Some(e) = source.downcast_ref::<EventIdError>() {
            return match e.kind() {
                EventIdErrorKind::NotJson => Self::Decode,
                EventIdErrorKind::Tombstone => Self::Tombstone,
                _ => Self::EventId,
            };
        }
        if error.is_panic() {
            Self::Panic
        } else if is_exhausted(error) {
            Self::RetriesExhausted
        } else {
            Self::Permanent
        }
    }

    /// The name headers, spans and metrics give it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Tombstone => "tombstone",
            Self::EventId => "event-id",
            Self::Panic => "panic",
            Self::RetriesExhausted => "retries-exhausted",
            Self::Permanent => "permanent",
        }
    }
}

#[cfg(feature = "retry")]
fn is_exhausted(error: &HandlerError) -> bool {
    error.source_error().is::<crate::middleware::RetriesExhausted>()
}

#[cfg(not(feature = "retry"))]
fn is_exhausted(_error: &HandlerError) -> bool {
    false
}

#[cfg(all(test, feature = "json"))]
mod tests {
    use super::*;
    use crate::Record;
    use crate::dedup::EventIdSource;
    use crate::extract::{FromRecord, Json};

    fn event_id(record: Record) -> HandlerError {
        HandlerError::permanent(EventIdSource::field("id").event_id(&record).unwrap_err())
    }

    fn json(record: Record) -> HandlerError {
        Json::<serde_json::Value>::from_record(&mut record.clone()).err().unwrap()
    }

    #[test]
    fn each_failure_has_its_kind() {
        let r = |payload: &str| Record::builder("t").payload(payload.to_owned()).build();
        let tombstone = || Record::builder("t").build();
        let cases = [
            (event_id(r("{not json")), "decode"),
            (event_id(tombstone()), "tombstone"),
            (event_id(r(r#"{"x":1}"#)), "event-id"),
            (event_id(r(r#"{"id":""}"#)), "event-id"),
            (event_id(r("[1]")), "event-id"),
            (json(r("{not json")), "decode"),
            (json(tombstone()), "tombstone"),
            (HandlerError::from_panic(Box::new("boom")), "panic"),
            (HandlerError::permanent("out of stock"), "permanent"),
        ];
        for (error, kind) in cases {
            assert_eq!(FailureKind::of(&error).as_str(), kind, "{error}");
        }
    }

    #[cfg(feature = "retry")]
    #[test]
    fn exhausted_retries_are_their_own_kind() {
        let last = HandlerError::retryable("down");
        let e = HandlerError::permanent(crate::middleware::RetriesExhausted { attempts: 3, last });
        assert_eq!(FailureKind::of(&e), FailureKind::RetriesExhausted);
    }
}
