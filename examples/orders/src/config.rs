//! Configuration from flags and the environment, and the names derived from it.

use std::net::SocketAddr;
use std::time::Duration;

/// Where the parts of the system are; every setting has an environment
/// variable, so a container needs no flags.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Kafka brokers; unset: an in-process mock cluster (embedded mode only).
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", global = true)]
    pub kafka: Option<String>,
    /// `postgres://…` or `sqlite://path`; unset: SQLite under `./data`.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Redis for the dedup store of the handlers with external effects; unset:
    /// the SQL database.
    #[arg(long, env = "REDIS_URL", global = true)]
    pub redis_url: Option<String>,
    /// The provider simulator; unset: started in-process.
    #[arg(long, env = "SIMULATOR_URL", global = true)]
    pub simulator_url: Option<String>,
    /// Prepended to every topic, consumer group and dedup key.
    #[arg(long, env = "ORDERS_PREFIX", default_value = "", global = true)]
    pub prefix: String,
    /// Partitions of the topics the system creates.
    #[arg(long, env = "ORDERS_PARTITIONS", default_value_t = 6, global = true)]
    pub partitions: i32,
    /// Where the order API listens.
    #[arg(long, env = "ORDERS_API_ADDR", default_value = "127.0.0.1:8080", global = true)]
    pub api_addr: SocketAddr,
    /// Retry-topic delays in milliseconds, comma-separated (the domain's 1 s, 2 s, 4 s).
    #[arg(
        long,
        env = "ORDERS_RETRY_DELAYS_MS",
        default_value = "1000,2000,4000",
        value_delimiter = ',',
        global = true
    )]
    pub retry_delays_ms: Vec<u64>,
    /// Timeout of each call to a provider, in milliseconds.
    #[arg(long, env = "ORDERS_HTTP_TIMEOUT_MS", default_value_t = 5000, global = true)]
    pub http_timeout_ms: u64,
    /// Dedup lease of the handlers with external effects, in milliseconds: how
    /// long a crashed worker's claim blocks the event.
    #[arg(long, env = "ORDERS_DEDUP_LEASE_MS", default_value_t = 30_000, global = true)]
    pub dedup_lease_ms: u64,
    /// Where a process without the API serves `/metrics` (workers, relay);
    /// unset: nowhere.
    #[arg(long, env = "ORDERS_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where embedded mode keeps its SQLite files.
    #[arg(long, env = "ORDERS_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: std::path::PathBuf,
}

impl Settings {
    /// Topic names.
    pub fn topics(&self) -> Topics {
        Topics::new(&self.prefix)
    }

    /// The consumer group of a job.
    pub fn group(&self, job: &str) -> String {
        format!("{}{job}", self.prefix)
    }

    /// The retry-topic delays.
    pub fn retry_delays(&self) -> Vec<Duration> {
        self.retry_delays_ms.iter().copied().map(Duration::from_millis).collect()
    }

    /// The topics a job reads (its retry and re-drive topics aside).
    pub fn sources(&self, job: &str) -> Vec<String> {
        let t = self.topics();
        match job {
            "inventory" | "payment" => vec![t.created, t.events],
            "analytics" => vec![t.created],
            "dlt-monitor" => t.dead_letters().to_vec(),
            _ => vec![t.events],
        }
    }

    /// Every topic the system uses: the three main ones, the dead-letter
    /// topics, and each job's retry and re-drive topics. Created at start,
    /// so that no consumer subscribes to a topic that is not there yet.
    pub fn all_topics(&self) -> Vec<String> {
        let t = self.topics();
        let mut all: Vec<String> = t.all().iter().map(|s| (*s).to_owned()).collect();
        all.extend(t.dead_letters());
        for job in JOBS.iter().filter(|j| **j != "dlt-monitor") {
            let group = self.group(job);
            for source in self.sources(job) {
                all.extend((1..=self.retry_delays_ms.len()).map(|level| format!("{source}.{group}.retry.{level}")));
                all.push(format!("{source}.{group}.redrive"));
            }
        }
        all
    }

    /// The SQL database: `DATABASE_URL`, else `sqlite://<data_dir>/orders.db`.
    pub fn database(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("orders.db").display()))
    }
}

/// The topics of the system.
#[derive(Clone, Debug)]
pub struct Topics {
    /// `OrderCreated`, from the outbox of the order API.
    pub created: String,
    /// Every follow-up event (`StockReserved`, `PaymentCompleted`, …).
    pub events: String,
    /// The analytics team's copy of the order stream.
    pub analytics: String,
}

impl Topics {
    /// Names with `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            created: format!("{prefix}order.created"),
            events: format!("{prefix}order.events"),
            analytics: format!("{prefix}analytics.orders"),
        }
    }

    /// The dead-letter topics the monitor reads.
    pub fn dead_letters(&self) -> [String; 2] {
        [format!("{}.dlt", self.created), format!("{}.dlt", self.events)]
    }

    /// The topics the system creates at start.
    pub fn all(&self) -> [&str; 3] {
        [&self.created, &self.events, &self.analytics]
    }
}

/// The consumer groups, one per follow-up job.
pub const JOBS: [&str; 7] =
    ["inventory", "payment", "points", "notification", "analytics", "order-status", "dlt-monitor"];

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
