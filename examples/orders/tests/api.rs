//! The order API's answers to what it must refuse, over real HTTP, on
//! PostgreSQL (the test bed's, a fresh database per test) and on SQLite. Only
//! the API runs: no Kafka, no relay, no workers; the outbox rows it writes
//! are counted, not published.
//!
//! A refusal is a 4xx that names the field at fault and creates nothing; a
//! `503` ("retry later") is kept for the database being unreachable.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use orders::api::Api;
use orders::config::Topics;
use orders::db::{CATALOG, Db};
use orders::outbox::OutboxSignal;
use orders::shutdown::Shutdown;
use orders::workers::providers::Providers;
use serde_json::{Value, json};

/// A fresh database on the test bed's PostgreSQL, and its URL.
async fn fresh_postgres(label: &str) -> String {
    let admin = kafka_handler_tests::database_url();
    let name = format!("orders_api_{label}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let pool = sqlx::PgPool::connect(&admin).await.expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.expect("create database");
    format!("{}/{name}", admin.rsplit_once('/').expect("a database in DATABASE_URL").0)
}

/// The API alone, serving on a free port.
struct Served {
    backend: &'static str,
    base: String,
    db: Db,
    http: reqwest::Client,
    shutdown: Shutdown,
}

/// An answer: status, JSON body, whether it says it replayed a stored order.
struct Answer {
    status: u16,
    body: Value,
    replayed: bool,
}

impl Served {
    async fn start(backend: &'static str, url: &str) -> Self {
        let db = Db::connect(url, 4).await.expect("connect");
        db.migrate().await.expect("migrate");
        // No provider is called: `POST /orders/sync` is only sent requests it refuses.
        let providers = Providers::new("http://127.0.0.1:9", Duration::from_secs(1)).unwrap();
        let api = Api::new(db.clone(), Topics::new("api-test-"), OutboxSignal::default(), providers).await.unwrap();
        let shutdown = Shutdown::default();
        let addr = api.serve("127.0.0.1:0".parse().unwrap(), shutdown.clone()).await.expect("serve");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Served { backend, base: format!("http://{addr}"), db, http, shutdown }
    }

    /// The API on a fresh PostgreSQL database and on a fresh SQLite file.
    async fn both(label: &str) -> [Served; 2] {
        let sqlite = std::env::temp_dir().join(format!("orders-api-{label}-{}.db", uuid::Uuid::new_v4().simple()));
        [
            Served::start("postgres", &fresh_postgres(label).await).await,
            Served::start("sqlite", &format!("sqlite://{}", sqlite.display())).await,
        ]
    }

    async fn post(&self, path: &str, content_type: Option<&str>, key: Option<&str>, body: &str) -> Answer {
        let mut request = self.http.post(format!("{}{path}", self.base)).body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", self.backend));
        Answer { status, body, replayed }
    }

    /// `POST /orders` as a JSON client sends it.
    async fn order(&self, key: Option<&str>, body: &Value) -> Answer {
        self.post("/orders", Some("application/json"), key, &body.to_string()).await
    }

    async fn orders(&self) -> i64 {
        orders::on_db!(&self.db, |p| sqlx::query_scalar("SELECT COUNT(*) FROM orders").fetch_one(p).await).unwrap()
    }

    async fn outbox(&self) -> i64 {
        self.db.outbox_depth().await.unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A correct order: the amount is the catalog's price times the quantity.
fn good(user: &str, product: &str, quantity: i64) -> Value {
    let price = CATALOG.iter().find(|p| p.id == product).expect("a catalog product").price_cents;
    json!({"userId": user, "productId": product, "quantity": quantity, "amount": orders::money::format_cents(price * quantity)})
}

/// Invariant: a NUL or another control character in any text field (to
/// `POST /orders` and to `POST /orders/sync`), or a text field over 64
/// characters, gets a `422` naming that field — never the `503` that tells
/// a client to retry — and creates no order and no outbox row; an order id
/// with a NUL is a `404`. Only an unreachable database is a `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_any_text_field_get_422_naming_the_field_and_create_nothing() {
    for api in Served::both("nul").await {
        let mut bad = Vec::new();
        for field in ["userId", "productId"] {
            for value in ["nul\u{0}x", "\u{0}", "line\nbreak", "tab\there", "\u{1b}[31mred", "del\u{7f}", "c1\u{85}"] {
                let mut body = good("u1", "sku-01", 1);
                body[field] = json!(value);
                bad.push((field, format!("{value:?}"), body));
            }
            let mut body = good("u1", "sku-01", 1);
            body[field] = json!("x".repeat(65));
            bad.push((field, "65 characters".to_owned(), body));
        }
        let (mut refused, mut unavailable) = (0, 0);
        for path in ["/orders", "/orders/sync"] {
            for (field, what, body) in &bad {
                let answer = api.post(path, Some("application/json"), None, &body.to_string()).await;
                unavailable += u32::from(answer.status == 503);
                assert_eq!(answer.status, 422, "{}: {path} {field} {what}: {}", api.backend, answer.body);
                assert_eq!(answer.body["field"], *field, "{}: {path} {what}: {}", api.backend, answer.body);
                refused += 1;
            }
        }
        let lookup = api.http.get(format!("{}/orders/nul%00x", api.base)).send().await.unwrap().status().as_u16();
        assert_eq!(lookup, 404, "{}: GET /orders/nul%00x", api.backend);
        let (orders, outbox) = (api.orders().await, api.outbox().await);
        assert_eq!((orders, outbox), (0, 0), "{}: refused requests created something", api.backend);

        // A real outage is still a 503.
        orders::on_db!(&api.db, |p| p.close().await);
        let outage = api.order(None, &good("u1", "sku-01", 1)).await;
        assert_eq!(outage.status, 503, "{}: {}", api.backend, outage.body);
        println!(
            "{}: {} requests with a control character or over-long text: {refused} × 422 naming the field, \
             {unavailable} × 503; GET of an id with a NUL: {lookup}; orders created {orders}, outbox rows {outbox}; \
             with the database closed: {}",
            api.backend,
            2 * bad.len(),
            outage.status
        );
    }
}

/// Invariant: an error the database raises about a value (PostgreSQL
/// SQLSTATE class 22: a NUL in text, a string too long, a number out of
/// range) counts as bad data, so the API answers it with a 4xx; a missing
/// table or an unreachable server does not.
#[tokio::test]
async fn postgres_data_exceptions_are_bad_data_and_outages_are_not() {
    use orders::api::error::is_bad_data;
    let pool = sqlx::PgPool::connect(&kafka_handler_tests::database_url()).await.unwrap();
    let nul = sqlx::query("SELECT $1::text").bind("nul\u{0}x").execute(&pool).await.unwrap_err();
    // A cast to varchar(3) would cut the string; storing it in such a column refuses it.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("CREATE TEMPORARY TABLE short (v varchar(3))").execute(&mut *conn).await.unwrap();
    let too_long = sqlx::query("INSERT INTO short VALUES ($1)").bind("abcd").execute(&mut *conn).await.unwrap_err();
    let out_of_range = sqlx::query("SELECT $1::int4 + 1").bind(i32::MAX).execute(&pool).await.unwrap_err();
    let mut tally = Vec::new();
    for (what, e) in [("NUL", &nul), ("too long", &too_long), ("out of range", &out_of_range)] {
        let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
        assert!(is_bad_data(e), "{what}: {e}");
        tally.push(format!("{what} ({}) bad data", code.unwrap_or_default()));
    }
    let no_table = sqlx::query("SELECT * FROM no_such_table").execute(&pool).await.unwrap_err();
    assert!(!is_bad_data(&no_table), "{no_table}");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = sqlx::PgPool::connect(&format!("postgres://postgres@127.0.0.1:{port}/x")).await.unwrap_err();
    assert!(!is_bad_data(&unreachable), "{unreachable}");
    println!("postgres: {}; a missing table and an unreachable server are not", tally.join(", "));
}

/// Invariant: only `application/json` (with parameters or none) is read: a
/// `text/plain` body, a form, or no `Content-Type` at all gets a `415`
/// naming `Content-Type` and creates nothing, on `POST /orders` and `POST
/// /orders/sync`; the same body as `application/json; charset=utf-8` is
/// created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_declared_json_gets_415_and_creates_nothing() {
    for api in Served::both("media").await {
        let body = good("u1", "sku-01", 1).to_string();
        let mut unsupported = 0;
        for path in ["/orders", "/orders/sync"] {
            for content_type in [Some("text/plain"), None, Some("application/x-www-form-urlencoded")] {
                let answer = api.post(path, content_type, None, &body).await;
                assert_eq!(answer.status, 415, "{}: {path} {content_type:?}: {}", api.backend, answer.body);
                assert_eq!(answer.body["field"], "Content-Type", "{}: {}", api.backend, answer.body);
                unsupported += 1;
            }
        }
        let refused = api.orders().await;
        assert_eq!((refused, api.outbox().await), (0, 0), "{}: a 415 created something", api.backend);
        let created = api.post("/orders", Some("application/json; charset=utf-8"), None, &body).await;
        assert_eq!(created.status, 201, "{}: {}", api.backend, created.body);
        assert_eq!(api.orders().await, 1);
        println!(
            "{}: {unsupported} requests not declared JSON: {unsupported} × 415, {refused} orders; \
             application/json; charset=utf-8: {}",
            api.backend, created.status
        );
    }
}

/// Invariant: an `Idempotency-Key` sent again with the same request (its
/// fields in another order, too) gets `200` and the first order id; sent
/// with a different request — another quantity, user or product — it gets
/// a `422` naming `Idempotency-Key`. Either way there is exactly one order
/// and one outbox row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_a_different_request_gets_422_and_the_same_request_the_first_order() {
    for api in Served::both("key").await {
        let first = api.order(Some("key-1"), &good("u1", "sku-01", 1)).await;
        assert_eq!(first.status, 201, "{}: {}", api.backend, first.body);
        let id = first.body["orderId"].as_str().unwrap().to_owned();

        let reordered = r#"{"amount": "4.99", "quantity": 1, "productId": "sku-01", "userId": "u1"}"#;
        let mut same = Vec::new();
        for body in [good("u1", "sku-01", 1).to_string(), reordered.to_owned()] {
            let again = api.post("/orders", Some("application/json"), Some("key-1"), &body).await;
            assert_eq!((again.status, again.replayed), (200, true), "{}: {}", api.backend, again.body);
            assert_eq!(again.body["orderId"], *id, "{}: the first order", api.backend);
            same.push(again.status);
        }
        let mut different = Vec::new();
        for body in [good("u1", "sku-01", 2), good("u2", "sku-01", 1), good("u1", "sku-02", 1)] {
            let reused = api.order(Some("key-1"), &body).await;
            assert_eq!(reused.status, 422, "{}: {body}: {}", api.backend, reused.body);
            assert_eq!(reused.body["field"], "Idempotency-Key", "{}: {}", api.backend, reused.body);
            assert!(
                !reused.body.to_string().contains(&id),
                "{}: another request's order is not disclosed",
                api.backend
            );
            different.push(reused.status);
        }
        let (orders, outbox) = (api.orders().await, api.outbox().await);
        assert_eq!((orders, outbox), (1, 1), "{}", api.backend);
        println!(
            "{}: one key: first 201; same request {same:?}, same order id; different request {different:?}; \
             orders {orders}, outbox rows {outbox}",
            api.backend
        );
    }
}

