//! `scripts/bench order-api`: a fixed-rate, open-loop load on the order API
//! running as its own process on the real components (Kafka, PostgreSQL,
//! Redis of the test bed), the event-driven endpoint and the inline one in
//! the same run, with the domain's provider latencies. Prints a table and
//! `RESULT` lines.
//!
//! The benchmark starts the `orders` binary of the same build once per role —
//! `api`, `relay`, `worker all`, `simulator` — with the test bed's
//! environment, and sends the load from a thread of its own (see
//! [`load`]). On one machine it simulates separate hosts: while `POST
//! /orders` is loaded, everything but the API and PostgreSQL runs at a lower
//! CPU priority (`--nice`, see [`roles`]); before and after, all at the
//! normal one, so that the pipeline drains at full speed.

mod load;
mod roles;
mod sustained;
mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use orders::config::Settings;
use orders::db::Db;
use orders::demo::{Load, drive, e2e_latencies, percentile, wait_settled};

use self::roles::Role;

#[derive(Parser, Debug)]
struct Args {
    /// Orders per second sent to `POST /orders`.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Orders per second sent to `POST /orders/sync` (the original system
    /// managed about 100).
    #[arg(long, default_value_t = 100)]
    sync_rate: u64,
    /// How long, in seconds.
    #[arg(long, default_value_t = 5)]
    sync_seconds: u64,
    /// Provider latency in ms (the domain's is 1,000).
    #[arg(long, default_value_t = 1000)]
    latency_ms: u64,
    /// Nice level, while `POST /orders` is loaded, of what stands in for
    /// other hosts: relay, workers, simulator, Kafka, Redis, and the relay's
    /// and workers' PostgreSQL sessions (0: everything at the same priority).
    #[arg(long, default_value_t = 19)]
    nice: i32,
    /// Only the nice level: no idle CPU group for what stands in for other
    /// hosts, even where one can be made.
    #[arg(long)]
    no_idle_group: bool,
    /// The sustained mode: each consumer group a process of its own, every
    /// process at the normal priority, the rates of `--steps` held for
    /// `--step-seconds` each, up to the first step the pipeline does not
    /// keep up with (end-to-end p99 over 5 s); no inline endpoint.
    #[arg(long)]
    sustained: bool,
    /// The sustained mode's rates, orders per second.
    #[arg(long, value_delimiter = ',', default_value = "100,200,400,700,1000")]
    steps: Vec<u64>,
    /// How long each step of the sustained mode lasts, in seconds.
    #[arg(long, default_value_t = 60)]
    step_seconds: u64,
    /// How long the sustained mode waits, after a step's load, for its
    /// orders to settle.
    #[arg(long, default_value_t = 30)]
    drain_seconds: u64,
    /// Distinct users the orders come from. Each user's events are handled
    /// in order, so a user's orders pass a 1 s provider one after another:
    /// `users` ÷ provider latency bounds the rate.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("error").init();
    let args = Args::parse();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Dropping `run` stops the roles.
    tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        _ = terminate.recv() => anyhow::bail!("terminated"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let admin = std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!("DATABASE_URL: run with scripts/bench"))?;
    let kafka = std::env::var("KAFKA_BOOTSTRAP_SERVERS")?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let pool = sqlx::PgPool::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE orders_bench_{id}"))).execute(&pool).await?;
    let database = format!("{}/orders_bench_{id}", admin.rsplit_once('/').expect("a database").0);
    let prefix = format!("b{id}-");

    // Tables and topics first, so the roles start on a ready system.
    let db = Db::connect(&database, 2).await?;
    db.migrate().await?;
    let settings = Settings {
        kafka: Some(kafka.clone()),
        database_url: Some(database.clone()),
        redis_url: std::env::var("REDIS_URL").ok(),
        simulator_url: None,
        prefix: prefix.clone(),
        partitions: 6,
        api_addr: "127.0.0.1:0".parse()?,
        retry_delays_ms: vec![1000, 2000, 4000],
        http_timeout_ms: 5000,
        dedup_lease_ms: 30_000,
        metrics_addr: None,
        data_dir: std::env::temp_dir(),
    };
    let topics = settings.all_topics();
    orders::system::create_topics(&kafka, &topics.iter().map(String::as_str).collect::<Vec<_>>(), 6).await?;

