//! Metrics and health of a running consumer, read the way Prometheus and a
//! probe read them: through the OpenTelemetry Prometheus exporter and
//! `Consumer::health`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_handler::dedup::MemoryStore;
use kafka_handler::extract::{Attempt, Json, Metadata};
use kafka_handler::middleware::{DedupLayer, ExponentialBackoff};
use kafka_handler::mock::MockCluster;
use kafka_handler::{Consumer, ConsumerBuilder, HandlerError, Health, Outgoing, Producer};
use kafka_handler_tests::events::{TestEvent, produce};
use kafka_handler_tests::{bootstrap, create_topic, init_tracing, random_name};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use tokio::sync::{oneshot, watch};

/// A meter provider whose metrics are read as Prometheus would scrape them.
struct Scraper {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
}

impl Scraper {
    fn new() -> Self {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter().with_registry(registry.clone()).build().unwrap();
        Scraper { provider: SdkMeterProvider::builder().with_reader(exporter).build(), registry }
    }

    fn text(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap()
    }

    /// The value of the sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.text().lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let wanted = metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse().ok()).flatten()
        })
    }
}

/// Waits until `check` holds, failing with `what` after `timeout`.
async fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn builder(bootstrap: &str, topic: &str, scraper: &Scraper) -> ConsumerBuilder {
    Consumer::builder()
        .bootstrap_servers(bootstrap)
        .group_id(random_name("obs"))
        .topic(topic)
        .meter_provider(&scraper.provider)
}

/// Starts `consumer`; the returned sender stops it.
fn start(consumer: Consumer) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), kafka_handler::Error>>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn stop(stop: oneshot::Sender<()>, task: tokio::task::JoinHandle<Result<(), kafka_handler::Error>>) {
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(60), task).await.expect("shutdown").unwrap().unwrap();
}

/// Invariant: the lag gauge is the partition's end offset minus the group's
/// committed offset, also while back-pressure pauses the partition (records
/// produced during the pause count), and it returns to 0 once everything is
/// handled and committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_the_backlog_of_a_held_handler_while_paused_and_returns_to_zero() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("obs-lag");
    create_topic(&bootstrap, &topic, 1, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    produce(&producer, &topic, 10, 0, 500).await;

    let scraper = Scraper::new();
    let (release, held) = watch::channel(false);
    let consumer = builder(&bootstrap, &topic, &scraper)
        .max_buffered(50)
        .handler(move || {
            let mut held = held.clone();
            async move {
                let _ = held.wait_for(|released| *released).await;
            }
        })
        .build()
        .unwrap();
    let group = consumer.group_id().to_owned();
    let (stop_tx, task) = start(consumer);
    let labels = [("group", group.as_str()), ("topic", topic.as_str()), ("partition", "0")];
    let lag = || scraper.value("kafka_handler_consumer_lag", &labels);

    wait_for(Duration::from_secs(30), "the lag of the first 500 records", || lag() == Some(500.0)).await;
    wait_for(Duration::from_secs(10), "back-pressure to pause the partition", || {
        scraper.value("kafka_handler_consumer_partitions_paused", &[("group", group.as_str())]) == Some(1.0)
    })
    .await;
    produce(&producer, &topic, 10, 500, 500).await;
    wait_for(Duration::from_secs(30), "the lag to count records produced during the pause", || lag() == Some(1000.0))
        .await;
    eprintln!("lag while held and paused: {:?}", lag());

    release.send(true).unwrap();
    wait_for(Duration::from_secs(60), "the lag to return to 0", || lag() == Some(0.0)).await;
    let handled = scraper.value("kafka_handler_consumer_records_total", &[("group", &group), ("outcome", "ok")]);
    assert_eq!(handled, Some(1000.0));
    stop(stop_tx, task).await;
}

