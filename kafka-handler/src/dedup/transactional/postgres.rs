use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::{PgConnection, Postgres};

use super::{Backend, sealed};

impl sealed::Sealed for Postgres {}

impl Backend for Postgres {
    const BEGIN: &'static str = "BEGIN";

    fn execute<'c>(conn: &'c mut PgConnection, sql: &'static str) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        sqlx::raw_sql(sql).execute(conn).map(|r| r.map(drop)).boxed()
    }

    fn insert_processed<'c>(
        conn: &'c mut PgConnection,
        group: &'c str,
        event_id: &'c str,
        consumer: &'c str,
    ) -> BoxFuture<'c, Result<bool, sqlx::Error>> {
        sqlx::query(
            "INSERT INTO processed_events (consumer_group, event_id, consumer_name, processed_at) \
             VALUES ($1, $2, $3, now()) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(event_id)
        .bind(consumer)
        .execute(conn)
        .map(|r| r.map(|done| done.rows_affected() == 1))
        .boxed()
    }
}
