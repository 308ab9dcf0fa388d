//! Publishing records: typed, keyed, with headers, delivery awaited.

use std::time::Duration;

use bytes::Bytes;
use rdkafka::message::{Header as RdHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::Error;
use crate::config::KafkaConfig;
use crate::record::Header;

/// A Kafka producer: idempotent (`enable.idempotence=true`, `acks=all`), each
/// [`send`](Producer::send) awaits the broker's acknowledgement.
///
/// Cheap to clone; clones share one librdkafka producer.
///
/// ```no_run
/// use kafka_handler::{Outgoing, Producer};
/// # #[derive(serde::Serialize)] struct OrderCreated { user_id: String }
/// # async fn run(event: OrderCreated) -> Result<(), kafka_handler::Error> {
/// let producer = Producer::builder().from_env().build()?;
/// let key = event.user_id.clone();
/// let delivered = producer
///     .send(Outgoing::json("order.created", &event)?.key(key).header("eventType", "OrderCreated"))
///     .await?;
/// println!("stored at {}@{}", delivered.partition, delivered.offset);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

/// Where a record was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivered {
    /// The partition it was written to.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}

impl Producer {
    /// Starts configuring a producer.
    pub fn builder() -> ProducerBuilder {
        ProducerBuilder { config: KafkaConfig::default() }
    }

    /// Publishes `record` and waits until the broker acknowledged it
    /// (or `message.timeout.ms` passed).
    ///
    /// With the `trace-context` feature, the current OpenTelemetry context
    /// goes along in the record's headers (`traceparent`, `tracestate` with
    /// the W3C propagator), so the consumer's span joins the trace.
    pub async fn send(&self, record: Outgoing) -> Result<Delivered, Error> {
        #[cfg(feature = "trace-context")]
        let record = record.with_current_context();
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for h in &record.headers {
            headers = headers.insert(RdHeader { key: &h.name, value: h.value.as_deref() });
        }
        let mut future = FutureRecord::<[u8], [u8]>::to(&record.topic).headers(headers);
        if let Some(key) = record.key.as_deref() {
            future = future.key(key);
        }
        if let Some(payload) = record.payload.as_deref() {
            future = future.payload(payload);
        }
        if let Some(partition) = record.partition {
            future = future.partition(partition);
        }
        match self.inner.send(future, Timeout::Never).await {
            Ok(d) => Ok(Delivered { partition: d.partition, offset: d.offset }),
            Err((e, _)) => Err(Error::Kafka(e)),
        }
    }

    /// Waits until every record sent so far is acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), Error> {
        rdkafka::producer::Producer::flush(&self.inner, timeout).map_err(Error::Kafka)
    }
}

/// Configures a [`Producer`]; like [`ConsumerBuilder`](crate::ConsumerBuilder)
/// it reads `KAFKA_BOOTSTRAP_SERVERS` and `KAFKA_CONFIG_*` with
/// [`from_env`](ProducerBuilder::from_env).
#[derive(Debug)]
#[must_use]
pub struct ProducerBuilder {
    config: KafkaConfig,
}

impl ProducerBuilder {
    /// Reads the brokers and librdkafka settings from the environment.
    pub fn from_env(mut self) -> Self {
        self.config.merge_env();
        self
    }

    /// The brokers to bootstrap from.
    pub fn bootstrap_servers(mut self, servers: impl Into<String>) -> Self {
        self.config.set("bootstrap.servers", servers);
        self
    }

    /// Sets any librdkafka producer setting.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.set(key, value);
        self
    }

    /// Builds the producer.
    pub fn build(mut self) -> Result<Producer, Error> {
        if self.config.get("bootstrap.servers").is_none() {
            return Err(Error::Config("no brokers: call `.bootstrap_servers(..)` or `.from_env()`".into()));
        }
        self.config.set_default("enable.idempotence", "true");
        self.config.set_default("acks", "all");
        self.config.set_default("linger.ms", "5");
        let inner = self.config.to_client_config().create()?;
        Ok(Producer { inner })
    }
}

/// A record to publish.
#[derive(Clone, Debug)]
#[must_use]
pub struct Outgoing {
    topic: String,
    key: Option<Bytes>,
    payload: Option<Bytes>,
    headers: Vec<Header>,
    partition: Option<i32>,
}

impl Outgoing {
    /// A record with raw bytes as its value.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self { topic: topic.into(), key: None, payload: Some(payload.into()), headers: Vec::new(), partition: None }
    }

    /// A record whose value is `value` encoded as JSON.
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    pub fn json<T: serde::Serialize + ?Sized>(topic: impl Into<String>, value: &T) -> Result<Self, Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Encode(Box::new(e)))?;
        Ok(Self::new(topic, bytes))
    }

    /// A record with the given key and value, either of which may be null.
    #[cfg(any(feature = "dead-letter", feature = "retry-topic"))]
    pub(crate) fn from_parts(topic: String, key: Option<Bytes>, payload: Option<Bytes>) -> Self {
        Self { topic, key, payload, headers: Vec::new(), partition: None }
    }

    /// Carries the current trace context in its headers.
    #[cfg(feature = "trace-context")]
    fn with_current_context(mut self) -> Self {
        crate::trace_context::inject_current(&mut self.headers);
        self
    }

    /// The topic it is for.
    #[cfg(any(feature = "dead-letter", feature = "retry-topic"))]
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// Adds a header whose value may be null.
    #[cfg(any(feature = "dead-letter", feature = "retry-topic"))]
    pub(crate) fn raw_header(mut self, name: String, value: Option<Bytes>) -> Self {
        self.headers.push(Header { name, value });
        self
    }

    /// Sets the key; records with the same key go to the same partition.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header { name: name.into(), value: Some(value.into()) });
        self
    }

    /// Writes to this partition instead of the one the key hashes to.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}
