use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBuilder;
use tokio::sync::Semaphore;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use super::lane::{BoxedService, LaneConfig};
use super::observed::Observed;
use super::{Consumer, Ordering};
use crate::config::KafkaConfig;
use crate::outcome::BoxError;
use crate::{Error, Handler, HandlerError, Record};

/// Configures a [`Consumer`].
///
/// Settings come from code and from the environment:
/// [`from_env`](ConsumerBuilder::from_env) reads `KAFKA_BOOTSTRAP_SERVERS` and
/// passes every `KAFKA_CONFIG_<NAME>` variable to librdkafka as `<name>`
/// (lowercased, `_` → `.`). Later calls override earlier ones.
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
    backoff: ExponentialBuilder,
    shared: http::Extensions,
    service: Option<BoxedService>,
    subscription: Option<crate::__private::Subscription>,
    /// The runtime's own middleware, applied around the handler and its
    /// layers in a fixed order at `build`.
    stack: Stack,
    /// Topics the consumer's own middleware writes to, by source topic.
    derived_topics: Vec<DerivedTopics>,
    create_topics: bool,
    stall_timeout: Duration,
    #[cfg(feature = "metrics")]
    meter: Option<opentelemetry::metrics::Meter>,
}

/// The runtime's middleware, innermost first: retries in place, then retry
/// topics, then dedup (so a duplicate is skipped before any retry, and a store
/// outage is not taken for a handler failure), then the dead-letter topic (so
/// a record without a valid event id is dead-lettered).
#[derive(Default)]
struct Stack {
    /// The retry layer, generic over its policy.
    #[cfg(feature = "retry")]
    retry: Option<Box<dyn FnOnce(ConsumerBuilder) -> ConsumerBuilder + Send>>,
    #[cfg(feature = "retry-topic")]
    retry_topics: Option<crate::middleware::RetryTopicLayer>,
    dedup: Option<crate::middleware::DedupLayer>,
    #[cfg(feature = "dead-letter")]
    dead_letter: Option<crate::middleware::DeadLetterLayer>,
}

/// Topics derived from each source topic and the group.
#[derive(Clone, Copy, Debug)]
enum DerivedTopics {
    #[cfg(feature = "retry-topic")]
    Retry(usize),
    #[cfg(feature = "dead-letter")]
    DeadLetter,
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
            backoff: ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times(),
            shared: http::Extensions::new(),
            service: None,
            subscription: None,
            stack: Stack::default(),
            derived_topics: Vec::new(),
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

