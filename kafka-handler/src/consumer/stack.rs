//! The middleware around a consumer's handler, in the order the builder's
//! calls wrote it: each call wraps everything written before it.
//!
//! Built-in layers also declare the topics they need (retry topics, the
//! dead-letter and re-drive topics), so subscription and topic creation
//! follow from the stack, and they must come in the one order in which they
//! work together: in-place retries, retry topics, dedup, dead-letter topic.

use tower::util::BoxCloneSyncService;

use crate::{Error, HandlerError, Record};

/// The service a layer wraps and returns.
pub(crate) type TowerService = BoxCloneSyncService<Record, (), HandlerError>;

/// A layer, applied when the consumer is built.
pub(super) type Wrap = Box<dyn FnOnce(TowerService) -> TowerService + Send>;

/// One call of the builder that adds middleware.
pub(super) enum Step {
    /// `.layer(..)`: any tower layer.
    Layer(Wrap),
    /// `.retry(..)`: the retry layer, generic over its policy.
    #[cfg(feature = "retry")]
    Retry(Wrap),
    #[cfg(feature = "retry-topic")]
    RetryTopics(crate::middleware::RetryTopicLayer),
    Dedup(crate::middleware::DedupLayer),
    #[cfg(feature = "dead-letter")]
    DeadLetter(crate::middleware::DeadLetterLayer),
}

impl Step {
    /// The builder method and the built-in's place, innermost first.
    fn builtin(&self) -> Option<(&'static str, u8)> {
        match self {
            Step::Layer(_) => None,
            #[cfg(feature = "retry")]
            Step::Retry(_) => Some(("retry", 0)),
            #[cfg(feature = "retry-topic")]
            Step::RetryTopics(_) => Some(("retry_topics", 1)),
            Step::Dedup(_) => Some(("dedup", 2)),
            #[cfg(feature = "dead-letter")]
            Step::DeadLetter(_) => Some(("dead_letter", 3)),
        }
    }
}

/// The middleware written so far, innermost first.
#[derive(Default)]
pub(super) struct Stack {
    steps: Vec<Step>,
}

/// What the stack needs besides the subscribed topics.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Topics {
    /// Topics the consumer also reads: retry and re-drive topics.
    pub(super) subscribe: Vec<String>,
    /// Topics to create, each with the partition count of its source topic.
    pub(super) create: Vec<(String, String)>,
}

impl Stack {
    pub(super) fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The dedup layer, if any.
    pub(super) fn dedup(&self) -> Option<&crate::middleware::DedupLayer> {
        self.steps.iter().find_map(|s| match s {
            Step::Dedup(layer) => Some(layer),
            _ => None,
        })
    }

