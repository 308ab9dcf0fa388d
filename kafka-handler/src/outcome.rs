//! What a handler says about a record it could not handle.

use std::fmt;
use std::time::Duration;

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A handler's failure, typed by what the runtime should do about it.
///
/// The runtime never guesses from error messages: a handler (or a middleware)
/// decides whether a failure is worth retrying.
///
/// ```
/// use std::time::Duration;
/// use kafka_handler::{HandlerError, Disposition};
///
/// let e = HandlerError::permanent("amount is negative");
/// assert_eq!(e.disposition(), Disposition::Permanent);
///
/// let e = HandlerError::retry_after(Duration::from_secs(2), "gateway asked us to slow down");
/// assert_eq!(e.disposition(), Disposition::RetryAfter(Duration::from_secs(2)));
///
/// // Any other error becomes retryable through `?` in a handler returning
/// // `Result<(), E>`; see `IntoOutcome`.
/// let io = std::io::Error::other("connection reset");
/// assert_eq!(HandlerError::from_error(io).disposition(), Disposition::Retryable);
/// ```
pub struct HandlerError {
    disposition: Disposition,
    source: BoxError,
}

/// What the runtime does with a failed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// A technical failure that may pass: try the record again.
    Retryable,
    /// Try again, but not before this long.
    RetryAfter(Duration),
    /// Retrying cannot help (bad input, a business rule): never retried.
    Permanent,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retryable(source: impl Into<BoxError>) -> Self {
        Self { disposition: Disposition::Retryable, source: source.into() }
    }

    /// A failure worth retrying after `delay`.
    pub fn retry_after(delay: Duration, source: impl Into<BoxError>) -> Self {
        Self { disposition: Disposition::RetryAfter(delay), source: source.into() }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self { disposition: Disposition::Permanent, source: source.into() }
    }

    /// Classifies any error: a `HandlerError` (also one boxed by a middleware)
    /// keeps its disposition, anything else is retryable.
    pub fn from_error(error: impl Into<BoxError>) -> Self {
        match error.into().downcast::<HandlerError>() {
            Ok(handler_error) => *handler_error,
            Err(other) => Self::retryable(other),
        }
    }

    /// What the runtime should do.
    pub fn disposition(&self) -> Disposition {
        self.disposition
    }

    /// The underlying error.
    pub fn source_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// Whether the failure was caused by a record whose payload did not
    /// decode: not the type the handler takes, not JSON where dedup reads the
    /// event id from a JSON field, or no payload at all (a tombstone).
    pub fn is_decode(&self) -> bool {
        use crate::failure::FailureKind;
        matches!(FailureKind::of(self), FailureKind::Decode | FailureKind::Tombstone)
    }

    /// Consumes the error, returning the underlying error.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError").field("disposition", &self.disposition).field("source", &self.source).finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.disposition {
            Disposition::Retryable => "retryable",
            Disposition::RetryAfter(_) => "retry later",
            Disposition::Permanent => "permanent",
        };
        write!(f, "{kind} failure: {}", self.source)
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A handler panicked; the runtime and the middleware treat it as a
/// permanent failure, so one poisonous record cannot stall a partition.
#[derive(Debug)]
pub(crate) struct Panicked(String);

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler panicked: {}", self.0)
    }
}

impl std::error::Error for Panicked {}

impl HandlerError {
    /// A caught panic, as a permanent failure.
    pub(crate) fn from_panic(panic: Box<dyn std::any::Any + Send>) -> Self {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Self::permanent(Panicked(message))
    }

    /// Whether the failure is a caught handler panic.
    pub(crate) fn is_panic(&self) -> bool {
        self.source.is::<Panicked>()
    }
}

/// What a handler may return.
///
/// Implemented for `()` (always success), `Result<(), HandlerError>`, and
/// `Result<(), E>` for any other error `E` (classified by
/// [`HandlerError::from_error`]: retryable unless it is a boxed `HandlerError`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler outcome",
    label = "handlers return `()` or `Result<(), E>`",
    note = "return `Result<(), HandlerError>` to say whether a failure is retryable or permanent"
)]
pub trait IntoOutcome {
    /// Converts the handler's return value into the runtime's outcome.
    fn into_outcome(self) -> Result<(), HandlerError>;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl<E: Into<BoxError>> IntoOutcome for Result<(), E> {
    fn into_outcome(self) -> Result<(), HandlerError> {
        self.map_err(HandlerError::from_error)
    }
}

/// Marks an error with the disposition the caller knows it has.
///
/// ```
/// use kafka_handler::{HandlerError, ResultExt};
///
/// fn parse(amount: &str) -> Result<u64, HandlerError> {
///     amount.parse::<u64>().permanent()
/// }
/// assert!(parse("12x").is_err());
/// ```
pub trait ResultExt<T> {
    /// On error, a [`HandlerError::permanent`].
    fn permanent(self) -> Result<T, HandlerError>;
    /// On error, a [`HandlerError::retryable`].
    fn retryable(self) -> Result<T, HandlerError>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for Result<T, E> {
    fn permanent(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::permanent)
    }

    fn retryable(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::retryable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_handler_error_keeps_its_disposition() {
        let boxed: BoxError = Box::new(HandlerError::permanent("bad"));
        assert_eq!(HandlerError::from_error(boxed).disposition(), Disposition::Permanent);
    }

    #[test]
    fn results_convert() {
        let r: Result<(), std::io::Error> = Err(std::io::Error::other("x"));
        assert_eq!(r.into_outcome().unwrap_err().disposition(), Disposition::Retryable);
        assert!(().into_outcome().is_ok());
    }
}
