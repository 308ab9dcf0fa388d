//! The transactional outbox: events are rows written in the same transaction
//! as the state they describe; the [`Relay`] publishes them and deletes each
//! row only once Kafka acknowledged it.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kafka_handler::{Outgoing, Producer};
use serde::Serialize;
use tokio::sync::Notify;

use crate::db::{Conn, Db};
use crate::events::OrderEvent;
use crate::shutdown::Shutdown;

/// Rows published per round.
const BATCH: i64 = 500;
/// How often the relay looks anyway: rows written by another process on
/// SQLite, or a wake-up that came before the writer's commit.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Wakes the relay of this process when a row was written.
#[derive(Clone, Debug, Default)]
pub struct OutboxSignal(Arc<Notify>);

impl OutboxSignal {
    /// A row was written (or is about to be committed).
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Passes this process's wake-ups on to the relays of other processes, on
/// PostgreSQL, while this process writes outbox rows but runs no relay: one
/// `NOTIFY orders_outbox` per burst of wake-ups, on a connection of its own,
/// outside the writers' transactions. A `NOTIFY` inside the order's
/// transaction (a trigger on the outbox did that before) holds a
/// database-wide lock until its commit is on disk, so every order's commit
/// waited for the one before: at 1,000 orders/s the commit's p99 went from
/// about 10 ms to 90–260 ms.
pub async fn forward_wake_ups(pool: sqlx::PgPool, signal: OutboxSignal, shutdown: Shutdown) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            () = signal.0.notified() => {}
            () = shutdown.wait() => return Ok(()),
        }
        if let Err(e) = sqlx::query("SELECT pg_notify('orders_outbox', '')").execute(&pool).await {
            tracing::warn!(error = %e, "outbox wake-up not sent; the relays look every 100 ms anyway");
        }
    }
}

/// Writes `payload` as a row to publish to `topic` with `key`.
pub async fn enqueue(
    conn: &mut Conn<'_>,
    topic: &str,
    key: &str,
    event_type: &str,
    payload: &impl Serialize,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_string(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    crate::on_conn!(conn, |c| sqlx::query(
        "INSERT INTO outbox (topic, msg_key, event_type, payload, created_at) VALUES ($1, $2, $3, $4, $5)"
    )
    .bind(topic)
    .bind(key)
    .bind(event_type)
    .bind(&payload)
    .bind(crate::config::now_ms())
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Writes a follow-up event to `order.events`, keyed by its user.
pub async fn enqueue_event(conn: &mut Conn<'_>, topic: &str, event: &OrderEvent) -> Result<(), sqlx::Error> {
    enqueue(conn, topic, &event.user_id, event.kind.name(), event).await
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    topic: String,
    msg_key: String,
    event_type: String,
    payload: String,
}

/// Publishes the outbox, oldest row first.
#[derive(Clone, Debug)]
pub struct Relay {
    pub db: Db,
    pub producer: Producer,
    pub signal: OutboxSignal,
}

impl Relay {
    /// Runs until `shutdown`. On PostgreSQL it also listens for the
    /// `orders_outbox` notification of writers in other processes (see
    /// [`forward_wake_ups`]), and only one
    /// relay at a time publishes (an advisory lock), so replicas are standbys.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let _leader = match &self.db {
            Db::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                tokio::select! {
                    r = sqlx::query("SELECT pg_advisory_lock(7400102)").execute(&mut *conn) => { r?; }
                    () = shutdown.wait() => return Ok(()),
                }
                let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                listener.listen("orders_outbox").await?;
                let signal = self.signal.clone();
                tokio::spawn(async move {
                    while listener.recv().await.is_ok() {
                        signal.wake();
                    }
                });
                Some(conn)
            }
            Db::Sqlite(_) => None,
        };
        let mut failures = 0u32;
        while !shutdown.is_triggered() {
            match self.publish_batch().await {
                Ok(0) => {
                    failures = 0;
                    tokio::select! {
                        () = self.signal.0.notified() => {}
                        () = tokio::time::sleep(IDLE_POLL) => {}
                        () = shutdown.wait() => {}
                    }
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_millis(200 * u64::from(failures.min(10)));
                    tracing::warn!(error = %e, ?wait, "outbox relay: rows stay until Kafka acknowledges them");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.wait() => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Publishes up to one batch; returns how many rows were published.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let rows: Vec<Row> = crate::on_db!(&self.db, |p| sqlx::query_as(
            "SELECT id, topic, msg_key, event_type, payload FROM outbox ORDER BY id LIMIT $1"
        )
        .bind(BATCH)
        .fetch_all(p)
        .await)?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Sent in id order: the producer keeps the order of one key's records.
        let sends = rows.iter().map(|r| {
            let record = Outgoing::new(r.topic.clone(), r.payload.clone().into_bytes())
                .key(r.msg_key.clone().into_bytes())
                .header("eventType", r.event_type.clone().into_bytes());
            self.producer.send(record)
        });
        let results = join_all(sends).await;
        let mut acknowledged = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(_) => acknowledged.push(row.id.to_string()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if !acknowledged.is_empty() {
            // Ids come from the database as integers: safe to inline.
            let sql = format!("DELETE FROM outbox WHERE id IN ({})", acknowledged.join(","));
            crate::on_db!(&self.db, |p| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .execute(p)
                .await
                .map(|r| r.rows_affected()))?;
        }
        match first_error {
            Some(e) if acknowledged.is_empty() => Err(e.into()),
            Some(e) => {
                tracing::warn!(error = %e, "outbox relay: some rows not acknowledged; they stay");
                Ok(acknowledged.len())
            }
            None => Ok(acknowledged.len()),
        }
    }
}
