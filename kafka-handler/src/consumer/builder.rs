use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::{Layer, Service};

use super::lane::{BoxedService, LaneConfig};
use super::observed::Observed;
use super::stack::{Stack, Step, TowerService};
use super::{Consumer, Ordering};
use crate::config::KafkaConfig;
use crate::outcome::BoxError;
use crate::retry_policy::ExponentialBackoff;
use crate::{Error, Handler, Record};

/// Configures a [`Consumer`].
///
/// Settings come from code and from the environment:
/// [`from_env`](ConsumerBuilder::from_env) reads `KAFKA_BOOTSTRAP_SERVERS` and
/// passes every `KAFKA_CONFIG_<NAME>` variable to librdkafka as `<name>`
/// (lowercased, `_` → `.`). Later calls override earlier ones.
///
/// Middleware ([`layer`](Self::layer) and the built-in
/// [`retry`](Self::retry), [`retry_topics`](Self::retry_topics),
/// [`dedup`](Self::dedup), [`dead_letter`](Self::dead_letter)) wraps the
/// handler in the order written: each call wraps the ones before it, before
/// or after [`handler`](Self::handler). The built-in ones work in that order
/// only, innermost first; [`build`](Self::build) refuses another order, or
/// one of them written twice, with [`Error::Layering`].
///
/// Defaults: at-least-once offsets (`enable.auto.offset.store=false`, finished
/// offsets committed every second and on revoke and shutdown),
/// `auto.offset.reset=earliest`, `queued.max.messages.kbytes=32768`,
/// `fetch.queue.backoff.ms=10`, `fetch.wait.max.ms=100`,
/// `statistics.interval.ms=5000` (for health and lag), the
/// `cooperative-sticky` assignor (unless
/// `group.protocol=consumer`, KIP-848, is chosen), [`Ordering::Partition`],
/// 256 handler calls in flight, 10,000 records buffered, a 60 s stall timeout.
#[must_use]
pub struct ConsumerBuilder {
    config: KafkaConfig,
    topics: Vec<String>,
    ordering: Ordering,
    max_in_flight: usize,
    max_buffered: Option<usize>,
    shutdown_timeout: Duration,
    revoke_timeout: Duration,
    fallback: ExponentialBackoff,
    shared: http::Extensions,
    service: Option<BoxedService>,
    subscription: Option<crate::__private::Subscription>,
    /// The middleware, in the order written.
    stack: Stack,
    create_topics: bool,
    stall_timeout: Duration,
    #[cfg(feature = "metrics")]
    meter: Option<opentelemetry::metrics::Meter>,
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("config", &self.config)
            .field("topics", &self.topics)
            .field("ordering", &self.ordering)
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    pub(super) fn new() -> Self {
        Self {
            config: KafkaConfig::default(),
            topics: Vec::new(),
            ordering: Ordering::default(),
            max_in_flight: 256,
            max_buffered: None,
            shutdown_timeout: Duration::from_secs(30),
            revoke_timeout: Duration::from_secs(10),
            fallback: ExponentialBackoff::default()
                .initial(Duration::from_millis(100))
                .max_delay(Duration::from_secs(10))
                .forever(),
            shared: http::Extensions::new(),
            service: None,
            subscription: None,
            stack: Stack::default(),
            create_topics: true,
            stall_timeout: Duration::from_secs(60),
            #[cfg(feature = "metrics")]
            meter: None,
        }
    }

    /// Reads the brokers and librdkafka settings from the environment.
    pub fn from_env(mut self) -> Self {
        self.config.merge_env();
        self
    }

    /// The brokers to bootstrap from, `host:port[,host:port…]`.
    pub fn bootstrap_servers(mut self, servers: impl Into<String>) -> Self {
        self.config.set("bootstrap.servers", servers);
        self
    }

    /// The consumer group. Each group handles every record once.
    pub fn group_id(mut self, group: impl Into<String>) -> Self {
        self.config.set("group.id", group);
        self
    }

    /// Adds a topic to subscribe to.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Adds topics to subscribe to.
    pub fn topics<I: IntoIterator<Item = S>, S: Into<String>>(mut self, topics: I) -> Self {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// Sets any librdkafka consumer setting.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.set(key, value);
        self
    }

    /// Which records are handled one after another (default: per partition).
    pub fn ordering(mut self, ordering: Ordering) -> Self {
        self.ordering = ordering;
        self
    }

