use tower::Layer;

use super::{ExponentialBackoff, Retry};

/// Retries failed records in place, as the [`RetryPolicy`](super::RetryPolicy)
/// says. Applies [`Retry`].
#[derive(Clone, Debug, Default)]
pub struct RetryLayer<P = ExponentialBackoff> {
    policy: P,
}

impl RetryLayer {
    /// The default policy: three retries, 1 s → 2 s → 4 s, capped at 10 s.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<P> RetryLayer<P> {
    /// A layer retrying as `policy` says.
    pub fn with_policy(policy: P) -> Self {
        Self { policy }
    }
}

impl<S, P: Clone> Layer<S> for RetryLayer<P> {
    type Service = Retry<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.policy.clone())
    }
}
