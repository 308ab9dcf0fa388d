//! The order system in one binary.
//!
//! ```text
//! cargo run -p orders                        # everything, embedded: mock Kafka, SQLite, simulator
//! cargo run -p orders -- demo --orders 200   # drive 200 orders through it, print a summary
//! orders api | relay | worker <job>[,<job>…] | simulator   # one role, against Kafka, PostgreSQL, Redis
//! ```
//!
//! A failure ends the process with exit code 1 and one line on stderr,
//! `error: ` and the error with its causes.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orders::config::{JOBS, Settings};
use orders::demo::{self, Load};
use orders::simulator::{Simulator, SimulatorConfig};
use orders::system::{Parts, System};

#[derive(Parser, Debug)]
#[command(version, about = "An event-driven order system built on kafka-handler")]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    simulator: SimulatorConfig,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Everything in one process (the default).
    All,
    /// Everything, then N orders through the API, and a summary.
    Demo {
        /// How many orders.
        #[arg(long, default_value_t = 200)]
        orders: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Share of provider requests that fail (retried through retry topics).
        #[arg(long, default_value_t = 0.05)]
        failure_rate: f64,
        /// Provider latency in ms (the domain's is 1,000).
        #[arg(long, default_value_t = 1000)]
        latency_ms: u64,
    },
    /// The order API (`POST /orders`, `GET /orders/{id}`, `POST /orders/sync`).
    Api,
    /// The outbox relay.
    Relay,
    /// Consumer groups, comma-separated, or `all`.
    Worker {
        #[arg(value_delimiter = ',')]
        jobs: Vec<String>,
    },
    /// The provider simulator.
    Simulator,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` is the error and its causes on one line; `{:?}`, what
            // returning the error from `main` prints, adds a backtrace
            // whenever RUST_BACKTRACE is set.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(Cli { settings, simulator, role }: Cli) -> anyhow::Result<()> {
    match role.unwrap_or(Role::All) {
        Role::All => {
            let embedded = describe(&settings);
            let system = System::start(settings, simulator, Parts::all()).await?;
            let api = system.api_addr.expect("the API runs");
            println!("{embedded}");
            println!("order API:  http://{api}");
            println!("  curl -si http://{api}/orders -H 'content-type: application/json' -H 'Idempotency-Key: k1' \\");
            println!("       -d '{{\"userId\":\"u1\",\"productId\":\"sku-01\",\"quantity\":2,\"amount\":\"9.98\"}}'");
            println!("  curl -s  http://{api}/orders/<orderId>");
            println!(
                "  curl -si http://{api}/orders/sync -H 'content-type: application/json' -d '…'   (the inline \"before\")"
            );
            println!("metrics:    http://{api}/metrics");
            println!("products:   sku-01 … sku-20, sku-limited (25 in stock), sku-soldout (none)");
            println!("Ctrl-C to stop");
            system.wait().await
        }
        Role::Demo { orders, concurrency, failure_rate, latency_ms } => {
            let mut settings = settings;
            if settings.database_url.is_none() {
                // A fresh database per demo, so the summary counts this run only.
                settings.data_dir = settings.data_dir.join("demo");
                let _ = std::fs::remove_dir_all(&settings.data_dir);
            }
            settings.api_addr = "127.0.0.1:0".parse()?;
            // A request fails at most once unless SIM_MAX_FAILURES_PER_KEY says
            // otherwise: with the three retries every effect then happens,
            // and the summary can hold the run to every promise.
            let max_failures = if simulator.max_failures_per_key == 0 { 1 } else { simulator.max_failures_per_key };
            let simulator = SimulatorConfig {
                max_failures_per_key: max_failures,
                ..SimulatorConfig::uniform(latency_ms, failure_rate)
            };
            println!("{}", describe(&settings));
            println!(
                "providers: {latency_ms} ms latency; {:.0} % of requests fail, each at most {max_failures} ×, \
                 retried after 1 s, 2 s, 4 s, then dead-lettered",
                failure_rate * 100.0
            );
            let system = System::start(settings, simulator, Parts::all()).await?;
            let base = format!("http://{}", system.api_addr.expect("the API runs"));
            let audit = demo::run(&system, &base, &Load { concurrency, ..Load::new(orders) }).await?;
            system.stop().await?;
            anyhow::ensure!(audit.violations.is_empty(), "{} promises broken", audit.violations.len());
            Ok(())
        }
        Role::Api => run_part(settings, simulator, Parts { api: true, ..Parts::default() }).await,
        Role::Relay => run_part(settings, simulator, Parts { relay: true, ..Parts::default() }).await,
        Role::Worker { jobs } => {
            let jobs =
                if jobs.is_empty() || jobs == ["all"] { JOBS.iter().map(|j| (*j).to_owned()).collect() } else { jobs };
            run_part(settings, simulator, Parts { jobs, ..Parts::default() }).await
        }
        Role::Simulator => {
            let shutdown = orders::shutdown::Shutdown::default();
            shutdown.on_signal();
            let addr = Simulator::new(simulator.clone())
                .serve(simulator.sim_addr, shutdown.clone())
                .await
                .map_err(|e| name_the_listener(e, Some(simulator.sim_addr), "SIM_ADDR or --sim-addr"))?;
            println!("provider simulator on http://{addr}");
            shutdown.wait().await;
            Ok(())
        }
    }
}

async fn run_part(settings: Settings, simulator: SimulatorConfig, parts: Parts) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.kafka.as_deref().is_some_and(|k| !k.is_empty()),
        "a single role needs KAFKA_BOOTSTRAP_SERVERS (the in-process broker is only for `orders` alone)"
    );
    // The API names its address itself; the metrics listener is the other
    // one a role may open.
    let metrics = if parts.api { None } else { settings.metrics_addr };
    let system = System::start(settings, simulator, parts.clone())
        .await
        .map_err(|e| name_the_listener(e, metrics, "ORDERS_METRICS_ADDR or --metrics-addr"))?;
    if let Some(api) = system.api_addr {
        println!("order API on http://{api}");
    }
    if parts.relay {
        println!("outbox relay running");
    }
    if !parts.jobs.is_empty() {
        println!("consumer groups running: {}", parts.jobs.join(", "));
    }
    system.wait().await
}

/// `e`, or, if it is a socket's refusal to listen, that refusal naming the
/// address `addr` of the one listener that could have failed so.
fn name_the_listener(e: anyhow::Error, addr: Option<SocketAddr>, setting: &str) -> anyhow::Error {
    use std::io::ErrorKind::{AddrInUse, AddrNotAvailable};
    match (e.downcast_ref::<std::io::Error>(), addr) {
        (Some(io), Some(addr)) if matches!(io.kind(), AddrInUse | AddrNotAvailable) => {
            orders::api::error::cannot_listen(addr, io, setting)
        }
        _ => e,
    }
}

fn describe(settings: &Settings) -> String {
    let kafka = match &settings.kafka {
        Some(k) if !k.is_empty() => format!("Kafka at {k}"),
        _ => "in-process mock Kafka cluster (KAFKA_BOOTSTRAP_SERVERS not set)".into(),
    };
    let redis = settings.redis_url.as_deref().map_or("the SQL database".to_owned(), |r| format!("Redis at {r}"));
    let sim = settings.simulator_url.as_deref().map_or("in-process".to_owned(), str::to_owned);
    format!("{kafka}\ndatabase: {}\ndedup store: {redis}\nprovider simulator: {sim}", settings.database())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    const COMPOSE: &str = include_str!("../docker-compose.yml");

    /// The `command:` of every service built from this binary, as JSON arrays.
    fn commands() -> Vec<Vec<String>> {
        COMPOSE
            .lines()
            .filter_map(|line| line.trim().strip_prefix("command: "))
            .filter_map(|args| serde_json::from_str::<Vec<String>>(args).ok())
            .filter(|args| args.first().is_some_and(|role| role != "redis-server"))
            .collect()
    }

    /// Invariant: every role the compose file starts is one this binary
    /// accepts, and every job it names exists (the file is not run here:
    /// no container engine on the test machines).
    #[test]
    fn the_compose_files_roles_are_the_binarys() {
        let commands = commands();
        assert!(commands.len() >= 7, "expected the simulator, api, relay and workers, got {commands:?}");
        let mut jobs_seen = Vec::new();
        for args in &commands {
            let cli = Cli::try_parse_from(std::iter::once("orders").chain(args.iter().map(String::as_str)))
                .unwrap_or_else(|e| panic!("docker-compose.yml: `orders {}`: {e}", args.join(" ")));
            if let Some(Role::Worker { jobs }) = cli.role {
                for job in jobs {
                    assert!(JOBS.contains(&job.as_str()), "docker-compose.yml names an unknown job {job}");
                    jobs_seen.push(job);
                }
            }
        }
        jobs_seen.sort();
        let mut all: Vec<String> = JOBS.iter().map(|j| (*j).to_owned()).collect();
        all.sort();
        assert_eq!(jobs_seen, all, "every job runs exactly once in docker-compose.yml (replicas aside)");
    }

    /// Invariant: every setting of this binary's the compose file sets is one
    /// the binary reads from the environment.
    #[test]
    fn the_compose_files_settings_are_the_binarys() {
        let known: Vec<String> = Cli::command()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        let ours = ["ORDERS_", "SIM_", "SIMULATOR_", "DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"];
        let set: Vec<&str> = COMPOSE
            .split(['\n', '{', ',', '}'])
            .filter_map(|part| part.split_once(':').map(|(key, _)| key.trim()))
            .filter(|key| ours.iter().any(|p| key.starts_with(p)))
            .collect();
        assert!(set.len() >= 6, "found only {set:?}");
        for key in set {
            assert!(known.iter().any(|k| k == key), "docker-compose.yml sets {key}, which `orders` does not read");
        }
    }
}