    /// How many handler calls may run at once in this consumer (Spring's
    /// `concurrency`; default 256). In [`Ordering::Partition`] mode at most one
    /// per partition runs anyway.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// How many records may be fetched and not yet finished (default: the
    /// larger of 10,000 and 4 × `max_in_flight`). Each assigned partition gets
    /// an equal share; a partition whose share is full is paused until half of
    /// it is done. This bounds memory whatever the backlog.
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.max_buffered = Some(n.max(1));
        self
    }

    /// How long a graceful shutdown waits for the records already fetched to
    /// finish (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long a revoked partition's in-flight records may take to finish
    /// before they are abandoned uncommitted (default 10 s).
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.revoke_timeout = timeout;
        self
    }

    /// The backoff for retryable failures that no retry middleware handled:
    /// the runtime retries them in place, forever, holding the record's lane
    /// (default: 100 ms doubling to 10 s, with jitter).
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.fallback = self.fallback.initial(min).max_delay(max);
        self
    }

    /// Shares `value` with handlers through the
    /// [`State`](crate::extract::State) extractor.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.shared.insert(value);
        self
    }

    /// The handler. A handler made with `#[handler(..)]` also brings its topics
    /// and group, unless they were set on the builder.
    pub fn handler<H: Handler<T>, T: 'static>(mut self, handler: H) -> Self {
        self.subscription = handler.__subscription();
        self.service = Some(BoxedService::handler(handler));
        self
    }

    /// A [`tower::Service`] as the handler. Errors are classified by
    /// [`HandlerError::from_error`].
    pub fn service<S>(mut self, service: S) -> Self
    where
        S: Service<Record, Response = ()> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.service = Some(BoxedService::Tower(super::stack::boxed(service)));
        self
    }

    /// Wraps the handler, and the middleware written before this call, in
    /// a tower layer.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<TowerService> + Send + 'static,
        L::Service: Service<Record, Response = ()> + Clone + Send + Sync + 'static,
        <L::Service as Service<Record>>::Error: Into<BoxError>,
        <L::Service as Service<Record>>::Future: Send + 'static,
    {
        self.stack.push(Step::Layer(super::stack::wrap(layer)));
        self
    }

    /// In-place retries by `policy` (for example
    /// [`ExponentialBackoff`](crate::middleware::ExponentialBackoff): three
    /// retries, 1 s → 2 s → 4 s); see [`RetryLayer`](crate::middleware::RetryLayer).
    /// Written before [`retry_topics`](Self::retry_topics), each delivery from
    /// a retry topic gets these retries, and the attempts count on across both.
    #[cfg(feature = "retry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
    pub fn retry<P: crate::middleware::RetryPolicy>(mut self, policy: P) -> Self {
        let layer = crate::middleware::RetryLayer::with_policy(policy);
        self.stack.push(Step::Retry(super::stack::wrap(layer)));
        self
    }

    /// Non-blocking retries through this group's retry topics, which the
    /// consumer also subscribes to; see [`RetryTopicLayer`](crate::middleware::RetryTopicLayer).
    #[cfg(feature = "retry-topic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "retry-topic")))]
    pub fn retry_topics(mut self, layer: crate::middleware::RetryTopicLayer) -> Self {
        self.stack.push(Step::RetryTopics(layer));
        self
    }

    /// Handles each event once per group, checking its event id in a store;
    /// see [`DedupLayer`](crate::middleware::DedupLayer). The event id comes
    /// from the layer, else from `#[handler(event_id = ..)]`, else from the
    /// payload field `eventId`.
    pub fn dedup(mut self, layer: crate::middleware::DedupLayer) -> Self {
        self.stack.push(Step::Dedup(layer));
        self
    }

    /// Permanent failures to `<topic>.dlt`; see [`DeadLetterLayer`](crate::middleware::DeadLetterLayer).
    /// The consumer also reads `<topic>.<group>.redrive`, where
    /// `kafka-handler dlt replay` sends dead letters back to this group only.
    #[cfg(feature = "dead-letter")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dead-letter")))]
    pub fn dead_letter(self, producer: crate::Producer) -> Self {
        self.dead_letter_layer(crate::middleware::DeadLetterLayer::new(producer))
    }

    /// As [`dead_letter`](Self::dead_letter), with a configured layer (for
    /// example another topic suffix).
    #[cfg(feature = "dead-letter")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dead-letter")))]
    pub fn dead_letter_layer(mut self, layer: crate::middleware::DeadLetterLayer) -> Self {
        self.stack.push(Step::DeadLetter(layer));
        self
    }

    /// Whether the consumer creates its retry and dead-letter topics at start,
    /// with the source topic's partition count (default: yes). Turn it off
    /// for clusters where applications may not create topics.
    pub fn create_topics(mut self, create: bool) -> Self {
        self.create_topics = create;
        self
    }

    /// How long a partition's oldest unfinished record may stay unfinished,
    /// or the polling thread go without polling, before the consumer's
    /// [`Health`](crate::Health) reports it not live (default 60 s). Retries
    /// in place count: a record retried for longer stalls its partition.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Where the consumer's metrics go (default: the global meter provider,
    /// as it is when the consumer starts to run). See the [`metrics`](crate::metrics)
    /// module for the instruments.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn meter_provider<P: opentelemetry::metrics::MeterProvider + ?Sized>(mut self, provider: &P) -> Self {
        self.meter = Some(provider.meter_with_scope(crate::metrics::scope()));
        self
    }

    /// Checks the configuration and builds the consumer.
    pub fn build(mut self) -> Result<Consumer, Error> {
        let Some(handler) = self.service.take() else {
            return Err(Error::Config("no handler: call `.handler(..)` or `.service(..)`".into()));
        };
        self.stack.check()?;
        if let Some(sub) = &self.subscription {
            if self.topics.is_empty() {
                self.topics.extend(sub.topics.iter().map(|t| (*t).to_owned()));
            }
            if let (None, Some(group)) = (self.config.get("group.id"), sub.group) {
                self.config.set("group.id", group);
            }
        }
        let group_id = self
            .config
            .get("group.id")
            .ok_or_else(|| Error::Config("no consumer group: call `.group_id(..)`".into()))?
            .to_owned();
        if self.topics.is_empty() {
            return Err(Error::Config("no topic: call `.topic(..)`".into()));
        }
        if self.config.get("bootstrap.servers").is_none() {
            return Err(Error::Config(
                "no brokers: call `.bootstrap_servers(..)` or set KAFKA_BOOTSTRAP_SERVERS with `.from_env()`".into(),
            ));
        }
        self.config.consumer_defaults()?;
        // Derived from the subscribed topics only, not from each other.
        let derived = self.stack.topics(&self.topics, &group_id);
        self.topics.extend(derived.subscribe);
        let to_create = if self.create_topics { derived.create } else { Vec::new() };
        #[cfg(feature = "metrics")]
        let dedup_counters = self.stack.dedup().map(crate::middleware::DedupLayer::counters);
        let declared = self.subscription.and_then(|s| s.event_id());
        let event_id =
            self.stack.dedup().and_then(|d| d.source.clone()).or_else(|| declared.clone()).unwrap_or_default();
        let service = if self.stack.is_empty() {
            handler
        } else {
            BoxedService::Tower(std::mem::take(&mut self.stack).apply(handler.into_tower(), declared))
        };
        let max_buffered = self.max_buffered.unwrap_or((4 * self.max_in_flight).max(10_000));
        self.shared.insert(crate::extract::Group(Arc::from(group_id.as_str())));
        self.shared.insert(crate::record_span::EventIdOf(event_id));
        let observed = Arc::new(Observed::new(Arc::from(group_id.as_str()), self.stall_timeout));
        Ok(Consumer {
            config: self.config,
            topics: self.topics,
            group_id,
            ordering: self.ordering,
            lane: LaneConfig {
                service,
                in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
                fallback: self.fallback,
            },
            shared: Arc::new(self.shared),
            max_buffered,
            shutdown_timeout: self.shutdown_timeout,
            revoke_timeout: self.revoke_timeout,
            to_create,
            observed,
            #[cfg(feature = "metrics")]
            meter: self.meter,
            #[cfg(feature = "metrics")]
            dedup_counters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pieces_are_named() {
        let err = Consumer::builder().build().unwrap_err();
        assert!(err.to_string().contains("no handler"), "{err}");
        let err = Consumer::builder().handler(|| async {}).topic("t").bootstrap_servers("b").build().unwrap_err();
        assert!(err.to_string().contains("no consumer group"), "{err}");
        let err = Consumer::builder()
            .handler(|| async {})
            .group_id("g")
            .topic("t")
            .bootstrap_servers("b")
            .set("enable.auto.offset.store", "true")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("enable.auto.offset.store"), "{err}");
    }

    #[test]
    fn kip_848_leaves_the_assignor_to_the_broker() {
        let c = Consumer::builder()
            .handler(|| async {})
            .group_id("g")
            .topic("t")
            .bootstrap_servers("b")
            .set("group.protocol", "consumer")
            .build()
            .unwrap();
        assert_eq!(c.config.get("partition.assignment.strategy"), None);
    }
}
