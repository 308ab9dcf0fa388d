//! The order system against real Kafka, PostgreSQL and Redis (`scripts/test`
//! starts them): thousands of orders with provider failures and sold-out
//! products, a worker process killed mid-run, Kafka stopped while orders keep
//! arriving, and bad requests. Each test uses its own database and a random
//! prefix for topics, groups and dedup keys; the tests run one at a time
//! because one of them stops the shared broker.

mod common;

use std::time::{Duration, Instant};

use common::{Worker, ledger, print_audit, run_config, serial};
use kafka_handler_tests::{bootstrap, testbed_node};
use orders::audit::{Audit, audit};
use orders::demo::{Load, drive, wait_settled};
use orders::simulator::SimulatorConfig;
use orders::system::{Parts, System};
use serde_json::json;

/// Every promise: all settled, nothing missing or doubled.
fn assert_promises(a: &Audit, orders: usize) {
    assert!(a.violations.is_empty(), "broken promises:\n{}", a.violations.join("\n"));
    assert_eq!(a.orders as usize, orders);
    assert_eq!(a.confirmed + a.cancelled, a.orders);
    assert_eq!((a.in_flight, a.missing, a.duplicates, a.outbox_depth), (0, 0, 0, 0));
    assert_eq!(a.payments - a.refunds, a.confirmed, "every charge of a cancelled order refunded");
    assert_eq!((a.points_entries, a.emails, a.sms), (a.confirmed, a.confirmed, a.confirmed));
}

