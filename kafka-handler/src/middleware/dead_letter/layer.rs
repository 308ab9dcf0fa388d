use std::sync::Arc;

use tower::Layer;

use super::DeadLetter;
use crate::Producer;

/// Sends records that failed permanently to a dead-letter topic. Applies
/// [`DeadLetter`].
#[derive(Clone, Debug)]
pub struct DeadLetterLayer {
    pub(super) producer: Producer,
    pub(super) suffix: Arc<str>,
}

impl DeadLetterLayer {
    /// Dead letters of topic `t` go to `t.dlt`, written with `producer`.
    pub fn new(producer: Producer) -> Self {
        Self { producer, suffix: Arc::from(".dlt") }
    }

    /// Dead letters of topic `t` go to `t<suffix>` (default `.dlt`).
    pub fn suffix(mut self, suffix: &str) -> Self {
        self.suffix = Arc::from(suffix);
        self
    }
}

impl DeadLetterLayer {
    /// The topics this layer needs for records of `topic` in `group`: where
    /// its dead letters go, and the re-drive topic the consumer also reads.
    pub fn topics(&self, topic: &str, group: &str) -> (String, String) {
        (format!("{topic}{}", self.suffix), super::redrive_topic(topic, group))
    }
}

impl<S> Layer<S> for DeadLetterLayer {
    type Service = DeadLetter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadLetter { inner, config: self.clone() }
    }
}