    let latency = args.latency_ms.to_string();
    let sim_env = [
        ("SIM_ADDR", "127.0.0.1:0".to_owned()),
        ("SIM_PAYMENT_LATENCY_MS", latency.clone()),
        ("SIM_EMAIL_LATENCY_MS", latency.clone()),
        ("SIM_SMS_LATENCY_MS", latency),
        ("SIM_CHAT_LATENCY_MS", args.latency_ms.min(50).to_string()),
        ("RUST_LOG", "error".to_owned()),
    ];
    let (simulator, simulator_url) = Role::start("simulator", &["simulator"], &sim_env, true)?;
    let simulator_url = simulator_url.expect("announced");
    // `application_name` marks the PostgreSQL sessions to lower in priority.
    let env = |app: &str| {
        vec![
            ("KAFKA_BOOTSTRAP_SERVERS", kafka.clone()),
            ("DATABASE_URL", format!("{database}?application_name={app}")),
            ("REDIS_URL", settings.redis_url.clone().unwrap_or_default()),
            ("SIMULATOR_URL", simulator_url.clone()),
            ("ORDERS_PREFIX", prefix.clone()),
            ("ORDERS_PARTITIONS", "6".to_owned()),
            ("ORDERS_API_ADDR", "127.0.0.1:0".to_owned()),
            ("RUST_LOG", "error".to_owned()),
        ]
    };
    let (relay, _) = Role::start("relay", &["relay"], &env("orders-relay"), false)?;
    let mut workers = Vec::new();
    if args.sustained {
        for job in orders::config::JOBS {
            workers.push((job, Role::start(job, &["worker", job], &env("orders-worker"), false)?.0));
        }
    } else {
        workers.push(("workers", Role::start("workers", &["worker", "all"], &env("orders-worker"), false)?.0));
    }
    let (api, base) = Role::start("api", &["api"], &env("orders-api"), true)?;
    let mut elsewhere = vec![simulator.pid(), relay.pid()];
    elsewhere.extend(workers.iter().map(|(_, w)| w.pid()));
    let mut processes = vec![("api", api.pid()), ("relay", relay.pid())];
    processes.extend(workers.iter().map(|(job, w)| (*job, w.pid())));
    processes.push(("simulator", simulator.pid()));
    let api_pid = api.pid();
    let db_pool = sqlx::PgPool::connect(&database).await?;
    let db_pool = &db_pool;
    let _roles = ([simulator, relay, api], workers);
    let base = base.expect("announced");
    println!(
        "order API on {base}; API, relay, {}, simulator: one process each; providers answer in {} ms",
        if args.sustained { "each consumer group" } else { "workers" },
        args.latency_ms
    );

    let warm_up = Instant::now();
    drive(&base, &Load { concurrency: 8, ..Load::new(100) }).await?;
    wait_settled(&db, Duration::from_secs(120)).await?;
    println!("100 warm-up orders settled in {:.1} s", warm_up.elapsed().as_secs_f64());

    if args.sustained {
        println!("every process at the normal priority; orders from {} users", args.users);
        return sustained::Ladder {
            base: &base,
            db: &db,
            settings: &settings,
            processes: usage::Processes::new(&processes),
            rates: args.steps.clone(),
            seconds: args.step_seconds,
            drain: Duration::from_secs(args.drain_seconds),
            users: args.users,
        }
        .run()
        .await;
    }

    let since = orders::config::now_ms();
    let wants_group = args.nice != 0 && !args.no_idle_group;
    let idle = if wants_group { roles::IdleGroup::create().map(Arc::new) } else { None };
    println!(
        "POST /orders at {} orders/s for {} s; meanwhile what stands in for other hosts runs at nice {}{} …",
        args.rate,
        args.seconds,
        args.nice,
        match (&idle, wants_group) {
            (Some(_), _) => " in an idle CPU group",
            (None, false) => "",
            (None, true) => " (no idle CPU group could be made)",
        }
    );
    let api_pids = |api: u32| async move {
        let sessions: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = 'orders-api'")
                .fetch_all(db_pool)
                .await
                .unwrap_or_default();
        (vec![api], sessions.into_iter().map(|p| p as u32).collect::<Vec<_>>())
    };
    let (api_process, api_sessions) = api_pids(api_pid).await;
    let cpu_before = (roles::cpu_times(&api_process), roles::cpu_times(&api_sessions));
    let lowered = tokio::spawn(keep_nice(database.clone(), elsewhere.to_vec(), args.nice, idle.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut fast = load::fixed_rate(format!("{base}/orders"), args.rate, args.seconds, args.users).await?;
    lowered.abort();
    let (api_process, api_sessions) = api_pids(api_pid).await;
    let used = |before: &std::collections::HashMap<u32, Duration>, pids: &[u32]| -> f64 {
        let after = roles::cpu_times(pids);
        let total: Duration =
            after.iter().map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or_default())).sum();
        total.as_secs_f64() * 1e6 / fast.sent.max(1) as f64
    };
    let (api_cpu, pg_cpu) = (used(&cpu_before.0, &api_process), used(&cpu_before.1, &api_sessions));
    let restored = tokio::spawn(keep_nice(database.clone(), elsewhere.clone(), 0, idle.clone()));
    let open = wait_settled(&db, Duration::from_secs(600)).await?;
    let drained_in = started.elapsed();
    let mut e2e = e2e_latencies(&db, since).await?;

