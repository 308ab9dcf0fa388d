//! Starts the parts of the system a process runs: all of them on embedded
//! defaults, or one role against shared Kafka, PostgreSQL and Redis.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kafka_handler::Producer;
use kafka_handler::dedup::DedupStore;
use kafka_handler::mock::MockCluster;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::api::Api;
use crate::config::Settings;
use crate::db::Db;
use crate::outbox::{OutboxSignal, Relay};
use crate::shutdown::Shutdown;
use crate::simulator::{Simulator, SimulatorConfig};
use crate::workers::providers::Providers;
use crate::workers::{self, Ctx};

/// Which parts run in this process.
#[derive(Clone, Debug, Default)]
pub struct Parts {
    pub api: bool,
    pub relay: bool,
    /// Consumer groups (see [`crate::config::JOBS`]).
    pub jobs: Vec<String>,
}

impl Parts {
    /// Everything.
    pub fn all() -> Self {
        Self { api: true, relay: true, jobs: crate::config::JOBS.iter().map(|j| (*j).to_owned()).collect() }
    }
}

/// A running process's parts.
#[derive(Debug)]
pub struct System {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub bootstrap: String,
    /// The order API, if this process serves it.
    pub api_addr: Option<SocketAddr>,
    /// The simulator, if it runs in this process.
    pub simulator: Option<Simulator>,
    /// Where the providers are.
    pub simulator_url: String,
    pub providers: Providers,
    pub shutdown: Shutdown,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    _mock: Option<MockCluster>,
}

impl System {
    /// Starts `parts`. Without `KAFKA_BOOTSTRAP_SERVERS` it starts an
    /// in-process mock cluster; without `SIMULATOR_URL`, the simulator.
    pub async fn start(settings: Settings, simulator: SimulatorConfig, parts: Parts) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let shutdown = Shutdown::default();
        let topics = settings.topics();
        let (bootstrap, mock) = match &settings.kafka {
            Some(servers) if !servers.is_empty() => {
                let all = settings.all_topics();
                create_topics(servers, &all.iter().map(String::as_str).collect::<Vec<_>>(), settings.partitions)
                    .await?;
                (servers.clone(), None)
            }
            _ => {
                let mock = MockCluster::start(1)?;
                for topic in settings.all_topics() {
                    mock.create_topic(&topic, settings.partitions)?;
                }
                (mock.bootstrap_servers(), Some(mock))
            }
        };
        // SQLite has one writer at a time: one pooled connection makes writers
        // queue in order, where several would poll for the file lock with
        // growing sleeps (p99 of the API 1 s instead of 80 ms in the demo).
        let connections = if settings.database().starts_with("postgres") { 16 } else { 1 };
        let db = Db::connect(&settings.database(), connections).await?;
        db.migrate().await?;

        let (simulator, simulator_url) = match &settings.simulator_url {
            Some(url) if !url.is_empty() => (None, url.clone()),
            _ => {
                let sim = Simulator::new(simulator);
                let addr = sim.serve("127.0.0.1:0".parse()?, shutdown.clone()).await?;
                (Some(sim), format!("http://{addr}"))
            }
        };
        let providers = Providers::new(&simulator_url, Duration::from_millis(settings.http_timeout_ms))?;
        let producer = Producer::builder()
            .from_env()
            .bootstrap_servers(&bootstrap)
            .set("linger.ms", "1")
            .set("message.timeout.ms", "15000")
            .build()?;
        let signal = OutboxSignal::default();
        let telemetry = crate::telemetry::Telemetry::new()?;
        let mut tasks = tokio::task::JoinSet::new();

        match &db {
            Db::Postgres(pool) if !parts.relay && (parts.api || !parts.jobs.is_empty()) => {
                tasks.spawn(crate::outbox::forward_wake_ups(pool.clone(), signal.clone(), shutdown.clone()));
            }
            _ => {}
        }
        if parts.relay {
            let relay = Relay { db: db.clone(), producer: producer.clone(), signal: signal.clone() };
            tasks.spawn(relay.run(shutdown.clone()));
        }
        let api_addr = if parts.api {
            // On PostgreSQL the API has a pool of its own: requests never wait
            // for a connection behind the workers' batch transactions.
            let api_db = match &db {
                Db::Postgres(_) => Db::connect(&settings.database(), 16).await?,
                Db::Sqlite(_) => db.clone(),
            };
            let mut api = Api::new(api_db, topics.clone(), signal.clone(), providers.clone()).await?;
            api.telemetry = Some(telemetry.clone());
            Some(api.serve(settings.api_addr, shutdown.clone()).await?)
        } else {
            if let Some(addr) = settings.metrics_addr {
                telemetry.serve(addr, shutdown.clone()).await?;
            }
            None
        };
        if !parts.jobs.is_empty() {
            let ctx = Ctx {
                settings: settings.clone(),
                topics,
                bootstrap: bootstrap.clone(),
                db: db.clone(),
                producer,
                providers: providers.clone(),
                signal,
                dedup: dedup_store(&settings, &db).await?,
                telemetry,
            };
            let (jobs, stop) = (parts.jobs.clone(), shutdown.clone());
            tasks.spawn(async move { workers::run(&ctx, &jobs, stop).await });
        }
        Ok(System {
            settings,
            db,
            bootstrap,
            api_addr,
            simulator,
            simulator_url,
            providers,
            shutdown,
            tasks,
            _mock: mock,
        })
    }

    /// Runs until Ctrl-C, SIGTERM, or a part failing.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.shutdown.on_signal();
        let mut result = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = done.map_err(anyhow::Error::from).and_then(|r| r) {
                self.shutdown.trigger();
                result = Err(e);
            }
        }
        result
    }

    /// Stops every part and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        Ok(())
    }
}

/// Redis when `REDIS_URL` is set, else the order database (a separate SQLite
/// file on embedded defaults, so dedup writes do not queue behind orders).
async fn dedup_store(settings: &Settings, db: &Db) -> anyhow::Result<Arc<dyn DedupStore>> {
    use kafka_handler::dedup::{postgres::PostgresStore, redis::RedisStore, sqlite::SqliteStore};
    if let Some(url) = settings.redis_url.as_deref().filter(|u| !u.is_empty()) {
        let store = RedisStore::connect(url).await?.key_prefix(format!("{}orders:dedup:", settings.prefix));
        return Ok(Arc::new(store));
    }
    match db {
        Db::Postgres(pool) => Ok(Arc::new(PostgresStore::new(pool.clone()))),
        Db::Sqlite(_) => {
            let url = format!("{}.dedup", settings.database());
            let Db::Sqlite(pool) = Db::connect(&url, 4).await? else { unreachable!("a SQLite url") };
            let store = SqliteStore::new(pool);
            store.migrate().await?;
            Ok(Arc::new(store))
        }
    }
}

/// Creates `topics` unless they exist, and waits until the broker serves them.
pub async fn create_topics(bootstrap: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(-1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, e)) => anyhow::bail!("could not create topic {topic}: {e}"),
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for topic in topics {
        loop {
            let ready = admin
                .inner()
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.error().is_none() && !t.partitions().is_empty()))
                .unwrap_or(false);
            if ready {
                break;
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "topic {topic} did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
