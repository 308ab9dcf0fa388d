//! The sustained mode (`--sustained`): every role at the normal priority, a
//! fixed rate held for a while per step, and per step whether the pipeline
//! kept up: the consumer groups' lag, and the end-to-end latency (order
//! created → settled) of the step's orders. The highest step whose p99 stays
//! within the bound is the sustained rate; the CPU of every process of the
//! system per settled order comes from `/proc`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orders::config::{JOBS, Settings};
use orders::db::Db;
use orders::demo::percentile;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, TopicPartitionList};

use super::load;
use super::usage::Processes;

/// A step passes if its orders' end-to-end p99 stays within this.
const E2E_P99_BOUND_MS: f64 = 5000.0;

/// What one step saw.
struct Step {
    rate: u64,
    sent_rate: f64,
    api_p99: f64,
    orders: u64,
    unsettled: i64,
    e2e: (f64, f64),
    /// Per job: the largest lag seen during the step, and the lag at its end.
    lag: Vec<(u64, u64)>,
    /// CPU per process from the step's start until its orders settled.
    cpu: Vec<Duration>,
    /// From the step's start until its orders settled.
    window: Duration,
}

impl Step {
    fn passed(&self) -> bool {
        self.unsettled == 0 && self.e2e.1 <= E2E_P99_BOUND_MS
    }

    fn cpu_ms_per_order(&self) -> f64 {
        self.cpu.iter().sum::<Duration>().as_secs_f64() * 1e3 / self.orders.max(1) as f64
    }
}

/// How the ladder runs.
pub(crate) struct Ladder<'a> {
    pub(crate) base: &'a str,
    pub(crate) db: &'a Db,
    pub(crate) settings: &'a Settings,
    pub(crate) processes: Processes,
    pub(crate) rates: Vec<u64>,
    pub(crate) seconds: u64,
    pub(crate) drain: Duration,
    pub(crate) users: usize,
}

