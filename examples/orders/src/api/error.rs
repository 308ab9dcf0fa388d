//! The API's error answers. A 4xx names the field at fault and is final; a
//! 503 says "retry later", so it is kept for the database failing — never
//! for a value it refused, which would fail the same way on every retry.

use std::net::SocketAddr;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A JSON error naming the field at fault.
pub(crate) fn error(status: StatusCode, field: &str, message: impl std::fmt::Display) -> Box<Response> {
    Box::new((status, Json(json!({"error": format!("{field} {message}"), "field": field}))).into_response())
}

/// The answer to a failed database call: `422` when the database refused a
/// value of the request, else `503`.
pub(crate) fn database(e: &sqlx::Error) -> Response {
    if is_bad_data(e) {
        tracing::info!(error = %e, "the database refused a value of the request");
        return *error(StatusCode::UNPROCESSABLE_ENTITY, "body", "holds a value the database cannot store");
    }
    unavailable(e)
}

/// `503`: the database could not answer; the client may retry.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "database error");
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "the order database is unavailable, retry later"})))
        .into_response()
}

/// Whether the database refused a value rather than failed: on PostgreSQL
/// an error of SQLSTATE class 22, "data exception" (`22021` a character
/// the encoding cannot hold, such as NUL; `22001` a string too long;
/// `22003` a number out of range); on SQLite `SQLITE_TOOBIG` or
/// `SQLITE_MISMATCH`. Such a request fails the same way every time.
pub fn is_bad_data(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else { return false };
    let Some(code) = db.code() else { return false };
    if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
        return code.starts_with("22");
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // The code is SQLite's extended result code; the primary code is its low byte.
        const TOOBIG: i32 = 18;
        const MISMATCH: i32 = 20;
        return code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, TOOBIG | MISMATCH));
    }
    false
}

/// Why a server cannot listen on `addr`, in one line naming the address and
/// the `setting` (environment variable and flag) that moves it.
pub fn cannot_listen(addr: SocketAddr, e: &std::io::Error, setting: &str) -> anyhow::Error {
    use std::io::ErrorKind;
    let (why, hint) = match e.kind() {
        ErrorKind::AddrInUse => ("address already in use".to_owned(), "another process has it; "),
        ErrorKind::AddrNotAvailable => ("address not available".to_owned(), "no interface of this host has it; "),
        ErrorKind::PermissionDenied => ("permission denied".to_owned(), "a port below 1024 needs privileges; "),
        _ => (e.to_string(), ""),
    };
    anyhow::anyhow!("cannot listen on {addr}: {why} ({hint}set {setting} to another address)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Invariant: a value SQLite refuses is the request's fault; a query
    /// SQLite cannot run is not.
    #[tokio::test]
    async fn sqlite_refusing_a_value_is_bad_data_and_a_broken_query_is_not() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let too_big = sqlx::query("SELECT zeroblob(2000000000)").execute(&pool).await.unwrap_err();
        assert!(is_bad_data(&too_big), "{too_big}");
        let broken = sqlx::query("SELECT * FROM no_such_table").execute(&pool).await.unwrap_err();
        assert!(!is_bad_data(&broken), "{broken}");
        assert!(!is_bad_data(&sqlx::Error::PoolTimedOut));
        assert_eq!(database(&too_big).status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(database(&sqlx::Error::PoolTimedOut).status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn a_busy_port_is_named_with_the_setting_that_moves_it() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let e = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert_eq!(
            cannot_listen(addr, &e, "ORDERS_API_ADDR or --api-addr").to_string(),
            "cannot listen on 127.0.0.1:8080: address already in use (another process has it; \
             set ORDERS_API_ADDR or --api-addr to another address)"
        );
        let other = std::io::Error::other("boom");
        assert_eq!(
            cannot_listen(addr, &other, "SIM_ADDR").to_string(),
            "cannot listen on 127.0.0.1:8080: boom (set SIM_ADDR to another address)"
        );
    }
}
