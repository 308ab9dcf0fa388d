//! librdkafka's in-process mock cluster, for tests and demos without a broker.
//!
//! ```
//! let cluster = kafka_handler::mock::MockCluster::start(1).unwrap();
//! assert!(!cluster.bootstrap_servers().is_empty());
//! ```

use rdkafka::mocking;
use rdkafka::producer::DefaultProducerContext;

use crate::Error;

/// An in-process Kafka cluster that lives as long as this value.
///
/// It speaks the Kafka protocol on loopback ports, so a [`Consumer`](crate::Consumer)
/// and a [`Producer`](crate::Producer) use it like a real cluster. It is not
/// a real broker: use it for demos and fast tests, not as proof.
pub struct MockCluster {
    inner: mocking::MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for MockCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockCluster").field("bootstrap_servers", &self.bootstrap_servers()).finish()
    }
}

impl MockCluster {
    /// Starts a cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<Self, Error> {
        Ok(Self { inner: mocking::MockCluster::new(brokers)? })
    }

    /// `host:port,…` to give to builders.
    pub fn bootstrap_servers(&self) -> String {
        self.inner.bootstrap_servers()
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), Error> {
        self.inner.create_topic(topic, partitions, 1)?;
        Ok(())
    }
}