/// Invariant: requests racing with one `Idempotency-Key` make one order:
/// 16 identical requests at once get one `201` and fifteen `200` with the
/// same order id; 16 at once alternating between two different requests
/// get one `201`, a `200` for each copy of the winner, a `422` for each of
/// the other; one order and one outbox row per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_racing_with_one_key_make_one_order() {
    for api in Served::both("race").await {
        let body = good("u1", "sku-03", 2);
        let same = futures::future::join_all((0..16).map(|_| api.order(Some("race-same"), &body))).await;
        let created = same.iter().filter(|a| a.status == 201).count();
        let replayed = same.iter().filter(|a| a.status == 200 && a.replayed).count();
        let ids: std::collections::HashSet<&str> = same.iter().filter_map(|a| a.body["orderId"].as_str()).collect();
        assert_eq!((created, replayed, ids.len()), (1, 15, 1), "{}: identical requests", api.backend);

        let bodies = [good("u1", "sku-04", 1), good("u2", "sku-05", 3)];
        let mixed = futures::future::join_all((0..16).map(|i| api.order(Some("race-mixed"), &bodies[i % 2]))).await;
        let winner = mixed.iter().position(|a| a.status == 201).expect("one request is created");
        let mut tally = [0; 3];
        for (i, answer) in mixed.iter().enumerate() {
            let expected = if i == winner {
                201
            } else if i % 2 == winner % 2 {
                200
            } else {
                422
            };
            assert_eq!(answer.status, expected, "{}: request {i}: {}", api.backend, answer.body);
            tally[[201, 200, 422].iter().position(|s| *s == expected).unwrap()] += 1;
        }
        let (orders, outbox) = (api.orders().await, api.outbox().await);
        assert_eq!((orders, outbox), (2, 2), "{}: one order per key", api.backend);
        println!(
            "{}: 16 identical racing requests: {created} × 201, {replayed} × 200, {} order id; 16 racing, two \
             bodies: {} × 201, {} × 200, {} × 422; orders {orders}, outbox rows {outbox}",
            api.backend,
            ids.len(),
            tally[0],
            tally[1],
            tally[2]
        );
    }
}