fn load(orders: usize) -> Load {
    Load { concurrency: 16, ..Load::new(orders) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_orders_with_provider_failures_and_sold_out_products_keep_every_promise() {
    let _serial = serial().await;
    let run = run_config("failures").await;
    let system = System::start(run.settings, run.simulator, Parts::all()).await.expect("start");
    let base = format!("http://{}", system.api_addr.unwrap());
    let driven = drive(&base, &load(2000)).await.expect("drive");
    assert_eq!((driven.order_ids.len(), driven.rejected), (2000, 0));
    assert_eq!(wait_settled(&system.db, Duration::from_secs(240)).await.unwrap(), 0, "orders still in flight");
    let ledger = ledger(&system);
    let a = audit(&system.db, &ledger).await.unwrap();
    print_audit("failures", &a, &ledger);
    assert_promises(&a, 2000);
    assert_eq!(a.repeats, 0, "no handler ran twice for one effect: {:?}", ledger.replays);
    assert!(ledger.replays.values().sum::<u64>() > 0, "retries repeated served keys: the count sees repeats");
    assert!(a.cancelled >= 20, "sold-out orders are cancelled: {}", a.cancelled);
    assert_eq!(a.dead_letters, 0);
    assert!(ledger.injected_failures.values().sum::<u64>() > 50, "failures were injected");
    system.stop().await.unwrap();
}

/// Invariant: while the payment gateway is down, each order's charge is
/// dead-lettered once its retries are spent, which cancels the order; its
/// refund by key (the gateway may have charged before it failed) is
/// dead-lettered too. Each dead letter gives exactly one error-log row and
/// exactly one chat alert naming the order and the group. Once the gateway is
/// back, re-driving the refunds with `kafka-handler dlt replay` settles every
/// order: cancelled, stock released, nothing charged; 0 missing, 0 doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_outage_dead_letters_alerts_cancels_and_a_redrive_settles_every_order() {
    let _serial = serial().await;
    let mut run = run_config("dlt").await;
    run.settings.retry_delays_ms = vec![200, 400, 800];
    // Every payment request fails, four times per key: a charge and its
    // refund each spend their four attempts (one and three retries), and
    // the fifth (the re-driven refund) goes through.
    run.simulator =
        SimulatorConfig { payment_failure_rate: 1.0, max_failures_per_key: 4, ..SimulatorConfig::uniform(20, 0.0) };
    let database = run.settings.database_url.clone().expect("PostgreSQL");
    let orders = 40;
    let system = System::start(run.settings, run.simulator, Parts::all()).await.expect("start");
    let (payment, topics) = (system.settings.group("payment"), system.settings.topics());
    let base = format!("http://{}", system.api_addr.unwrap());
    let driven = drive(&base, &load(orders)).await.expect("drive");
    assert_eq!((driven.order_ids.len(), driven.rejected), (orders, 0));

    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let logged = || async {
        sqlx::query_as::<_, (String, String, String, String)>(
            "SELECT order_id, consumer_group, dead_letter, error FROM error_log ORDER BY order_id, dead_letter",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    // Every charge and every refund dead-lettered and alerted.
    let deadline = Instant::now() + Duration::from_secs(120);
    while (logged().await.len(), ledger(&system).alerts.len()) != (2 * orders, 2 * orders) {
        assert!(Instant::now() < deadline, "dead letters: {:?}", logged().await.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM orders WHERE settled_at IS NULL GROUP BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(statuses, [("CANCELLED".to_owned(), orders as i64)], "cancelled, waiting for their refunds");
    let rows = logged().await;
    let alerts = ledger(&system).alerts;
    let mut expected: Vec<String> = driven.order_ids.iter().flat_map(|id| [id.clone(), id.clone()]).collect();
    expected.sort();
    let mut logged_orders: Vec<String> = rows.iter().map(|(order, ..)| order.clone()).collect();
    logged_orders.sort();
    assert_eq!(logged_orders, expected, "one row per charge and one per refund of each order, 0 missing, 0 doubled");
    for (order, group, dead_letter, error) in &rows {
        assert_eq!(group, &payment, "order {order}: dead-lettered by {group}");
        assert!(!error.is_empty(), "order {order}: the error is logged");
        let from =
            if dead_letter.contains(&format!("/{}/", topics.created)) { &topics.created } else { &topics.events };
        let alerted = alerts
            .iter()
            .filter(|text| text.contains(&format!("order {order}:")) && text.contains(&format!("on {from} (")))
            .count();
        assert_eq!(alerted, 1, "order {order}, {from}: {alerted} alerts");
        assert!(alerts.iter().any(|text| text.contains(&format!("order {order}:")) && text.contains(&payment)));
    }

    // The gateway is back (each key has had its four failures): re-drive
    // the refunds to the payment group.
    let bootstrap = bootstrap();
    let dlt = format!("{}.dlt", topics.events);
    let replay =
        ["kafka-handler", "--bootstrap-servers", &bootstrap, "dlt", "replay", "--topic", &dlt, "--group", &payment];
    assert_eq!(kafka_handler::cli::main(replay).await, std::process::ExitCode::SUCCESS);
    assert_eq!(wait_settled(&system.db, Duration::from_secs(120)).await.unwrap(), 0, "orders still in flight");
    let ledger = ledger(&system);
    let a = audit(&system.db, &ledger).await.unwrap();
    print_audit("dlt", &a, &ledger);
    assert_promises(&a, orders);
    assert_eq!((a.cancelled, a.payments, a.refunds, a.dead_letters), (orders as u64, 0, 0, 2 * orders as u64));
    assert_eq!(a.repeats, 0, "no handler ran twice for one effect: {:?}", ledger.replays);
    system.stop().await.unwrap();
}

async fn confirmed(system: &System) -> i64 {
    orders::on_db!(&system.db, |p| sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status = 'CONFIRMED'")
        .fetch_one(p)
        .await)
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_process_killed_and_restarted_mid_run_loses_and_doubles_nothing() {
    let _serial = serial().await;
    let run = run_config("sigkill").await;
    let jobs = "inventory,payment,notification,points";
    let in_process =
        Parts { api: true, relay: true, jobs: ["analytics", "order-status", "dlt-monitor"].map(String::from).to_vec() };
    let settings = run.settings.clone();
    let system = System::start(run.settings, run.simulator, in_process).await.expect("start");
    let mut worker = Worker::spawn(&settings, &system.simulator_url, jobs);
    let base = format!("http://{}", system.api_addr.unwrap());
    let driving = tokio::spawn(async move { drive(&base, &load(2000)).await });

    let deadline = Instant::now() + Duration::from_secs(120);
    while confirmed(&system).await < 300 {
        assert!(Instant::now() < deadline, "no progress before the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.kill();
    let at_kill = confirmed(&system).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _worker = Worker::spawn(&settings, &system.simulator_url, jobs);

    let driven = driving.await.unwrap().expect("drive");
    assert_eq!((driven.order_ids.len(), driven.rejected), (2000, 0));
    assert_eq!(wait_settled(&system.db, Duration::from_secs(240)).await.unwrap(), 0, "orders still in flight");
    let ledger = ledger(&system);
    let a = audit(&system.db, &ledger).await.unwrap();
    print_audit(&format!("sigkill (killed at {at_kill} confirmed)"), &a, &ledger);
    assert!(at_kill < 2000, "the worker was killed mid-run");
    assert_promises(&a, 2000);
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_down_for_20_seconds_the_api_keeps_answering_and_the_outbox_loses_nothing() {
    let _serial = serial().await;
    let run = run_config("kafka_down").await;
    let system = System::start(run.settings, run.simulator, Parts::all()).await.expect("start");
    let base = format!("http://{}", system.api_addr.unwrap());
    let before = drive(&base, &load(200)).await.expect("drive");
    assert_eq!(wait_settled(&system.db, Duration::from_secs(120)).await.unwrap(), 0);

    testbed_node("stop", "kafka");
    let down_since = Instant::now();
    let mut during = Vec::new();
    let mut peak_outbox = 0;
    while down_since.elapsed() < Duration::from_secs(20) {
        let driven = drive(&base, &Load { concurrency: 4, ..Load::new(20) }).await.expect("drive while down");
        assert_eq!(driven.rejected, 0, "the API answers while Kafka is down");
        during.push(driven);
        peak_outbox = peak_outbox.max(system.db.outbox_depth().await.unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    testbed_node("start", "kafka");
    let accepted_while_down: usize = during.iter().map(|d| d.order_ids.len()).sum();
    let mut latencies: Vec<f64> =
        during.iter().flat_map(|d| d.latencies.iter().map(|l| l.as_secs_f64() * 1000.0)).collect();
    let p99 = orders::demo::percentile(&mut latencies, 99.0);
    println!(
        "kafka down 20 s: {accepted_while_down} orders accepted, API p99 {p99:.1} ms, outbox peaked at {peak_outbox}"
    );
    assert!(accepted_while_down >= 200);
    assert!(peak_outbox as usize >= accepted_while_down / 2, "the outbox held the events: {peak_outbox}");

    assert_eq!(wait_settled(&system.db, Duration::from_secs(240)).await.unwrap(), 0, "orders still in flight");
    let ledger = ledger(&system);
    let a = audit(&system.db, &ledger).await.unwrap();
    print_audit("kafka down", &a, &ledger);
    assert_promises(&a, before.order_ids.len() + accepted_while_down);
    system.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_naming_the_field_and_create_nothing() {
    let _serial = serial().await;
    let run = run_config("bad").await;
    let parts = Parts { api: true, relay: true, jobs: Vec::new() };
    let system = System::start(run.settings, run.simulator, parts).await.expect("start");
    let url = format!("http://{}/orders", system.api_addr.unwrap());
    let http = reqwest::Client::new();
    let good = json!({"userId": "u1", "productId": "sku-01", "quantity": 1, "amount": "4.99"});
    let with = |field: &str, value: serde_json::Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let cases = [
        ("missing userId", without("userId").to_string(), 422, "userId"),
        ("missing productId", without("productId").to_string(), 422, "productId"),
        ("missing quantity", without("quantity").to_string(), 422, "quantity"),
        ("missing amount", without("amount").to_string(), 422, "amount"),
        ("negative quantity", with("quantity", json!(-2)).to_string(), 422, "quantity"),
        ("zero quantity", with("quantity", json!(0)).to_string(), 422, "quantity"),
        ("non-numeric amount", with("amount", json!("12,50 EUR")).to_string(), 422, "amount"),
        ("amount as a float", with("amount", json!(4.99)).to_string(), 422, "amount"),
        ("negative amount", with("amount", json!("-4.99")).to_string(), 422, "amount"),
        ("unknown product", with("productId", json!("sku-nope")).to_string(), 422, "productId"),
        ("not JSON", "{\"userId\": ".to_owned(), 400, "body"),
        ("1 MB body", json!({"userId": "x".repeat(1 << 20)}).to_string(), 413, "body"),
    ];
    for (what, body, status, field) in cases {
        let response = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status().as_u16(), status, "{what}");
        let answer: serde_json::Value = response.json().await.unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
        assert_eq!(answer["field"], field, "{what}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {answer}");
    }
    let orders = orders::db::view::all(&system.db).await.unwrap();
    assert!(orders.is_empty(), "bad requests created {} orders", orders.len());
    assert_eq!(system.db.outbox_depth().await.unwrap(), 0);

    // A good request with a key, sent twice, creates one order.
    let mut ids = Vec::new();
    for expected in [201, 200] {
        let response = http.post(&url).header("Idempotency-Key", "client-1").json(&good).send().await.unwrap();
        assert_eq!(response.status().as_u16(), expected);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "PENDING");
        ids.push(answer["orderId"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(orders::db::view::all(&system.db).await.unwrap().len(), 1);
    system.stop().await.unwrap();
}
