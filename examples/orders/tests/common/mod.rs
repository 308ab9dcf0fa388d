//! What the order system's tests share: a fresh database and settings per
//! run, the system's processes, the audit's printout.

#![allow(dead_code, unreachable_pub)]

use std::process::{Child, Command, Stdio};

use kafka_handler_tests::{bootstrap, database_url, redis_url};
use orders::audit::Audit;
use orders::config::Settings;
use orders::simulator::{Ledger, SimulatorConfig};
use orders::system::System;

pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// A fresh database on the test bed's PostgreSQL, and its URL.
pub async fn fresh_database(name: &str) -> String {
    let admin = database_url();
    let pool = sqlx::PgPool::connect(&admin).await.expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.expect("create database");
    let base = admin.rsplit_once('/').expect("a database in DATABASE_URL").0;
    format!("{base}/{name}")
}

pub struct Run {
    pub settings: Settings,
    pub simulator: SimulatorConfig,
}

pub async fn run_config(label: &str) -> Run {
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let database = fresh_database(&format!("orders_{label}_{id}")).await;
    let settings = Settings {
        kafka: Some(bootstrap()),
        database_url: Some(database),
        redis_url: Some(redis_url()),
        simulator_url: None,
        prefix: format!("t{id}-"),
        partitions: 3,
        api_addr: "127.0.0.1:0".parse().unwrap(),
        retry_delays_ms: vec![1000, 2000, 4000],
        http_timeout_ms: 5000,
        dedup_lease_ms: 8000,
        metrics_addr: None,
        data_dir: std::env::temp_dir(),
    };
    // Short latencies; 5 % of provider calls fail, at most once per
    // idempotency key: notification calls two providers per attempt, so an
    // attempt fails at most twice and every event succeeds within the three
    // retries — no dead letters, every effect due is done.
    let simulator = SimulatorConfig { max_failures_per_key: 1, ..SimulatorConfig::uniform(20, 0.05) };
    Run { settings, simulator }
}

pub fn ledger(system: &System) -> Ledger {
    system.simulator.as_ref().expect("in-process simulator").ledger()
}

pub fn print_audit(name: &str, a: &Audit, ledger: &Ledger) {
    println!(
        "{name}: {} orders: {} confirmed, {} cancelled, {} in flight; payments {}, refunds {}, points {}, emails {}, \
         SMS {}, dead letters {}, stock left {}; missing {}, duplicated {}, repeated provider requests {}; \
         injected failures {:?}",
        a.orders,
        a.confirmed,
        a.cancelled,
        a.in_flight,
        a.payments,
        a.refunds,
        a.points_entries,
        a.emails,
        a.sms,
        a.dead_letters,
        a.stock_left,
        a.missing,
        a.duplicates,
        a.repeats,
        ledger.injected_failures
    );
}

/// The `orders` binary running one role.
pub struct Worker(pub Child);

impl Worker {
    /// `orders worker <jobs>`.
    pub fn spawn(settings: &Settings, simulator_url: &str, jobs: &str) -> Self {
        Self::role(settings, simulator_url, &["worker", jobs])
    }

    /// `orders <args>`: a role (`worker <jobs>`, `relay`, …) in its own process.
    pub fn role(settings: &Settings, simulator_url: &str, args: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_orders"))
            .args(args)
            .env("KAFKA_BOOTSTRAP_SERVERS", settings.kafka.as_deref().unwrap())
            .env("DATABASE_URL", settings.database_url.as_deref().unwrap())
            .env("REDIS_URL", settings.redis_url.as_deref().unwrap())
            .env("SIMULATOR_URL", simulator_url)
            .env("ORDERS_PREFIX", &settings.prefix)
            .env("ORDERS_PARTITIONS", settings.partitions.to_string())
            .env("ORDERS_DEDUP_LEASE_MS", settings.dedup_lease_ms.to_string())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the orders binary");
        Worker(child)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}
