//! The consumer runtime: runs a handler in a consumer group, at least once.

mod attempt;
mod builder;
mod completion;
mod consumers;
pub(crate) mod fetch;
mod health;
mod inline;
mod lane;
mod offsets;
mod poll_loop;
mod scheduler;
mod service;
mod stack;
mod topics;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};

pub use self::builder::ConsumerBuilder;
pub use self::consumers::Consumers;
pub use self::health::{Health, HealthReport, Stalled};
use self::lane::LaneConfig;
use self::scheduler::{Scheduler, SchedulerConfig};
use crate::Error;
use crate::config::KafkaConfig;
use crate::metrics::observed::{self, Brokers, Observed};

/// Which records a consumer handles one after another.
///
/// Whatever the mode, an offset is committed only when it and every record
/// before it in its partition have finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ordering {
    /// Records of a partition in offset order; partitions in parallel.
    #[default]
    Partition,
    /// Records with the same key in offset order; different keys in parallel,
    /// up to [`max_in_flight`](ConsumerBuilder::max_in_flight) at once, however
    /// few partitions there are. Records without a key are handled as in
    /// [`Ordering::Unordered`].
    Key,
    /// No order: every record as soon as a slot is free.
    Unordered,
}

/// A handler running in a Kafka consumer group.
///
/// Built with [`Consumer::builder`]; started with [`run`](Consumer::run) or
/// [`run_until`](Consumer::run_until).
///
/// ```no_run
/// use kafka_handler::{extract::Json, Consumer, Ordering};
/// # #[derive(serde::Deserialize)] struct OrderCreated { order_id: u64 }
///
/// async fn charge(Json(order): Json<OrderCreated>) {
///     println!("charging order {}", order.order_id);
/// }
///
/// # async fn run() -> Result<(), kafka_handler::Error> {
/// Consumer::builder()
///     .bootstrap_servers("localhost:9092")
///     .group_id("payment")
///     .topic("order.created")
///     .ordering(Ordering::Key)
///     .max_in_flight(256)
///     .handler(charge)
///     .build()?
///     .run() // until Ctrl-C or SIGTERM
///     .await
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    config: KafkaConfig,
    topics: Vec<String>,
    group_id: String,
    ordering: Ordering,
    lane: LaneConfig,
    shared: Arc<http::Extensions>,
    max_buffered: usize,
    shutdown_timeout: Duration,
    revoke_timeout: Duration,
    /// Topics to create before subscribing, each with the partition count of
    /// its source topic.
    to_create: Vec<(String, String)>,
    observed: Arc<Observed>,
    #[cfg(feature = "metrics")]
    meter: Option<opentelemetry::metrics::Meter>,
    #[cfg(feature = "metrics")]
    dedup_counters: Option<Arc<crate::dedup::DedupCounters>>,
}

impl Consumer {
    /// Starts configuring a consumer.
    pub fn builder() -> ConsumerBuilder {
        ConsumerBuilder::new()
    }

    /// The consumer group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// A handle that reports this consumer's readiness and liveness, from
    /// any thread, for as long as the handle lives; take it before `run`.
    pub fn health(&self) -> Health {
        Health::new(Arc::clone(&self.observed))
    }

    /// Runs until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(crate::shutdown_signal()).await
    }

    /// Runs until `signal` completes, then shuts down gracefully: stops
    /// fetching, lets the records already fetched finish within the shutdown
    /// timeout (at most `max_buffered` of them; retry records not due yet
    /// are left for the next owner), commits what finished and leaves the
    /// group. What did not finish is redelivered to the group.
    ///
    /// Returns early with an error if the consumer cannot continue (a fatal
    /// librdkafka error). Dropping the returned future also stops the consumer.
    pub async fn run_until(
        #[cfg_attr(not(feature = "metrics"), allow(unused_mut))] mut self,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let observed = Arc::clone(&self.observed);
        observed.start();
        let _stopped = SetOnDrop(Arc::clone(&observed));
        #[cfg(feature = "metrics")]
        {
            let meter =
                self.meter.take().unwrap_or_else(|| opentelemetry::global::meter_with_scope(crate::metrics::scope()));
            let meters = crate::metrics::register(&meter, &observed, self.dedup_counters.take());
            Arc::make_mut(&mut self.shared).insert(meters);
        }
        let scheduler = Arc::new(Mutex::new(Scheduler::new(SchedulerConfig {
            ordering: self.ordering,
            lane: self.lane,
            runtime: tokio::runtime::Handle::current(),
            shared: self.shared,
            max_buffered: self.max_buffered,
        })));
        if !self.to_create.is_empty() {
            topics::create_derived(&self.config, &self.to_create).await?;
        }
        let context = RuntimeContext {
            scheduler,
            revoke_timeout: self.revoke_timeout,
            observed,
            wake: Arc::default(),
            fetch: Mutex::default(),
        };
        let consumer: BaseConsumer<RuntimeContext> = self.config.to_client_config().create_with_context(context)?;
        let consumer = Arc::new(consumer);
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        rdkafka::consumer::Consumer::subscribe(&*consumer, &topics)?;

        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let thread_stop = Arc::clone(&stop.0);
        let shutdown_timeout = self.shutdown_timeout;
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name(format!("kafka-handler:{}", self.group_id))
            .spawn(move || {
                // Handlers started on this thread may use tokio's timers and I/O.
                let _runtime = runtime.enter();
                #[cfg(feature = "metrics")]
                let lag = {
                    let observed = Arc::clone(&rdkafka::consumer::Consumer::context(&*consumer).observed);
                    crate::metrics::LagRefresh::start(Arc::clone(&consumer), observed)
                };
                let result = poll_loop::run(&consumer, &thread_stop, shutdown_timeout);
                #[cfg(feature = "metrics")]
                drop(lag);
                // The last reference: the consumer closes on this thread.
                drop(consumer);
                let _ = done_tx.send(result);
            })
            .map_err(|e| Error::Runtime(format!("could not start the polling thread: {e}")))?;

        let mut done_rx = done_rx;
        tokio::select! {
            () = signal => {}
            result = &mut done_rx => return flatten(result),
        }
        tracing::info!(group = %self.group_id, "shutting down");
        stop.0.store(true, AtomicOrdering::Release);
        flatten(done_rx.await)
    }
}