/// Invariant: the time lag is the age of the oldest unfinished record: it
/// grows as long as that record is stuck and drops to 0 when it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_lag_grows_while_a_record_is_stuck_and_resets_when_it_finishes() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("obs-time-lag");
    create_topic(&bootstrap, &topic, 1, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    produce(&producer, &topic, 1, 0, 1).await;

    let scraper = Scraper::new();
    let (release, held) = watch::channel(false);
    let consumer = builder(&bootstrap, &topic, &scraper)
        .handler(move || {
            let mut held = held.clone();
            async move {
                let _ = held.wait_for(|released| *released).await;
            }
        })
        .build()
        .unwrap();
    let group = consumer.group_id().to_owned();
    let (stop_tx, task) = start(consumer);
    let labels = [("group", group.as_str()), ("topic", topic.as_str()), ("partition", "0")];
    let age = || scraper.value("kafka_handler_consumer_time_lag_seconds", &labels);

    wait_for(Duration::from_secs(30), "the stuck record to be 1 s old", || age().is_some_and(|a| a >= 1.0)).await;
    let first = age().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = age().unwrap();
    eprintln!("time lag: {first:.2} s, 3 s later {later:.2} s");
    assert!(later >= first + 2.5, "the time lag grew from {first} to {later} in 3 s");

    release.send(true).unwrap();
    wait_for(Duration::from_secs(10), "the time lag to drop to 0", || age() == Some(0.0)).await;
    stop(stop_tx, task).await;
}

/// Invariant: a partition whose oldest unfinished record does not finish
/// within the stall timeout is reported — topic, partition, offset — by the
/// health check as soon as the timeout has passed (within a second's
/// slack), the consumer stays ready but is not live, and both recover when
/// the record finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_partition_is_reported_by_the_health_check_within_the_threshold() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("obs-stall");
    create_topic(&bootstrap, &topic, 1, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    produce(&producer, &topic, 1, 0, 3).await;

    let threshold = Duration::from_secs(3);
    let scraper = Scraper::new();
    let (release, held) = watch::channel(false);
    let stuck_since: Arc<Mutex<Option<Instant>>> = Arc::default();
    let since = stuck_since.clone();
    let consumer = builder(&bootstrap, &topic, &scraper)
        .stall_timeout(threshold)
        .handler(move |meta: Metadata| {
            let (mut held, since) = (held.clone(), since.clone());
            async move {
                if meta.offset == 1 {
                    since.lock().unwrap().get_or_insert_with(Instant::now);
                    let _ = held.wait_for(|released| *released).await;
                }
            }
        })
        .build()
        .unwrap();
    let group = consumer.group_id().to_owned();
    let health = consumer.health();
    let before = health.report();
    assert!(before.live && !before.ready, "before run: live, not ready: {before:?}");
    let (stop_tx, task) = start(consumer);

    wait_for(Duration::from_secs(30), "the record at offset 1 to get stuck", || stuck_since.lock().unwrap().is_some())
        .await;
    let stuck_at = stuck_since.lock().unwrap().unwrap();
    wait_for(threshold + Duration::from_secs(5), "the stall to be reported", || !health.report().stalled.is_empty())
        .await;
    let reported_after = stuck_at.elapsed();
    let report = health.report();
    eprintln!("reported {reported_after:?} after the record got stuck: {report:?}");
    assert!(reported_after <= threshold + Duration::from_secs(1), "reported late: {reported_after:?}");
    let stalled = &report.stalled[0];
    assert_eq!((stalled.topic.as_str(), stalled.partition, stalled.offset), (topic.as_str(), 0, 1));
    assert!(stalled.stalled_for >= threshold);
    assert!(report.ready && !report.live, "{report:?}");
    let labels = [("group", group.as_str()), ("topic", topic.as_str()), ("partition", "0")];
    assert_eq!(scraper.value("kafka_handler_consumer_stalled", &labels), Some(1.0));

    release.send(true).unwrap();
    wait_for(Duration::from_secs(10), "the stall to clear", || {
        let r = health.report();
        r.stalled.is_empty() && r.live
    })
    .await;
    assert_eq!(scraper.value("kafka_handler_consumer_stalled", &labels), Some(0.0));
    stop(stop_tx, task).await;
    let after = health.report();
    assert!(!after.live && !after.ready, "after run: neither: {after:?}");
}

