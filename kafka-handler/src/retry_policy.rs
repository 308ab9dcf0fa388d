//! When a failed record is tried again: the policy that in-place retries
//! and the runtime's own fallback share.

use std::time::Duration;

use backon::BackoffBuilder;

use crate::{Disposition, HandlerError};

/// Decides whether, and after how long, a failed record is tried again.
///
/// ```
/// use std::time::Duration;
/// use kafka_handler::middleware::{ExponentialBackoff, RetryPolicy};
/// use kafka_handler::HandlerError;
///
/// // The domain's default: three retries, 1 s → 2 s → 4 s, capped at 10 s.
/// let policy = ExponentialBackoff::default().without_jitter();
/// let down = HandlerError::retryable("gateway timeout");
/// let delays: Vec<_> = (1..=4).map(|attempt| policy.retry(attempt, &down)).collect();
/// assert_eq!(delays, [Some(Duration::from_secs(1)), Some(Duration::from_secs(2)), Some(Duration::from_secs(4)), None]);
///
/// // Permanent failures are never retried.
/// assert_eq!(policy.retry(1, &HandlerError::permanent("out of stock")), None);
/// ```
pub trait RetryPolicy: Clone + Send + Sync + 'static {
    /// After attempt number `attempt` (1 for the first) failed with `error`:
    /// the delay before the next attempt, or `None` to give up.
    fn retry(&self, attempt: u32, error: &HandlerError) -> Option<Duration>;
}

/// Exponential backoff for retryable failures, honouring
/// [`HandlerError::retry_after`]; never retries permanent ones.
#[derive(Clone, Copy, Debug)]
pub struct ExponentialBackoff {
    initial: Duration,
    factor: f32,
    max_delay: Duration,
    max_retries: u32,
    jitter: bool,
}

impl Default for ExponentialBackoff {
    /// Three retries, starting at 1 s, doubling, capped at 10 s, with jitter.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(10),
            max_retries: 3,
            jitter: true,
        }
    }
}

impl ExponentialBackoff {
    /// The first delay.
    pub fn initial(mut self, delay: Duration) -> Self {
        self.initial = delay;
        self
    }

    /// Each delay is the previous one times `factor`.
    pub fn factor(mut self, factor: f32) -> Self {
        self.factor = factor;
        self
    }

    /// No delay is longer than this.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How many times a record is tried again before giving up.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Retries for as long as the failure is not permanent: the runtime's
    /// policy for failures no retry middleware took.
    pub fn forever(mut self) -> Self {
        self.max_retries = u32::MAX;
        self
    }

    /// Exact delays, for tests and for callers who want no randomness.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    fn delay(&self, retry: u32) -> Duration {
        // Sixty-four doublings are past any cap: a record retried forever
        // does not walk further.
        let steps = retry.clamp(1, 64);
        let mut builder = backon::ExponentialBuilder::new()
            .with_min_delay(self.initial)
            .with_factor(self.factor)
            .with_max_delay(self.max_delay)
            .with_max_times(steps as usize);
        if self.jitter {
            builder = builder.with_jitter();
        }
        builder.build().nth(steps as usize - 1).unwrap_or(self.max_delay)
    }
}

impl RetryPolicy for ExponentialBackoff {
    fn retry(&self, attempt: u32, error: &HandlerError) -> Option<Duration> {
        if attempt > self.max_retries {
            return None;
        }
        match error.disposition() {
            Disposition::Permanent => None,
            Disposition::RetryAfter(delay) => Some(delay),
            Disposition::Retryable => Some(self.delay(attempt)),
        }
    }
}