/// Invariant: the amount must be the catalog price times the quantity:
/// `sku-20` × 1,000 for "0.01", or a cent off, gets a `422` naming `amount`
/// and the expected value, and creates nothing; the right amount gets `201`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amount_other_than_price_times_quantity_gets_422_naming_the_expected_amount() {
    for api in Served::both("amount").await {
        let right = good("u1", "sku-20", 1000);
        let expected = right["amount"].as_str().unwrap().to_owned();
        let mut refused = 0;
        for amount in ["0.01", &orders::money::format_cents(orders::money::parse_cents(&expected).unwrap() - 1)] {
            let mut body = right.clone();
            body["amount"] = json!(amount);
            let answer = api.order(None, &body).await;
            assert_eq!(answer.status, 422, "{}: {amount}: {}", api.backend, answer.body);
            assert_eq!(answer.body["field"], "amount", "{}: {}", api.backend, answer.body);
            let message = answer.body["error"].as_str().unwrap();
            assert!(message.contains(&format!("\"{expected}\"")), "{}: names {expected}: {message}", api.backend);
            refused += 1;
        }
        let wrong = (api.orders().await, api.outbox().await);
        assert_eq!(wrong, (0, 0), "{}: a wrong amount created something", api.backend);
        let created = api.order(None, &right).await;
        assert_eq!(created.status, 201, "{}: {}", api.backend, created.body);
        let orders = api.orders().await;
        assert_eq!(orders, 1);
        println!(
            "{}: sku-20 × 1000 (expected {expected}): {refused} wrong amounts × 422, {} orders; the right amount: \
             {}, {orders} order",
            api.backend, wrong.0, created.status
        );
    }
}