    /// Refuses built-in layers written twice or in an order that does not
    /// work: a duplicate would be skipped before any retry only if dedup is
    /// outside them, and a failure reaches the dead-letter topic only after
    /// every retry stage inside it gave up.
    pub(super) fn check(&self) -> Result<(), Error> {
        let mut outermost: Option<(&'static str, u8)> = None;
        for (name, rank) in self.steps.iter().filter_map(Step::builtin) {
            if let Some((before, before_rank)) = outermost
                && before_rank >= rank
            {
                return Err(Error::Layering { first: name, then: before });
            }
            outermost = Some((name, rank));
        }
        Ok(())
    }

    /// The topics the built-in layers need for each of `sources` in `group`.
    #[cfg_attr(not(any(feature = "retry-topic", feature = "dead-letter")), allow(unused_mut, unused_variables))]
    pub(super) fn topics(&self, sources: &[String], group: &str) -> Topics {
        let mut topics = Topics::default();
        for step in &self.steps {
            for source in sources {
                match step {
                    #[cfg(feature = "retry-topic")]
                    Step::RetryTopics(layer) => {
                        for topic in layer.topics(source, group) {
                            topics.subscribe.push(topic.clone());
                            topics.create.push((topic, source.clone()));
                        }
                    }
                    #[cfg(feature = "dead-letter")]
                    Step::DeadLetter(layer) => {
                        let (dead_letters, redrive) = layer.topics(source, group);
                        topics.create.push((dead_letters, source.clone()));
                        topics.subscribe.push(redrive.clone());
                        topics.create.push((redrive, source.clone()));
                    }
                    _ => {}
                }
            }
        }
        topics
    }

    /// Wraps `service` in every layer, innermost first. A dedup layer
    /// without an event id source takes `event_id`'s.
    pub(super) fn apply(
        self,
        mut service: TowerService,
        event_id: Option<crate::dedup::EventIdSource>,
    ) -> TowerService {
        use tower::Layer;
        for step in self.steps {
            service = match step {
                Step::Layer(wrap) => wrap(service),
                #[cfg(feature = "retry")]
                Step::Retry(wrap) => wrap(service),
                #[cfg(feature = "retry-topic")]
                Step::RetryTopics(layer) => boxed(layer.layer(service)),
                Step::Dedup(mut layer) => {
                    if let Some(source) = event_id.clone() {
                        layer = layer.or_event_id(source);
                    }
                    boxed(layer.layer(service))
                }
                #[cfg(feature = "dead-letter")]
                Step::DeadLetter(layer) => boxed(layer.layer(service)),
            };
        }
        service
    }
}

/// A layer's service, classified and erased.
pub(super) fn boxed<S>(service: S) -> TowerService
where
    S: tower::Service<Record, Response = ()> + Clone + Send + Sync + 'static,
    S::Error: Into<crate::BoxError>,
    S::Future: Send + 'static,
{
    use tower::ServiceExt;
    BoxCloneSyncService::new(service.map_err(HandlerError::from_error))
}

/// A tower layer as a step of the stack.
pub(super) fn wrap<L>(layer: L) -> Wrap
where
    L: tower::Layer<TowerService> + Send + 'static,
    L::Service: tower::Service<Record, Response = ()> + Clone + Send + Sync + 'static,
    <L::Service as tower::Service<Record>>::Error: Into<crate::BoxError>,
    <L::Service as tower::Service<Record>>::Future: Send + 'static,
{
    Box::new(move |inner| boxed(layer.layer(inner)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Consumer;

    #[cfg(all(feature = "retry-topic", feature = "dead-letter"))]
    #[test]
    fn derived_topics_come_from_the_subscribed_topics_only() {
        let producer = crate::Producer::builder().bootstrap_servers("localhost:1").build().unwrap();
        let c = Consumer::builder()
            .handler(|| async {})
            .group_id("g")
            .topic("t")
            .bootstrap_servers("localhost:1")
            .retry_topics(crate::middleware::RetryTopicLayer::with_delays(producer.clone(), [Duration::from_secs(1)]))
            .dead_letter(producer)
            .build()
            .unwrap();
        assert_eq!(c.topics, ["t", "t.g.retry.1", "t.g.redrive"]);
    }

    #[cfg(all(feature = "retry", feature = "retry-topic", feature = "dead-letter"))]
    #[test]
    fn built_in_middleware_out_of_order_or_twice_is_refused() {
        let producer = crate::Producer::builder().bootstrap_servers("localhost:1").build().unwrap();
        let base = || Consumer::builder().handler(|| async {}).group_id("g").topic("t").bootstrap_servers("b");
        let retries = || crate::middleware::RetryTopicLayer::new(producer.clone());
        let policy = crate::middleware::ExponentialBackoff::default;
        let err = base().dead_letter(producer.clone()).retry_topics(retries()).build().unwrap_err();
        assert!(matches!(err, Error::Layering { first: "retry_topics", then: "dead_letter" }), "{err}");
        let err = base().retry_topics(retries()).retry(policy()).build().unwrap_err();
        assert!(matches!(err, Error::Layering { first: "retry", then: "retry_topics" }), "{err}");
        let err = base().retry(policy()).retry(policy()).build().unwrap_err();
        assert!(err.to_string().contains("`.retry(..)` is written twice"), "{err}");
        // Any tower layer may go anywhere; the built-in ones in their order.
        let layer = tower::layer::util::Identity::new();
        let ok = base()
            .layer(layer.clone())
            .retry(policy())
            .layer(layer.clone())
            .retry_topics(retries())
            .dead_letter_layer(crate::middleware::DeadLetterLayer::new(producer.clone()).suffix(".dead"))
            .layer(layer)
            .build()
            .unwrap();
        assert_eq!(ok.topics, ["t", "t.g.retry.1", "t.g.retry.2", "t.g.retry.3", "t.g.redrive"]);
        let created: Vec<&str> = ok.to_create.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(created, ["t.g.retry.1", "t.g.retry.2", "t.g.retry.3", "t.dead", "t.g.redrive"]);
    }

    #[tokio::test]
    async fn a_layer_written_before_the_handler_wraps_it() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        let counting = tower::layer::layer_fn(|inner: TowerService| {
            tower::util::MapRequest::new(inner, |r: Record| {
                SEEN.fetch_add(1, SeqCst);
                r
            })
        });
        let c = Consumer::builder()
            .layer(counting)
            .handler(|| async {})
            .group_id("g")
            .topic("t")
            .bootstrap_servers("b")
            .build()
            .unwrap();
        let mut service = c.lane.service.clone();
        service.ready_call(Record::builder("t").build()).await.unwrap();
        assert_eq!(SEEN.load(SeqCst), 1);
    }
}
