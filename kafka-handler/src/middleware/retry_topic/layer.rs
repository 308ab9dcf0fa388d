use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::RetryTopic;
use crate::Producer;

/// Retries through retry topics, one per delay. Applies [`RetryTopic`]; add
/// it with [`ConsumerBuilder::retry_topics`](crate::ConsumerBuilder::retry_topics),
/// which also subscribes to the retry topics.
#[derive(Clone, Debug)]
pub struct RetryTopicLayer {
    pub(super) producer: Producer,
    pub(crate) delays: Arc<[Duration]>,
    pub(super) parking: Option<Arc<super::ordered::Parking>>,
}

impl RetryTopicLayer {
    /// The domain's default ladder: 1 s, 2 s, 4 s, then give up.
    pub fn new(producer: Producer) -> Self {
        Self::with_delays(producer, [1, 2, 4].map(Duration::from_secs))
    }

    /// One retry topic per delay, in order.
    pub fn with_delays(producer: Producer, delays: impl IntoIterator<Item = Duration>) -> Self {
        Self { producer, delays: delays.into_iter().collect(), parking: None }
    }

    /// Keeps per-key order across retries: while an event of a key is in
    /// the retry path, later events of that key are parked behind it and
    /// handled after it, sharing its remaining retries. Order holds while one
    /// consumer owns a key's source and retry partitions; see
    /// [the trade-off](crate::middleware::retry_topic#ordered-retries).
    pub fn ordered(mut self) -> Self {
        self.parking = Some(Arc::default());
        self
    }

    /// The retry topics of `topic` for `group`.
    pub fn topics(&self, topic: &str, group: &str) -> Vec<String> {
        (1..=self.delays.len()).map(|level| super::retry_topic(topic, group, level)).collect()
    }
}

impl<S> Layer<S> for RetryTopicLayer {
    type Service = RetryTopic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryTopic { inner, config: self.clone() }
    }
}