impl Ladder<'_> {
    /// Runs the steps in order, up to the first that does not keep up, and
    /// prints the tables and `RESULT` lines.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let lags = Arc::new(Lags::new(self.settings)?);
        let mut steps = Vec::new();
        for &rate in &self.rates {
            println!("{rate} orders/s for {} s …", self.seconds);
            let step = self.step(rate, &lags).await?;
            println!(
                "  sent at {:.0}/s, end to end p50 {:.0} ms p99 {:.0} ms, {} unsettled, {:.1} ms CPU per order",
                step.sent_rate,
                step.e2e.0,
                step.e2e.1,
                step.unsettled,
                step.cpu_ms_per_order()
            );
            let passed = step.passed();
            steps.push(step);
            if !passed {
                break;
            }
            // Let the last step's stragglers settle before the next.
            orders::demo::wait_settled(self.db, Duration::from_secs(60)).await?;
        }
        self.report(&steps);
        Ok(())
    }

    async fn step(&self, rate: u64, lags: &Arc<Lags>) -> anyhow::Result<Step> {
        let since = orders::config::now_ms();
        let started = Instant::now();
        let before = self.processes.cpu();
        let sampling = Sampling::start(lags);
        let mut sent = load::fixed_rate(format!("{}/orders", self.base), rate, self.seconds, self.users).await?;
        let lag = sampling.stop().await;
        let until = orders::config::now_ms();
        let deadline = Instant::now() + self.drain;
        let unsettled = loop {
            let open = open_since(self.db, since, until).await?;
            if open == 0 || Instant::now() >= deadline {
                break open;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let after = self.processes.cpu();
        let cpu = after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect();
        let mut e2e = latencies(self.db, since, until).await?;
        Ok(Step {
            rate,
            sent_rate: sent.send_rate(),
            api_p99: percentile(&mut sent.latencies, 99.0),
            orders: sent.sent,
            unsettled,
            e2e: (percentile(&mut e2e, 50.0), percentile(&mut e2e, 99.0)),
            lag,
            cpu,
            window: started.elapsed(),
        })
    }

    fn report(&self, steps: &[Step]) {
        println!();
        println!(
            "| rate (orders/s) | sent at | API p99 ms | end to end p50 ms | p99 ms | unsettled | kept up | \
             CPU ms per order | largest lag (records): {} |",
            JOBS.join(", ")
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |");
        for s in steps {
            let lag: Vec<String> = s.lag.iter().map(|(max, end)| format!("{max}/{end}")).collect();
            println!(
                "| {} | {:.0} | {:.1} | {:.0} | {:.0} | {} | {} | {:.2} | {} |",
                s.rate,
                s.sent_rate,
                s.api_p99,
                s.e2e.0,
                s.e2e.1,
                s.unsettled,
                if s.passed() { "yes" } else { "no" },
                s.cpu_ms_per_order(),
                lag.join(", ")
            );
        }
        println!();
        println!("(lag: the largest sum over a group's partitions during the step / at its end)");
        println!();
        let names = self.processes.names();
        println!(
            "| CPU ms per order | {} |",
            steps.iter().map(|s| format!("{}/s", s.rate)).collect::<Vec<_>>().join(" | ")
        );
        println!("| --- |{}", " ---: |".repeat(steps.len()));
        for (i, name) in names.iter().enumerate() {
            let cells: Vec<String> =
                steps.iter().map(|s| format!("{:.2}", s.cpu[i].as_secs_f64() * 1e3 / s.orders.max(1) as f64)).collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
        let cores: Vec<String> = steps
            .iter()
            .map(|s| format!("{:.2}", s.cpu.iter().sum::<Duration>().as_secs_f64() / s.window.as_secs_f64()))
            .collect();
        println!("| cores busy, step and drain | {} |", cores.join(" | "));
        let best = steps.iter().rfind(|s| s.passed());
        println!();
        println!("RESULT order_sustained_rate {}", best.map_or(0, |s| s.rate));
        let cpu = best.or(steps.last()).map_or(0.0, Step::cpu_ms_per_order);
        println!("RESULT order_cpu_ms_per_order {cpu:.2}");
    }
}

/// Orders created in `[since, until)` not settled yet.
async fn open_since(db: &Db, since: i64, until: i64) -> anyhow::Result<i64> {
    Ok(orders::on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM orders WHERE settled_at IS NULL AND created_at >= $1 AND created_at < $2"
    )
    .bind(since)
    .bind(until)
    .fetch_one(p)
    .await)?)
}

/// End-to-end latencies (ms) of the orders created in `[since, until)`; an
/// order not settled counts with its age now.
async fn latencies(db: &Db, since: i64, until: i64) -> anyhow::Result<Vec<f64>> {
    let now = orders::config::now_ms();
    let rows: Vec<(i64, Option<i64>)> = orders::on_db!(db, |p| sqlx::query_as(
        "SELECT created_at, settled_at FROM orders WHERE created_at >= $1 AND created_at < $2"
    )
    .bind(since)
    .bind(until)
    .fetch_all(p)
    .await)?;
    Ok(rows.into_iter().map(|(c, s)| (s.unwrap_or(now) - c) as f64).collect())
}

/// The consumer groups' lag: the records of their source topics not yet
/// committed, summed over the partitions.
struct Lags {
    groups: Vec<(BaseConsumer, Vec<String>)>,
}

impl Lags {
    fn new(settings: &Settings) -> anyhow::Result<Self> {
        let bootstrap = settings.kafka.clone().unwrap_or_default();
        let groups = JOBS
            .iter()
            .map(|job| {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("group.id", settings.group(job))
                    .set("enable.auto.commit", "false")
                    .create()?;
                Ok((consumer, settings.sources(job)))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { groups })
    }

    /// Each group's lag now.
    fn now(&self) -> Vec<u64> {
        let timeout = Duration::from_secs(5);
        self.groups
            .iter()
            .map(|(consumer, topics)| {
                let mut ends = HashMap::new();
                let mut list = TopicPartitionList::new();
                for topic in topics {
                    let partitions = consumer
                        .fetch_metadata(Some(topic), timeout)
                        .ok()
                        .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
                        .unwrap_or(0);
                    for p in 0..partitions as i32 {
                        if let Ok((low, high)) = consumer.fetch_watermarks(topic, p, timeout) {
                            ends.insert((topic.clone(), p), (low, high));
                            list.add_partition(topic, p);
                        }
                    }
                }
                let Ok(committed) = consumer.committed_offsets(list, timeout) else { return 0 };
                committed
                    .elements()
                    .iter()
                    .map(|e| {
                        let (low, high) = ends.get(&(e.topic().to_owned(), e.partition())).copied().unwrap_or((0, 0));
                        let at = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(low);
                        (high - at).max(0) as u64
                    })
                    .sum()
            })
            .collect()
    }
}

/// Samples the lags every second on a thread of its own until stopped.
struct Sampling {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<u64>>>,
}

impl Sampling {
    fn start(lags: &Arc<Lags>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (lags, stopped) = (lags.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            loop {
                let started = Instant::now();
                seen.push(lags.now());
                if stopped.load(Ordering::Relaxed) {
                    return seen;
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
            }
        });
        Self { stop, thread }
    }

    /// Stops, and returns per group the largest lag seen and the last.
    async fn stop(self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        let seen = tokio::task::spawn_blocking(move || thread.join().unwrap_or_default()).await.unwrap_or_default();
        let groups = seen.first().map_or(0, Vec::len);
        (0..groups)
            .map(|g| {
                let max = seen.iter().map(|s| s[g]).max().unwrap_or(0);
                (max, seen.last().map_or(0, |s| s[g]))
            })
            .collect()
    }
}
