use std::time::{SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::{Sqlite, SqliteConnection};

use super::{Backend, sealed};

impl sealed::Sealed for Sqlite {}

impl Backend for Sqlite {
    // Take the write lock up front: a deferred transaction that later wants
    // to write can fail with "database is locked" instead of waiting.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";

    fn execute<'c>(conn: &'c mut SqliteConnection, sql: &'static str) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        sqlx::raw_sql(sql).execute(conn).map(|r| r.map(drop)).boxed()
    }

    fn insert_processed<'c>(
        conn: &'c mut SqliteConnection,
        events: &'c [(&'c str, &'c str)],
        consumer: &'c str,
    ) -> BoxFuture<'c, Result<Vec<bool>, sqlx::Error>> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        async move {
            // In-process: one statement per row costs no round trip.
            let mut fresh = Vec::with_capacity(events.len());
            for (group, event_id) in events {
                let done = sqlx::query(
                    "INSERT INTO processed_events (consumer_group, event_id, consumer_name, processed_at) \
                     VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                )
                .bind(*group)
                .bind(*event_id)
                .bind(consumer)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                fresh.push(done.rows_affected() == 1);
            }
            Ok(fresh)
        }
        .boxed()
    }

    fn is_conflict(error: &sqlx::Error) -> bool {
        // SQLITE_BUSY and SQLITE_LOCKED, with their extended codes
        // (primary code in the low byte).
        error
            .as_database_error()
            .and_then(|e| e.code())
            .and_then(|code| code.parse::<u32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6))
    }

    fn delete_processed<'c>(
        conn: &'c mut SqliteConnection,
        group: &'c str,
        event_id: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        sqlx::query("DELETE FROM processed_events WHERE consumer_group = ? AND event_id = ?")
            .bind(group)
            .bind(event_id)
            .execute(conn)
            .map(|r| r.map(drop))
            .boxed()
    }
}