    println!("POST /orders/sync at {} orders/s for {} s …", args.sync_rate, args.sync_seconds);
    let mut slow =
        load::fixed_rate(format!("{base}/orders/sync"), args.sync_rate, args.sync_seconds, args.users).await?;
    restored.abort();

    let (f50, f99) = (percentile(&mut fast.latencies, 50.0), percentile(&mut fast.latencies, 99.0));
    let (s50, s99) = (percentile(&mut slow.latencies, 50.0), percentile(&mut slow.latencies, 99.0));
    let (e50, e99) = (percentile(&mut e2e, 50.0), percentile(&mut e2e, 99.0));
    let lag99 = percentile(&mut fast.lag, 99.0);
    println!();
    println!("| endpoint | rate (orders/s) | sent at (orders/s) | answered | errors | p50 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, rate, o, p50, p99) in
        [("`POST /orders`", args.rate, &fast, f50, f99), ("`POST /orders/sync`", args.sync_rate, &slow, s50, s99)]
    {
        let max = o.latencies.last().copied().unwrap_or(0.0);
        println!(
            "| {name} | {rate} | {:.0} | {} | {} | {p50:.1} | {p99:.1} | {max:.1} |",
            o.send_rate(),
            o.latencies.len(),
            o.errors
        );
    }
    println!();
    println!(
        "async load sent in {:.2} s (a request left p99 {lag99:.2} ms after its time); every follow-up done \
         {:.1} s after the first order ({open} still open); end to end p50 {e50:.0} ms, p99 {e99:.0} ms",
        fast.sending.as_secs_f64(),
        drained_in.as_secs_f64()
    );
    println!(
        "CPU per order while loaded: API process {api_cpu:.0} µs, its PostgreSQL sessions {pg_cpu:.0} µs \
         ({:.2} of a core at {} orders/s)",
        (api_cpu + pg_cpu) * args.rate as f64 / 1e6,
        args.rate
    );
    println!("RESULT order_api_p50_ms {f50:.1}");
    println!("RESULT order_api_p99_ms {f99:.1}");
    println!("RESULT order_api_send_rate {:.0}", fast.send_rate());
    println!("RESULT order_api_cpu_us_per_order {:.0}", api_cpu + pg_cpu);
    println!("RESULT order_api_sync_p50_ms {s50:.1}");
    println!("RESULT order_api_speedup {:.1}", if f50 > 0.0 { s50 / f50 } else { 0.0 });
    println!("RESULT order_e2e_p50_ms {e50:.0}");
    println!("RESULT order_e2e_p99_ms {e99:.0}");
    Ok(())
}

/// Keeps what stands in for other hosts at nice level `nice`, and in the
/// idle CPU group if there is one and `nice` is not 0 (out of it if it is):
/// the roles `elsewhere`, the test bed's Kafka and Redis, and the PostgreSQL
/// sessions of the relay and the workers (their pools open connections as
/// they need them, so it looks every second).
async fn keep_nice(database: String, elsewhere: Vec<u32>, nice: i32, idle: Option<Arc<roles::IdleGroup>>) {
    let Ok(pool) = sqlx::PgPool::connect(&database).await else { return };
    loop {
        let sessions: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name IN ('orders-relay', 'orders-worker')",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        let sessions: Vec<u32> = sessions.into_iter().map(|p| p as u32).collect();
        let elsewhere = elsewhere.clone();
        let idle = idle.clone();
        tokio::task::spawn_blocking(move || {
            let testbed = roles::testbed_pids(&["kafka", "redis"]);
            roles::set_nice(&elsewhere, nice, true);
            roles::set_nice(&testbed, nice, true);
            roles::set_nice(&sessions, nice, false);
            if let Some(group) = idle {
                for pids in [&elsewhere, &testbed, &sessions] {
                    group.set(pids, nice != 0);
                }
            }
        })
        .await
        .ok();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
