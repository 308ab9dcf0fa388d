//! One consumer group per follow-up job. Jobs whose effect is a write to the
//! order database run in transactional dedup mode (`inventory`, `points`,
//! `analytics`, `order-status`); jobs that call a provider use store dedup
//! (`payment`, `notification`), Redis in deployment. Every job retries
//! through its retry topics (1 s, 2 s, 4 s) and then dead-letters.

pub mod analytics;
pub mod dead_letters;
pub mod interest;
pub mod inventory;
pub mod notification;
pub mod of_record;
pub mod payment;
pub mod points;
pub mod providers;
pub mod saga;

use std::sync::Arc;
use std::time::Duration;

use kafka_handler::dedup::DedupStore;
use kafka_handler::dedup::transactional::{Transactional, TxHandler};
use kafka_handler::middleware::{DedupLayer, RetryTopicLayer};
use kafka_handler::{Consumer, ConsumerBuilder, HandlerError, Ordering, Outgoing, Producer, Record, ResultExt};
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection};

use self::providers::Providers;
use crate::config::{Settings, Topics};
use crate::db::{Conn, Db};
use crate::events::OrderEvent;
use crate::outbox::OutboxSignal;
use crate::shutdown::Shutdown;

/// What every handler may need, given to the consumers as state.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub settings: Arc<Settings>,
    pub topics: Topics,
    pub bootstrap: String,
    pub db: Db,
    pub producer: Producer,
    pub providers: Providers,
    pub signal: OutboxSignal,
    pub dedup: Arc<dyn DedupStore>,
    pub telemetry: crate::telemetry::Telemetry,
}

impl Ctx {
    /// Publishes a follow-up event directly (handlers without a database
    /// transaction); acknowledged before the record counts as handled.
    pub async fn publish(&self, event: &OrderEvent) -> Result<(), HandlerError> {
        let record = Outgoing::json(&self.topics.events, event)
            .permanent()?
            .key(event.user_id.clone().into_bytes())
            .header("eventType", event.kind.name().as_bytes().to_vec());
        self.producer.send(record).await.retryable()?;
        Ok(())
    }
}

/// The topic a record first came from: a retry or re-drive copy's source
/// (the runtime trusts its provenance headers only on the group's own retry
/// and re-drive topics), or the record's own topic.
pub fn origin(record: &Record) -> String {
    kafka_handler::extract::Origin::of(record).topic
}

/// Implements [`TxHandler`] for both backends by calling the type's `apply`.
macro_rules! tx_handler {
    ($ty:ty) => {
        impl TxHandler<Sqlite> for $ty {
            async fn handle(&self, conn: &mut SqliteConnection, record: Record) -> Result<(), HandlerError> {
                self.apply(&mut Conn::Sqlite(conn), record).await
            }
        }
        impl TxHandler<Postgres> for $ty {
            async fn handle(&self, conn: &mut PgConnection, record: Record) -> Result<(), HandlerError> {
                self.apply(&mut Conn::Postgres(conn), record).await
            }
        }
    };
}

tx_handler!(inventory::Inventory);
tx_handler!(points::Points);
tx_handler!(analytics::Analytics);
tx_handler!(saga::OrderStatus);

/// Wakes the relay after a transactional handler's batch committed.
#[derive(Clone, Debug)]
struct WakeRelay<H> {
    inner: H,
    signal: OutboxSignal,
}

impl<DB: kafka_handler::dedup::transactional::Backend, H: TxHandler<DB>> TxHandler<DB> for WakeRelay<H> {
    async fn handle(&self, conn: &mut DB::Connection, record: Record) -> Result<(), HandlerError> {
        let result = self.inner.handle(conn, record).await;
        self.signal.wake();
        result
    }
}

