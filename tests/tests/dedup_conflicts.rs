//! Transactional dedup under conflicts between its own transactions, on a
//! real PostgreSQL (`DATABASE_URL`).
//!
//! Invariant: a deadlock between two transactions is a conflict, not a
//! failure of the events in them. Events whose handlers take the same two
//! hot rows in opposite orders, on two connections at once, deadlock again
//! and again; every event still succeeds on its first attempt (0 failures
//! reach the runtime, so no retry is spent and nothing is dead-lettered),
//! and every effect is written exactly once (0 missing, 0 doubled).

use std::sync::Arc;
use std::time::Duration;

use kafka_handler::dedup::transactional::{Transactional, TxHandler};
use kafka_handler::extract::Group;
use kafka_handler::{HandlerError, Record, ResultExt};
use kafka_handler_tests::{database_url, random_name};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgConnection, Postgres};
use tower::ServiceExt;

/// Adds one to both hot rows, in the order the payload names them, with a
/// pause between so that two transactions interleave.
#[derive(Clone)]
struct Hot {
    table: Arc<str>,
}

impl TxHandler<Postgres> for Hot {
    async fn handle(&self, conn: &mut PgConnection, record: Record) -> Result<(), HandlerError> {
        let payload: serde_json::Value = serde_json::from_slice(record.payload().unwrap_or_default()).permanent()?;
        let order = payload["rows"].as_array().cloned().unwrap_or_default();
        for (i, row) in order.iter().enumerate() {
            let sql = format!("UPDATE {} SET n = n + 1 WHERE id = $1", self.table);
            sqlx::query(AssertSqlSafe(sql))
                .bind(row.as_str().unwrap_or_default())
                .execute(&mut *conn)
                .await
                .retryable()?;
            if i == 0 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlocks_between_batches_are_run_again_and_fail_no_event() {
    // PostgreSQL looks for deadlocks after a lock wait of `deadlock_timeout`
    // (1 s by default): shorter, for a short test.
    let pool = PgPoolOptions::new()
        .after_connect(|conn, _| {
            Box::pin(async move { sqlx::raw_sql("SET deadlock_timeout = '20ms'").execute(conn).await.map(drop) })
        })
        .connect(&database_url())
        .await
        .expect("connect to DATABASE_URL");
    kafka_handler::dedup::postgres::PostgresStore::new(pool.clone()).migrate().await.unwrap();
    let table: Arc<str> = random_name("kh_hot").replace('-', "_").into();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id TEXT PRIMARY KEY, n BIGINT NOT NULL); INSERT INTO {table} VALUES ('a', 0), ('b', 0)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let deadlocks = || async {
        sqlx::query_scalar::<_, i64>("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let deadlocks_before = deadlocks().await;

    let events = 200;
    let group = Group(Arc::from(random_name("conflicts").as_str()));
    let service = Transactional::new(pool.clone(), Hot { table: table.clone() }).connections(2).max_batch(1);
    let counters = service.counters();
    let calls = (0..events).map(|i| {
        let rows = if i % 2 == 0 { ["a", "b"] } else { ["b", "a"] };
        let payload = serde_json::json!({"eventId": format!("e-{i}"), "rows": rows}).to_string();
        let record = Record::builder("hot").offset(i).payload(payload).state(group.clone()).build();
        service.clone().oneshot(record)
    });
    let outcomes = futures::future::join_all(calls).await;
    let failed: Vec<String> = outcomes.iter().filter_map(|o| o.as_ref().err().map(ToString::to_string)).collect();

    let counts: Vec<(String, i64)> =
        sqlx::query_as(AssertSqlSafe(format!("SELECT id, n FROM {table} ORDER BY id"))).fetch_all(&pool).await.unwrap();
    let deadlocks = deadlocks().await - deadlocks_before;
    println!(
        "conflicts: {events} events, {} failed, rows {counts:?}, {} transactions run again, {deadlocks} deadlocks \
         detected by PostgreSQL",
        failed.len(),
        counters.conflicts()
    );
    assert!(failed.is_empty(), "events failed: {:?}", &failed[..failed.len().min(5)]);
    assert_eq!(counts, [("a".to_owned(), events), ("b".to_owned(), events)], "each effect once: 0 missing, 0 doubled");
    assert_eq!(counters.claimed(), events as u64);
    assert!(counters.conflicts() > 0 && deadlocks > 0, "the transactions did deadlock");
    sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {table}"))).execute(&pool).await.unwrap();
}