/// Metric names referenced by a dashboard or rule file.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("kafka_handler_") {
        let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// Invariant: every metric the shipped Grafana dashboard and Prometheus
/// alert rules use is one the code exports, under the name the
/// OpenTelemetry Prometheus exporter gives it. Runs on the mock cluster with
/// a handler that waits, fails once retryably, fails permanently, and sees
/// a duplicate event, so every instrument has reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_exported_metric_names() {
    init_tracing();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring");
    let dashboard = std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is valid JSON");
    let rules = std::fs::read_to_string(root.join("alerts.yml")).unwrap();
    let mut wanted = referenced(&dashboard);
    wanted.extend(referenced(&rules));
    assert!(wanted.len() >= 10, "too few metric names found: {wanted:?}");

    let cluster = MockCluster::start(1).unwrap();
    let (topic, group) = ("orders", "inventory");
    for (name, partitions) in [(topic, 2), ("orders.dlt", 2), ("orders.inventory.redrive", 2)] {
        cluster.create_topic(name, partitions).unwrap();
    }
    let producer = Producer::builder().bootstrap_servers(cluster.bootstrap_servers()).build().unwrap();
    for (key, seq, id) in [("k0", 0, "e0"), ("k1", 0, "e1"), ("k2", 0, "e2"), ("k2", 1, "e2")] {
        let event = TestEvent { event_id: id.into(), key: key.into(), seq };
        producer.send(Outgoing::json(topic, &event).unwrap().key(key)).await.unwrap();
    }
    let scraper = Scraper::new();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let consumer = builder(&cluster.bootstrap_servers(), topic, &scraper)
        .group_id(group)
        .create_topics(false)
        .retry(ExponentialBackoff::default().initial(Duration::from_millis(10)).max_retries(1))
        .dedup(DedupLayer::new(MemoryStore::default()))
        .dead_letter(producer.clone())
        .handler(move |Json(event): Json<TestEvent>, Attempt(attempt): Attempt| {
            let d = d.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                match (event.key.as_str(), attempt) {
                    ("k0", _) => Err(HandlerError::permanent("out of stock")),
                    ("k1", 1) => Err(HandlerError::retryable("inventory API down")),
                    _ => {
                        d.store(true, AtomicOrdering::SeqCst);
                        Ok(())
                    }
                }
            }
        })
        .build()
        .unwrap();
    let (stop_tx, task) = start(consumer);

    let exported = || -> BTreeSet<String> {
        scraper
            .text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
            .collect()
    };
    let missing = || wanted.difference(&exported()).cloned().collect::<Vec<_>>();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !missing().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(done.load(AtomicOrdering::SeqCst), "the handler never succeeded");
    assert_eq!(missing(), Vec::<String>::new(), "named by the dashboard or the rules but not exported");
    eprintln!("exported: {:?}", exported());
    stop(stop_tx, task).await;
}

/// Invariant: a member that gets no partition (more members than
/// partitions) is ready all the same — a standby, not a failure — so a
/// rolling update that adds a member is not held up by its readiness probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_partitions_is_ready() {
    init_tracing();
    let cluster = MockCluster::start(1).unwrap();
    cluster.create_topic("one-partition", 1).unwrap();
    let consumer = || {
        Consumer::builder()
            .bootstrap_servers(cluster.bootstrap_servers())
            .group_id("standby")
            .topic("one-partition")
            .handler(|| async {})
            .build()
            .unwrap()
    };
    let (first, second) = (consumer(), consumer());
    let health = [first.health(), second.health()];
    let runs = [start(first), start(second)];
    let assigned = || {
        let mut assigned: Vec<usize> = health.iter().map(|h| h.report().assigned).collect();
        assigned.sort();
        assigned
    };
    wait_for(Duration::from_secs(30), "the partition to be assigned", || assigned() == [0, 1]).await;
    let reports: Vec<_> = health.iter().map(Health::report).collect();
    assert!(reports.iter().all(|r| r.ready && r.live), "{reports:?}");
    for (stop_tx, task) in runs {
        stop(stop_tx, task).await;
    }
}