fn transactional<H>(
    builder: ConsumerBuilder,
    db: &Db,
    handler: H,
    signal: &OutboxSignal,
    connections: usize,
) -> ConsumerBuilder
where
    H: TxHandler<Sqlite> + TxHandler<Postgres>,
{
    let handler = WakeRelay { inner: handler, signal: signal.clone() };
    match db {
        Db::Sqlite(pool) => builder.service(Transactional::new(pool.clone(), handler).connections(1)),
        Db::Postgres(pool) => builder.service(Transactional::new(pool.clone(), handler).connections(connections)),
    }
}

/// The consumer of one job (`inventory`, `payment`, …; see [`crate::config::JOBS`]).
pub fn consumer(ctx: &Ctx, job: &str) -> anyhow::Result<Consumer> {
    let topics = &ctx.topics;
    let builder = Consumer::builder()
        .topics(ctx.settings.sources(job))
        .from_env()
        .bootstrap_servers(&ctx.bootstrap)
        .group_id(ctx.settings.group(job))
        .ordering(Ordering::Key)
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .create_topics(false)
        .meter_provider(&ctx.telemetry.provider)
        .state(ctx.clone());
    let retry = RetryTopicLayer::with_delays(ctx.producer.clone(), ctx.settings.retry_delays());
    let store = DedupLayer::new(ctx.dedup.clone()).lease(Duration::from_millis(ctx.settings.dedup_lease_ms));
    let builder = match job {
        "inventory" => transactional(
            builder,
            &ctx.db,
            inventory::Inventory { topics: topics.clone() },
            &ctx.signal,
            // One writer at a time: stock rows are hot, and batches locking
            // them in different orders would deadlock.
            1,
        ),
        "points" => transactional(builder, &ctx.db, points::Points { topics: topics.clone() }, &ctx.signal, 2),
        "analytics" => transactional(
            builder,
            &ctx.db,
            analytics::Analytics { topics: topics.clone() },
            &ctx.signal,
            // One writer at a time: a burst of orders for a few products
            // makes a few (minute, product) rows hot, and two transactions
            // updating them in different orders would deadlock.
            1,
        ),
        "order-status" => transactional(builder, &ctx.db, saga::OrderStatus { topics: topics.clone() }, &ctx.signal, 2),
        // A provider call takes its time (1 s in the domain): a group keeps
        // up only with rate × latency calls in flight.
        "payment" => builder.handler(payment::handle).max_in_flight(PROVIDER_CALLS),
        "notification" => builder.handler(notification::handle).max_in_flight(PROVIDER_CALLS),
        "dlt-monitor" => {
            let consumer = builder.handler(dead_letters::handle).build()?;
            return Ok(consumer);
        }
        other => anyhow::bail!("unknown job `{other}`; jobs: {}", crate::config::JOBS.join(", ")),
    };
    let builder = builder.retry_topics(retry);
    // Store dedup for the jobs whose effect is outside the database.
    let builder = if matches!(job, "payment" | "notification") { builder.dedup(store) } else { builder };
    let interest = interest::InterestLayer { topic: topics.events.clone(), ignored: interest::ignored(job) };
    finish(builder.layer(interest), ctx)
}

/// Handler calls in flight in the groups that call a provider: 1,000 orders
/// per second at 1 s each, with room for retries.
const PROVIDER_CALLS: usize = 4096;

/// The dead-letter topic, outermost.
fn finish(builder: ConsumerBuilder, ctx: &Ctx) -> anyhow::Result<Consumer> {
    Ok(builder.dead_letter(ctx.producer.clone()).build()?)
}

/// Runs the consumers of `jobs` until `shutdown`.
pub async fn run(ctx: &Ctx, jobs: &[String], shutdown: Shutdown) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for job in jobs {
        let consumer = consumer(ctx, job)?;
        let (job, stop) = (job.clone(), shutdown.clone());
        tasks.spawn(async move { (job, consumer.run_until(async move { stop.wait().await }).await) });
    }
    while let Some(done) = tasks.join_next().await {
        let (job, result) = done?;
        if let Err(e) = result {
            shutdown.trigger();
            anyhow::bail!("consumer `{job}` stopped: {e}");
        }
    }
    Ok(())
}