fn flatten(result: Result<Result<(), Error>, tokio::sync::oneshot::error::RecvError>) -> Result<(), Error> {
    result.unwrap_or_else(|_| Err(Error::Runtime("the polling thread panicked".into())))
}

struct StopOnDrop(Arc<AtomicBool>);

/// Marks the consumer stopped for health checks, however `run_until` ends.
struct SetOnDrop(Arc<Observed>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, AtomicOrdering::Release);
    }
}

/// librdkafka callbacks of a running consumer. They run on the polling thread.
#[derive(Debug)]
pub(crate) struct RuntimeContext {
    scheduler: Arc<Mutex<Scheduler>>,
    revoke_timeout: Duration,
    pub(crate) observed: Arc<Observed>,
    /// Unparks the polling thread when librdkafka has something for it.
    pub(crate) wake: Arc<fetch::Wake>,
    /// Where assigned partitions' records go, while the polling thread runs.
    fetch: Mutex<Option<Arc<fetch::FetchQueue<RuntimeContext>>>>,
}

impl RuntimeContext {
    pub(crate) fn scheduler(&self) -> MutexGuard<'_, Scheduler> {
        self.scheduler.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forwards partitions assigned from now on to `fetch`, until the guard
    /// is dropped (`fetch` holds the consumer, which holds this context).
    pub(crate) fn install_fetch(&self, fetch: Arc<fetch::FetchQueue<RuntimeContext>>) -> impl Drop + '_ {
        *self.fetch.lock().unwrap_or_else(PoisonError::into_inner) = Some(fetch);
        Uninstall(self)
    }
}

struct Uninstall<'a>(&'a RuntimeContext);

impl Drop for Uninstall<'_> {
    fn drop(&mut self) {
        self.0.fetch.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

impl ClientContext for RuntimeContext {
    /// Whether any broker connection is up, for readiness, and the end
    /// offset of each partition, for lag (librdkafka sends statistics every
    /// `statistics.interval.ms`).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let up = statistics.brokers.values().any(|b| b.source != "logical" && b.state == "UP");
        self.observed.set_brokers(if up { Brokers::Up } else { Brokers::Down });
        for (name, topic) in &statistics.topics {
            let name: Arc<str> = Arc::from(name.as_str());
            for (&partition, p) in &topic.partitions {
                if partition >= 0 && p.hi_offset >= 0 {
                    self.observed.high(Arc::clone(&name), partition, p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions revoked");
                let deadline = Instant::now() + self.revoke_timeout;
                self.scheduler().revoke(consumer, tpl, deadline);
            }
            // Before librdkafka starts fetching them.
            Rebalance::Assign(tpl) => {
                if let Some(fetch) = &*self.fetch.lock().unwrap_or_else(PoisonError::into_inner) {
                    fetch.forward(tpl);
                }
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance failed"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = %describe(tpl), "partitions assigned");
            self.observed.joined.store(true, AtomicOrdering::Relaxed);
            self.observed.rebalances.fetch_add(1, AtomicOrdering::Relaxed);
            let mut scheduler = self.scheduler();
            scheduler.assign(tpl);
            scheduler.pause_if_stopping(consumer, tpl);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.observed.committed(offsets.elements().iter().filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(offset) => Some((Arc::from(e.topic()), e.partition(), offset)),
                _ => None,
            })),
            // Nothing was stored since the last commit: nothing failed.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.observed.commit_failures.fetch_add(1, AtomicOrdering::Relaxed);
                tracing::warn!(error = %e, "offset commit failed; it is retried with the next commit");
            }
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let parts: Vec<String> = tpl.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect();
    parts.join(",")
}

/// The dedup layer's counters, as the metrics read them.
#[cfg(feature = "metrics")]
impl crate::metrics::DedupCounts for crate::dedup::DedupCounters {
    fn hits(&self) -> u64 {
        crate::dedup::DedupCounters::hits(self)
    }

    fn waits(&self) -> u64 {
        crate::dedup::DedupCounters::waits(self)
    }

    fn store_errors(&self) -> u64 {
        crate::dedup::DedupCounters::store_errors(self)
    }
}
