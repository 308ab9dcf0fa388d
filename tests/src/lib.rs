//! Shared helpers for the tests: where the test bed is, random topics, test
//! events, and the log that consumer processes write and tests count.

#![allow(unreachable_pub)]

pub mod events;
pub mod process;
pub mod stores;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// The broker started by `scripts/test`, or a clear failure.
pub fn bootstrap() -> String {
    env_or_fail("KAFKA_BOOTSTRAP_SERVERS", "a Kafka broker")
}

/// The 3-broker cluster (replication factor 3, `min.insync.replicas=2`).
pub fn cluster3() -> String {
    env_or_fail("KH_TEST_KAFKA_CLUSTER3", "the 3-broker Kafka cluster")
}

/// The PostgreSQL database started by `scripts/test`.
pub fn database_url() -> String {
    env_or_fail("DATABASE_URL", "PostgreSQL")
}

/// The standalone Redis started by `scripts/test`.
pub fn redis_url() -> String {
    env_or_fail("REDIS_URL", "Redis")
}

/// The nodes of the 3-node Redis Cluster (`testbed.py up --redis-cluster`).
pub fn redis_cluster_urls() -> Vec<String> {
    env_or_fail("REDIS_CLUSTER_URLS", "the 3-node Redis Cluster").split(',').map(str::to_owned).collect()
}

pub(crate) fn env_or_fail(name: &str, what: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: this test needs {what}. Run the suite with `scripts/test`, \
             which starts Kafka, Redis and PostgreSQL and sets the environment."
        ),
    }
}

/// Stops, kills or starts one component of the test bed (`kafka`,
/// `cluster3-2`, `redis`, …), waiting until a started one answers.
pub fn testbed_node(action: &str, node: &str) {
    let script = env_or_fail("KH_TESTBED_PY", "the test bed script");
    let status =
        std::process::Command::new("python3").args([&script, "node", action, node]).status().expect("run testbed.py");
    assert!(status.success(), "testbed.py node {action} {node} failed");
}

/// A topic name no other test uses.
pub fn random_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Creates `topic` and waits until the broker serves its metadata.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32, replication: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let results = admin
        .create_topics([&new], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))))
        .await
        .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("could not create {t}: {e}"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32 == partitions && t.error().is_none()))
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "topic {topic} did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Initializes test logging once (`RUST_LOG` controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A scratch directory, removed when the test passes and kept when it fails.
#[derive(Debug)]
pub struct TestDir(pub std::path::PathBuf);

impl TestDir {
    /// Creates `$TMPDIR/<name>`.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `consumer` until `done` holds, failing after `timeout`; then shuts it
/// down gracefully.
pub async fn run_until(consumer: kafka_handler::Consumer, timeout: Duration, done: impl Fn() -> bool + Send + 'static) {
    let run = consumer.run_until(async move {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::timeout(timeout, run).await.expect("timed out").expect("consumer failed");
}

/// Reads at least `count` records of `topic` with a consumer of a fresh
/// group, as a dead-letter monitor would: a dead-letter consumer is just a
/// handler taking the `Record`.
pub async fn read_records(bootstrap: &str, topic: &str, count: usize) -> Vec<kafka_handler::Record> {
    use std::sync::{Arc, Mutex};
    let records: Arc<Mutex<Vec<kafka_handler::Record>>> = Arc::default();
    let r = records.clone();
    let monitor = kafka_handler::Consumer::builder()
        .bootstrap_servers(bootstrap)
        .group_id(random_name("dlt-monitoring"))
        .topic(topic)
        .handler(move |record: kafka_handler::Record| {
            let r = r.clone();
            async move { r.lock().unwrap().push(record) }
        })
        .build()
        .expect("monitor");
    let r = records.clone();
    run_until(monitor, Duration::from_secs(60), move || r.lock().unwrap().len() >= count).await;
    records.lock().unwrap().clone()
}
