//! librdkafka's in-process mock cluster, for tests and demos without a broker.
//!
//! ```
//! let cluster = kafka_handler::mock::MockCluster::start(1).unwrap();
//! assert!(!cluster.bootstrap_servers().is_empty());
//! ```
//!
//! A consumer of a mock cluster works with every default: the mock cluster
//! answers no admin request, so the retry, dead-letter and re-drive topics
//! the consumer's middleware needs are created through the cluster's own
//! API, while it lives.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};

use rdkafka::mocking;
use rdkafka::producer::DefaultProducerContext;

use crate::Error;

/// A topic to create on a cluster, and where to say how it went.
type Create = (String, i32, mpsc::Sender<Result<(), Error>>);

/// The mock clusters of this process, by bootstrap servers.
static CLUSTERS: Mutex<Option<HashMap<String, mpsc::Sender<Create>>>> = Mutex::new(None);

/// An in-process Kafka cluster that lives as long as this value.
///
/// It speaks the Kafka protocol on loopback ports, so a [`Consumer`](crate::Consumer)
/// and a [`Producer`](crate::Producer) use it like a real cluster. It is not
/// a real broker: use it for demos and fast tests, not as proof.
pub struct MockCluster {
    bootstrap_servers: String,
    /// Asks the thread that owns the cluster (librdkafka's handle may not
    /// move between threads) to create a topic.
    create: mpsc::Sender<Create>,
    owner: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for MockCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockCluster").field("bootstrap_servers", &self.bootstrap_servers).finish()
    }
}

impl MockCluster {
    /// Starts a cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<Self, Error> {
        let (create, requests) = mpsc::channel::<Create>();
        let (started, start) = mpsc::channel();
        let owner = std::thread::Builder::new()
            .name("kafka-handler:mock".into())
            .spawn(move || {
                let cluster = match mocking::MockCluster::<DefaultProducerContext>::new(brokers) {
                    Ok(cluster) => cluster,
                    Err(e) => return drop(started.send(Err(Error::from(e)))),
                };
                let _ = started.send(Ok(cluster.bootstrap_servers()));
                // Until the last sender (the handle and the registry's) is gone.
                for (topic, partitions, done) in requests {
                    let _ = done.send(cluster.create_topic(&topic, partitions, 1).map_err(Error::from));
                }
            })
            .map_err(|e| Error::Runtime(format!("could not start the mock cluster's thread: {e}")))?;
        let bootstrap_servers =
            start.recv().map_err(|_| Error::Runtime("the mock cluster's thread stopped".into()))??;
        let mut clusters = CLUSTERS.lock().unwrap_or_else(PoisonError::into_inner);
        clusters.get_or_insert_with(HashMap::new).insert(bootstrap_servers.clone(), create.clone());
        Ok(Self { bootstrap_servers, create, owner: Some(owner) })
    }

    /// `host:port,…` to give to builders.
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap_servers.clone()
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), Error> {
        create(&self.create, topic, partitions)
    }
}

impl Drop for MockCluster {
    fn drop(&mut self) {
        if let Some(clusters) = CLUSTERS.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            clusters.remove(&self.bootstrap_servers);
        }
        // The thread ends once no sender is left.
        let (orphan, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.create, orphan));
        if let Some(owner) = self.owner.take() {
            let _ = owner.join();
        }
    }
}

fn create(cluster: &mpsc::Sender<Create>, topic: &str, partitions: i32) -> Result<(), Error> {
    let (done, result) = mpsc::channel();
    let gone = || Error::Runtime("the mock cluster is stopped".into());
    cluster.send((topic.to_owned(), partitions, done)).map_err(|_| gone())?;
    result.recv().map_err(|_| gone())?
}

/// Creates `topic` on the mock cluster at `bootstrap_servers` unless it
/// exists, if this process runs one there: `None` if it does not.
pub(crate) fn create_topic(bootstrap_servers: &str, topic: &str, partitions: i32) -> Option<Result<(), Error>> {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists;
    let cluster = CLUSTERS.lock().unwrap_or_else(PoisonError::into_inner).as_ref()?.get(bootstrap_servers)?.clone();
    Some(match create(&cluster, topic, partitions) {
        Err(Error::Kafka(KafkaError::MockCluster(TopicAlreadyExists))) => Ok(()),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn consumers_find_a_live_cluster_by_its_servers_and_create_topics_once() {
        let cluster = super::MockCluster::start(1).unwrap();
        let servers = cluster.bootstrap_servers();
        assert!(matches!(super::create_topic(&servers, "t.g.retry.1", 3), Some(Ok(()))));
        assert!(matches!(super::create_topic(&servers, "t.g.retry.1", 3), Some(Ok(()))), "exists: fine");
        assert!(cluster.create_topic("t.g.retry.1", 3).is_err(), "asked for explicitly: an error");
        drop(cluster);
        assert!(super::create_topic(&servers, "u", 1).is_none());
    }
}