    /// How long a graceful shutdown waits for in-flight records (default 30 s).
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
        self.backoff = self.backoff.with_min_delay(min).with_max_delay(max);
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
        self.service = Some(BoxedService::Tower(BoxCloneSyncService::new(service.map_err(HandlerError::from_error))));
        self
    }

    /// Wraps the handler set so far in a tower layer. Such layers sit inside
    /// the runtime's own middleware ([`retry`](Self::retry),
    /// [`retry_topics`](Self::retry_topics), [`dedup`](Self::dedup),
    /// [`dead_letter`](Self::dead_letter)), which is applied in that order,
    /// innermost first, whatever the order of the calls.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxCloneSyncService<Record, (), HandlerError>>,
        L::Service: Service<Record, Response = ()> + Clone + Send + Sync + 'static,
        <L::Service as Service<Record>>::Error: Into<BoxError>,
        <L::Service as Service<Record>>::Future: Send + 'static,
    {
        if let Some(inner) = self.service.take() {
            let subscription = self.subscription.take();
            self = self.service(layer.layer(inner.into_tower()));
            self.subscription = subscription;
        }
        self
    }

    /// In-place retries with the domain's default policy (three retries,
    /// 1 s → 2 s → 4 s); see [`RetryLayer`](crate::middleware::RetryLayer).
    #[cfg(feature = "retry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
    pub fn retry<P: crate::middleware::RetryPolicy>(mut self, policy: P) -> Self {
        let layer = crate::middleware::RetryLayer::with_policy(policy);
        self.stack.retry = Some(Box::new(move |builder: Self| builder.layer(layer)));
        self
    }

    /// Non-blocking retries through this group's retry topics, which the
    /// consumer also subscribes to; see [`RetryTopicLayer`](crate::middleware::RetryTopicLayer).
    #[cfg(feature = "retry-topic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "retry-topic")))]
    pub fn retry_topics(mut self, layer: crate::middleware::RetryTopicLayer) -> Self {
        self.derived_topics.push(DerivedTopics::Retry(layer.delays.len()));
        self.stack.retry_topics = Some(layer);
        self
    }

    /// Handles each event once per group, checking its event id in a store;
    /// see [`DedupLayer`](crate::middleware::DedupLayer). The event id comes
    /// from the layer, else from `#[handler(event_id = ..)]`, else from the
    /// payload field `eventId`.
    pub fn dedup(mut self, layer: crate::middleware::DedupLayer) -> Self {
        self.stack.dedup = Some(layer);
        self
    }

    /// Permanent failures to `<topic>.dlt`; see [`DeadLetterLayer`](crate::middleware::DeadLetterLayer).
    /// The consumer also reads `<topic>.<group>.redrive`, where
    /// `kafka-handler dlt replay` sends dead letters back to this group only.
    #[cfg(feature = "dead-letter")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dead-letter")))]
    pub fn dead_letter(mut self, producer: crate::Producer) -> Self {
        self.derived_topics.push(DerivedTopics::DeadLetter);
        self.stack.dead_letter = Some(crate::middleware::DeadLetterLayer::new(producer));
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
        if self.service.is_none() {
            return Err(Error::Config("no handler: call `.handler(..)` or `.service(..)`".into()));
        }
        #[cfg(feature = "metrics")]
        let dedup_counters = self.stack.dedup.as_ref().map(crate::middleware::DedupLayer::counters);
        let event_id = self.stack.dedup.as_ref().and_then(|d| d.source.clone());
        let event_id = event_id.or_else(|| self.subscription.and_then(|s| s.event_id())).unwrap_or_default();
        self = self.apply_stack();
        let service = self.service.take().expect("checked above");
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
        for (key, expected) in [("enable.auto.offset.store", "false"), ("enable.auto.commit", "true")] {
            if self.config.get(key).is_some_and(|v| v != expected) {
                return Err(Error::Config(format!(
                    "`{key}` must stay `{expected}`: the runtime stores only finished offsets"
                )));
            }
        }
        self.config.set("enable.auto.offset.store", "false");
        self.config.set_default("enable.auto.commit", "true");
        self.config.set_default("auto.commit.interval.ms", "1000");
        self.config.set_default("auto.offset.reset", "earliest");
        self.config.set_default("enable.partition.eof", "false");
        // The runtime buffers up to `max_buffered` records itself; librdkafka's
        // own 64 MiB prefetch default would double the memory for nothing.
        self.config.set_default("queued.max.messages.kbytes", "32768");
        // Once a partition's prefetched records reach that limit, librdkafka
        // postpones its next fetch by `fetch.queue.backoff.ms` (1 s by
        // default). The polling thread drains the queue in a fraction of that
        // and would then sit idle: consuming a backlog ran at half speed.
        self.config.set_default("fetch.queue.backoff.ms", "10");
        // A partition resumed after back-pressure is fetched only once the
        // fetch request in flight returns, which the broker holds up to
        // `fetch.wait.max.ms` (500 ms by default) when the partitions in it
        // have nothing new: every pause cost up to half a second.
        self.config.set_default("fetch.wait.max.ms", "100");
        // Broker connection states, for readiness.
        self.config.set_default("statistics.interval.ms", "5000");
        if self.config.get("group.protocol") != Some("consumer") {
            self.config.set_default("partition.assignment.strategy", "cooperative-sticky");
        }
        let mut to_create = Vec::new();
        // Derived from the subscribed topics only, not from each other.
        let sources = self.topics.clone();
        #[cfg_attr(not(any(feature = "retry-topic", feature = "dead-letter")), allow(unused_variables))]
        for derived in &self.derived_topics {
            for source in &sources {
                match *derived {
                    #[cfg(feature = "retry-topic")]
                    DerivedTopics::Retry(levels) => {
                        for level in 1..=levels {
                            let topic = crate::middleware::retry_topic::retry_topic(source, &group_id, level);
                            self.topics.push(topic.clone());
                            to_create.push((topic, source.clone()));
                        }
                    }
                    #[cfg(feature = "dead-letter")]
                    DerivedTopics::DeadLetter => {
                        to_create.push((format!("{source}.dlt"), source.clone()));
                        let redrive = crate::middleware::dead_letter::redrive_topic(source, &group_id);
                        self.topics.push(redrive.clone());
                        to_create.push((redrive, source.clone()));
                    }
                }
            }
        }
        if !self.create_topics {
            to_create.clear();
        }
        let max_buffered = self.max_buffered.unwrap_or((4 * self.max_in_flight).max(10_000));
        self.shared.insert(crate::extract::Group(Arc::from(group_id.as_str())));
        self.shared.insert(super::record_span::EventIdOf(event_id));
        let observed = Arc::new(Observed::new(Arc::from(group_id.as_str()), self.stall_timeout));
        Ok(Consumer {
            config: self.config,
            topics: self.topics,
            group_id,
            ordering: self.ordering,
            lane: LaneConfig {
                service,
                in_flight: Arc::new(Semaphore::new(self.max_in_flight)),
                backoff: self.backoff,
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

impl ConsumerBuilder {
    fn apply_stack(mut self) -> Self {
        let stack = std::mem::take(&mut self.stack);
        #[cfg(feature = "retry")]
        if let Some(apply) = stack.retry {
            self = apply(self);
        }
        #[cfg(feature = "retry-topic")]
        if let Some(layer) = stack.retry_topics {
            self = self.layer(layer);
        }
        if let Some(mut layer) = stack.dedup {
            if let Some(source) = self.subscription.as_ref().and_then(|s| s.event_id()) {
                layer = layer.or_event_id(source);
            }
            self = self.layer(layer);
        }
        #[cfg(feature = "dead-letter")]
        if let Some(layer) = stack.dead_letter {
            self = self.layer(layer);
        }
        self
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
