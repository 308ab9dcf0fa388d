//! What runtime and middleware agree on about a failure: its kind, one
//! vocabulary for the dead letter's `dlt.error.kind`, the record span's
//! `error.type` and the dead-letter metric's `kind`; and [`RetriesExhausted`],
//! how a retry stage hands its last failure and its attempt count to the
//! stage outside it.

use std::fmt;

use crate::dedup::{EventIdError, EventIdErrorKind};
use crate::extract::DecodeError;
use crate::{Disposition, HandlerError};

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

fn is_exhausted(error: &HandlerError) -> bool {
    error.source_error().is::<RetriesExhausted>()
}

/// A retry stage gave up: how many attempts were made and the last failure.
///
/// It is a permanent failure, so the stages outside a retry layer see it as
/// one (the dead-letter topic takes it), with one exception: a retry-topic
/// stage outside in-place retries goes on with the record when the last
/// failure itself was retryable, counting the attempts already made.
#[derive(Debug)]
pub struct RetriesExhausted {
    /// Attempts made, the first included: the last attempt's number.
    pub attempts: u32,
    /// The last attempt's failure.
    pub last: HandlerError,
}

#[cfg_attr(not(feature = "retry"), allow(dead_code))]
impl RetriesExhausted {
    /// The permanent failure that ends a retry stage after attempt `attempts`
    /// failed with `last`. A `last` that is itself exhausted retries (from
    /// a stage inside) is not wrapped twice.
    pub(crate) fn after(attempts: u32, last: HandlerError) -> HandlerError {
        let (attempts, last) = match Self::take(last) {
            Ok(inner) => (inner.attempts.max(attempts), inner.last),
            Err(last) => (attempts, last),
        };
        HandlerError::permanent(Self { attempts, last })
    }

    /// Splits an exhausted failure into its parts; any other comes back as is.
    pub(crate) fn take(error: HandlerError) -> Result<Self, HandlerError> {
        if !error.source_error().is::<Self>() {
            return Err(error);
        }
        let disposition = error.disposition();
        match error.into_source().downcast::<Self>() {
            Ok(exhausted) => Ok(*exhausted),
            Err(source) => Err(match disposition {
                Disposition::Permanent => HandlerError::permanent(source),
                Disposition::RetryAfter(d) => HandlerError::retry_after(d, source),
                Disposition::Retryable => HandlerError::retryable(source),
            }),
        }
    }

    /// For a stage that retries after in-place retries: the last attempt's
    /// number and the failure to act on. An exhausted failure whose last
    /// failure was not permanent gives that failure, so the record goes on;
    /// any other failure is the failure of attempt `attempt`.
    #[cfg(feature = "retry-topic")]
    pub(crate) fn resume(error: HandlerError, attempt: u32) -> (u32, HandlerError) {
        match Self::take(error) {
            Ok(exhausted) if exhausted.last.disposition() != Disposition::Permanent => {
                (exhausted.attempts, exhausted.last)
            }
            Ok(exhausted) => (exhausted.attempts, HandlerError::permanent(exhausted)),
            Err(error) => (attempt, error),
        }
    }

    /// How many attempts a record had when it failed with `error`: the count
    /// an exhausted retry stage reports, else `attempt`.
    #[cfg(feature = "dead-letter")]
    pub(crate) fn attempts_of(error: &HandlerError, attempt: u32) -> u32 {
        error.source_error().downcast_ref::<Self>().map_or(attempt, |e| e.attempts)
    }
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

    #[test]
    fn exhausted_retries_are_their_own_kind() {
        let e = RetriesExhausted::after(3, HandlerError::retryable("down"));
        assert_eq!(FailureKind::of(&e), FailureKind::RetriesExhausted);
    }

    #[test]
    fn exhausted_retries_nest_once_and_resume_when_the_last_failure_was_retryable() {
        let inner = RetriesExhausted::after(3, HandlerError::retryable("down"));
        let outer = RetriesExhausted::after(2, inner);
        let exhausted = outer.source_error().downcast_ref::<RetriesExhausted>().unwrap();
        assert_eq!(exhausted.attempts, 3);
        assert!(!exhausted.last.source_error().is::<RetriesExhausted>());
        assert_eq!(RetriesExhausted::attempts_of(&outer, 1), 3);

        let (attempt, error) = RetriesExhausted::resume(RetriesExhausted::after(3, HandlerError::retryable("down")), 1);
        assert_eq!((attempt, error.disposition()), (3, Disposition::Retryable));
        let (attempt, error) = RetriesExhausted::resume(RetriesExhausted::after(3, HandlerError::permanent("bad")), 1);
        assert_eq!((attempt, error.disposition()), (3, Disposition::Permanent));
        let (attempt, error) = RetriesExhausted::resume(HandlerError::retryable("down"), 4);
        assert_eq!((attempt, error.disposition()), (4, Disposition::Retryable));
    }
}