/// The lines a process wrote to stderr, and whether any looks like a backtrace.
fn stderr_lines(output: &std::process::Output) -> (Vec<String>, bool) {
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    let backtrace = text.contains("backtrace") || text.contains("Stack") || text.contains("   0: ");
    (lines, backtrace)
}

/// Invariant: the API, and the `orders` binary's `api` and `simulator`
/// roles, started on a port another process holds fail with exit code 1
/// and one line on stderr naming the address and the setting that moves it
/// — no backtrace, even with `RUST_BACKTRACE=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_on_a_busy_port_fails_with_one_line_naming_the_address() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap();

    let sqlite = std::env::temp_dir().join(format!("orders-api-busy-{}.db", uuid::Uuid::new_v4().simple()));
    let db = Db::connect(&format!("sqlite://{}", sqlite.display()), 1).await.unwrap();
    db.migrate().await.unwrap();
    let providers = Providers::new("http://127.0.0.1:9", Duration::from_secs(1)).unwrap();
    let api = Api::new(db, Topics::new(""), OutboxSignal::default(), providers).await.unwrap();
    let e = api.serve(busy, Shutdown::default()).await.unwrap_err().to_string();
    assert!(e.contains(&busy.to_string()) && e.contains("ORDERS_API_ADDR"), "{e}");

    let prefix = format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let database = fresh_postgres("busy").await;
    let mut tally = Vec::new();
    for (role, variable) in [("simulator", "SIM_ADDR"), ("api", "ORDERS_API_ADDR")] {
        let output = Command::new(env!("CARGO_BIN_EXE_orders"))
            .arg(role)
            .env(variable, busy.to_string())
            .env("KAFKA_BOOTSTRAP_SERVERS", kafka_handler_tests::bootstrap())
            .env("DATABASE_URL", &database)
            .env("ORDERS_PREFIX", &prefix)
            .env("ORDERS_PARTITIONS", "1")
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "off")
            .env_remove("REDIS_URL")
            .env_remove("SIMULATOR_URL")
            .output()
            .expect("run the orders binary");
        let (lines, backtrace) = stderr_lines(&output);
        assert_eq!(output.status.code(), Some(1), "orders {role}: {lines:?}");
        assert_eq!(lines.len(), 1, "orders {role}: one line: {lines:?}");
        assert!(lines[0].contains(&format!("cannot listen on {busy}: address already in use")), "{lines:?}");
        assert!(lines[0].contains(variable), "orders {role} names {variable}: {lines:?}");
        assert!(!backtrace, "orders {role}: {lines:?}");
        tally.push(format!(
            "orders {role}: exit {:?}, {} stderr line, backtrace {backtrace}",
            output.status.code(),
            lines.len()
        ));
        println!("orders {role}: {}", lines[0]);
    }
    drop(holder);
    println!("busy port {busy}: Api::serve: {e}; {}", tally.join("; "));
}
