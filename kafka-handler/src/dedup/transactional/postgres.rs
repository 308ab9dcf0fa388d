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
        events: &'c [(&'c str, &'c str)],
        consumer: &'c str,
    ) -> BoxFuture<'c, Result<Vec<bool>, sqlx::Error>> {
        let groups: Vec<&str> = events.iter().map(|e| e.0).collect();
        let event_ids: Vec<&str> = events.iter().map(|e| e.1).collect();
        async move {
            let inserted: Vec<(i64,)> = sqlx::query_as(
                "WITH input AS ( \
                     SELECT * FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS i(consumer_group, event_id, n) \
                 ), inserted AS ( \
                     INSERT INTO processed_events (consumer_group, event_id, consumer_name, processed_at) \
                     SELECT consumer_group, event_id, $3, now() FROM input ORDER BY n \
                     ON CONFLICT DO NOTHING \
                     RETURNING consumer_group, event_id \
                 ) \
                 SELECT i.n FROM input i JOIN inserted USING (consumer_group, event_id)",
            )
            .bind(groups)
            .bind(event_ids)
            .bind(consumer)
            .fetch_all(conn)
            .await?;
            let mut fresh = vec![false; events.len()];
            for (n,) in inserted {
                if let Some(f) = usize::try_from(n - 1).ok().and_then(|i| fresh.get_mut(i)) {
                    *f = true;
                }
            }
            Ok(fresh)
        }
        .boxed()
    }

    fn is_conflict(error: &sqlx::Error) -> bool {
        // serialization_failure, deadlock_detected
        error.as_database_error().and_then(|e| e.code()).is_some_and(|code| code == "40001" || code == "40P01")
    }

    fn delete_processed<'c>(
        conn: &'c mut PgConnection,
        group: &'c str,
        event_id: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        sqlx::query("DELETE FROM processed_events WHERE consumer_group = $1 AND event_id = $2")
            .bind(group)
            .bind(event_id)
            .execute(conn)
            .map(|r| r.map(drop))
            .boxed()
    }
}
