//! The order system against producers nobody on the project wrote: records
//! produced straight to its topics with a plain Kafka client, as kcat or a
//! Python service would, on real Kafka, PostgreSQL and Redis.
//!
//! Invariants:
//! * events are claims, the order database is the record: a re-published
//!   `OrderCreated` with a new event id charges, reserves, counts nothing
//!   more, and one for an order that does not exist charges nothing;
//! * provenance headers on a source topic are data: a forged
//!   `retry.original.topic` steers nothing, a forged `retry.due` holds
//!   nothing;
//! * every dead letter gets exactly one error-log row and one alert (0
//!   missing, 0 doubled), also when records of different partitions share an
//!   offset, and its reason says what was wrong (`decode`, `tombstone`,
//!   `event-id`, `permanent`);
//! * a burst of 2,000 orders on two products, with worker and relay
//!   processes SIGKILLed during it, dead-letters nothing (no deadlock spends
//!   an event's retries) and keeps every promise: 0 missing, 0 duplicated.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Worker, ledger, print_audit, run_config, serial};
use kafka_handler_tests::bootstrap;
use orders::audit::audit;
use orders::config::Settings;
use orders::db::{CATALOG, Db};
use orders::demo::{Load, drive, wait_settled};
use orders::simulator::SimulatorConfig;
use orders::system::{Parts, System};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

/// A client of the kind nobody on the project wrote: librdkafka with its
/// defaults, large records allowed.
fn foreign_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer")
}

/// One record produced by hand.
#[derive(Default)]
struct Raw {
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(&'static str, Vec<u8>)>,
}

/// Produces `raw` to `topic`; returns (partition, offset).
async fn produce(producer: &FutureProducer, topic: &str, raw: &Raw) -> (i32, i64) {
    let mut headers = OwnedHeaders::new();
    for (name, value) in &raw.headers {
        headers = headers.insert(Header { key: name, value: Some(value) });
    }
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(p) = raw.partition {
        record = record.partition(p);
    }
    if let Some(k) = &raw.key {
        record = record.key(k);
    }
    if let Some(v) = &raw.payload {
        record = record.payload(v);
    }
    let delivery = producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
    (delivery.partition, delivery.offset)
}

/// Every record of `topic` up to its end now.
fn read_all(topic: &str) -> Vec<OwnedMessage> {
    kafka_handler_tests::events::read_records(&bootstrap(), topic)
}

/// Every value of header `name`.
fn header_values(m: &OwnedMessage, name: &str) -> Vec<String> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .filter(|h| h.key == name)
                .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn header(m: &OwnedMessage, name: &str) -> String {
    header_values(m, name).pop().unwrap_or_default()
}

async fn error_log(db: &Db) -> Vec<(String, String, String)> {
    orders::on_db!(db, |p| sqlx::query_as(
        "SELECT dead_letter, consumer_group, error_kind FROM error_log ORDER BY dead_letter"
    )
    .fetch_all(p)
    .await)
    .unwrap()
}

async fn scalar(db: &Db, sql: &'static str) -> i64 {
    orders::on_db!(db, |p| sqlx::query_scalar(sql).fetch_one(p).await).unwrap()
}

/// An `OrderCreated` as a foreign producer would write it.
fn order_created(event_id: &str, order_id: &str, user: &str, product: &str, quantity: i64, amount: &str) -> Value {
    json!({
        "eventId": event_id, "orderId": order_id, "userId": user, "productId": product,
        "quantity": quantity, "amount": amount, "createdAt": orders::config::now_ms(),
    })
}

/// The dead letters to expect for a hostile record at (partition, offset)
/// of `order.created`: one per group that reads the topic, of this kind.
struct Expected {
    what: &'static str,
    kind: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_records_charge_nothing_steer_nothing_and_every_dead_letter_is_logged_once() {
    let _serial = serial().await;
    let mut run = run_config("hostile").await;
    run.settings.retry_delays_ms = vec![200, 400, 800];
    run.simulator = SimulatorConfig::uniform(20, 0.0);
    let system = System::start(run.settings, run.simulator, Parts::all()).await.expect("start");
    let (settings, topics) = (system.settings.clone(), system.settings.topics());
    let base = format!("http://{}", system.api_addr.unwrap());
    let real = 30;
    let load = Load { concurrency: 8, sold_out: 0.0, limited: 0.0, client_retries: 0.0, ..Load::new(real) };
    let driven = drive(&base, &load).await.expect("drive");
    assert_eq!((driven.order_ids.len(), driven.rejected), (real, 0));
    assert_eq!(wait_settled(&system.db, Duration::from_secs(120)).await.unwrap(), 0, "orders still in flight");
    let orders = orders::db::view::all(&system.db).await.unwrap();

    // Large records are allowed on order.created, as a producer's own topic
    // settings may; the dead-letter topic keeps the broker's default.
    let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", bootstrap()).create().unwrap();
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&topics.created)).set("max.message.bytes", "4000000");
    admin.alter_configs(&[alter], &AdminOptions::new()).await.unwrap()[0].as_ref().expect("alter topic");

    let producer = foreign_producer();
    let mut expected: BTreeMap<(i32, i64), Expected> = BTreeMap::new();
    let mut planned: Vec<(Raw, &'static str, &'static str)> = Vec::new();
    let mut send = |raw: Raw, what: &'static str, kind: &'static str| planned.push((raw, what, kind));
    let json = |v: Value| Some(v.to_string().into_bytes());
    let new_id = || uuid::Uuid::new_v4().to_string();

    // Re-published copies of real orders, each with a new event id.
    for o in orders.iter().take(10) {
        let copy = order_created(&new_id(), &o.order_id, &o.user_id, &o.product_id, o.quantity, &o.amount);
        let raw = Raw { key: Some(o.user_id.clone().into_bytes()), payload: json(copy), ..Raw::default() };
        send(raw, "a copy of a real order with a new event id", "permanent");
    }
    // Orders that do not exist.
    let ghost = |n: u32| order_created(&new_id(), &format!("ghost-{n}"), "mallory", "sku-01", 1, "4.99");
    let key = Some(b"\xff\xfe\x00not-utf8".to_vec());
    send(Raw { key, payload: json(ghost(1)), ..Raw::default() }, "an unknown order, non-UTF-8 key", "permanent");
    let mut v9 = ghost(2);
    v9["type"] = json!("OrderCreatedV9");
    v9["version"] = json!(9);
    send(Raw { payload: json(v9), ..Raw::default() }, "an unknown order, version 9", "permanent");
    let mut padded = ghost(3);
    padded["padding"] = json!("x".repeat(2 << 20));
    send(Raw { payload: json(padded), ..Raw::default() }, "an unknown order, 2 MB", "permanent");
    // Forged provenance: an order.events event on order.created, claiming
    // to be a retry of an order.events record, due in an hour.
    let o = &orders[10];
    let paid = json!({"eventId": new_id(), "orderId": o.order_id, "userId": o.user_id, "type": "PaymentCompleted",
        "paymentId": "pay_forged", "amount": o.amount, "at": 0});
    let due = (orders::config::now_ms() + 3_600_000).to_string();
    let forged_headers = vec![
        ("retry.original.topic", topics.events.clone().into_bytes()),
        ("retry.original.partition", b"0".to_vec()),
        ("retry.original.offset", b"0".to_vec()),
        ("retry.attempt", b"99".to_vec()),
        ("retry.due", due.into_bytes()),
        ("dlt.original.topic", topics.events.clone().into_bytes()),
    ];
    let raw = Raw {
        key: Some(o.user_id.clone().into_bytes()),
        payload: json(paid),
        headers: forged_headers,
        ..Raw::default()
    };
    send(raw, "an order.events event with forged retry headers", "decode");
    // Bad input.
    send(Raw { payload: Some(b"{\"eventId\": ".to_vec()), ..Raw::default() }, "malformed JSON", "decode");
    send(Raw::default(), "a tombstone", "tombstone");
    for o in &orders[11..13] {
        // No event id, but a real order's id: no compensation may follow.
        let body = json!({"orderId": o.order_id, "userId": o.user_id, "productId": "sku-01", "quantity": 1});
        send(Raw { payload: json(body), ..Raw::default() }, "no event id, a real order's id", "event-id");
    }
    for (raw, what, kind) in planned {
        let at = produce(&producer, &topics.created, &raw).await;
        expected.insert(at, Expected { what, kind });
    }
    // Records of every partition at the same offset: pad the partitions to
    // one offset, then one malformed record each.
    let padding = || Raw { payload: Some(b"padding".to_vec()), ..Raw::default() };
    let top = expected.keys().map(|(_, o)| *o).max().unwrap().max(orders.len() as i64) + 1;
    for p in 0..settings.partitions {
        loop {
            let at = produce(&producer, &topics.created, &Raw { partition: Some(p), ..padding() }).await;
            expected.insert(at, Expected { what: "padding", kind: "decode" });
            if at.1 + 1 >= top {
                break;
            }
        }
        let raw = Raw { partition: Some(p), payload: Some(b"not json".to_vec()), ..Raw::default() };
        let at = produce(&producer, &topics.created, &raw).await;
        expected.insert(at, Expected { what: "malformed JSON, same offset in every partition", kind: "decode" });
    }
    let same_offset: BTreeSet<i64> =
        expected.iter().filter(|(_, e)| e.what.starts_with("malformed JSON, same")).map(|((_, o), _)| *o).collect();
    assert_eq!(same_offset.len(), 1, "the last records of the partitions share an offset: {same_offset:?}");

    // Each hostile record is dead-lettered once by each group reading
    // order.created, and each dead letter is logged and alerted once.
    let groups: BTreeSet<String> = ["inventory", "payment", "analytics"].map(|j| settings.group(j)).into();
    let want = expected.len() * groups.len();
    let dlt = format!("{}.dlt", topics.created);
    let deadline = Instant::now() + Duration::from_secs(180);
    let letters = loop {
        let letters = read_all(&dlt);
        let (rows, alerts) = (error_log(&system.db).await.len(), ledger(&system).alerts.len());
        if letters.len() >= want && rows >= want && alerts >= want {
            break letters;
        }
        assert!(
            Instant::now() < deadline,
            "dead letters {} of {want}, error-log rows {rows}, alerts {alerts}",
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await; // anything more would show now

    let mut identities = BTreeSet::new();
    let mut wrong = Vec::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &letters {
        let original = header_values(m, "dlt.original.topic");
        let (p, o) = (
            header(m, "dlt.original.partition").parse().unwrap_or(-1),
            header(m, "dlt.original.offset").parse().unwrap_or(-1),
        );
        let group = header(m, "dlt.group");
        let kind = header(m, "dlt.error.kind");
        match expected.get(&(p, o)) {
            Some(e) if original == [topics.created.clone()] && e.kind == kind && groups.contains(&group) => {
                *kinds.entry(e.kind).or_default() += 1;
            }
            e => wrong.push(format!(
                "{}[{p}]@{o} by {group}: kind {kind}, original topic {original:?}; expected {}",
                topics.created,
                e.map_or("nothing".to_owned(), |e| format!("{} ({})", e.kind, e.what))
            )),
        }
        identities.insert(format!("{group}/{}/{p}/{o}", topics.created));
    }
    let padded_dropped = letters.iter().filter(|m| !header(m, "dlt.payload.dropped").is_empty()).count();
    let rows = error_log(&system.db).await;
    let logged: BTreeSet<String> = rows.iter().map(|(id, ..)| id.clone()).collect();
    let ledger = ledger(&system);
    let events_dlt = read_all(&format!("{}.dlt", topics.events)).len();
    let a = audit(&system.db, &ledger).await.unwrap();
    print_audit("hostile", &a, &ledger);
    println!(
        "hostile: {} records produced, {} dead letters ({kinds:?}, {padded_dropped} without payload), {} error-log \
         rows, {} alerts, {events_dlt} on {}.dlt, {} wrong",
        expected.len(),
        letters.len(),
        rows.len(),
        ledger.alerts.len(),
        topics.events,
        wrong.len()
    );
    assert!(wrong.is_empty(), "dead letters not as expected:\n{}", wrong.join("\n"));
    assert_eq!(letters.len(), want, "one dead letter per hostile record and group");
    assert_eq!(identities.len(), want, "dead letters are of distinct records");
    assert_eq!(logged, identities, "one error-log row per dead letter: 0 missing, 0 doubled");
    assert_eq!(ledger.alerts.len(), want, "one alert per dead letter");
    assert_eq!(padded_dropped, groups.len(), "the 2 MB record's dead letters keep provenance, not payload");
    assert_eq!(events_dlt, 0, "nothing downstream failed: no compensation for a refused event");
    // Nothing moved for a hostile record.
    assert_eq!((a.orders, a.confirmed), (real as u64, real as u64), "real orders stay confirmed");
    assert_eq!((a.missing, a.duplicates, a.repeats, a.payments), (0, 0, 0, real as u64), "one charge per order");
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    assert_eq!(scalar(&system.db, "SELECT COUNT(*) FROM reservations").await, real as i64, "reservations");
    assert_eq!(
        scalar(&system.db, "SELECT CAST(SUM(orders) AS BIGINT) FROM order_stats").await,
        real as i64,
        "orders counted"
    );
    system.stop().await.unwrap();
}

async fn created(db: &Db) -> i64 {
    scalar(db, "SELECT COUNT(*) FROM orders").await
}

/// 2,000 orders for two products as fast as the API takes them.
async fn burst(base: String, orders: usize) -> (usize, usize) {
    use futures::StreamExt;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let results: Vec<bool> = futures::stream::iter(0..orders)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let product = CATALOG[i % 2];
                let body = json!({"userId": format!("user-{}", i % 50), "productId": product.id, "quantity": 1,
                    "amount": orders::money::format_cents(product.price_cents)});
                let r = http.post(format!("{base}/orders")).json(&body).send().await;
                r.is_ok_and(|r| r.status().as_u16() == 201)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let ok = results.iter().filter(|ok| **ok).count();
    (ok, orders - ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_on_two_products_with_workers_and_relay_killed_dead_letters_nothing() {
    let _serial = serial().await;
    let run = run_config("burst").await;
    let settings: Settings = run.settings.clone();
    let jobs = "inventory,payment,notification,points,analytics,order-status";
    let in_process = Parts { api: true, relay: false, jobs: vec!["dlt-monitor".to_owned()] };
    let system = System::start(run.settings, run.simulator, in_process).await.expect("start");
    let sim = system.simulator_url.clone();
    // Two processes of every job: two analytics consumers write the same
    // hot (minute, product) rows at once.
    let mut workers = [Worker::spawn(&settings, &sim, jobs), Worker::spawn(&settings, &sim, jobs)];
    let mut relay = Worker::role(&settings, &sim, &["relay"]);
    let deadlocks = || async {
        scalar(&system.db, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").await
    };
    let deadlocks_before = deadlocks().await;

    let n = 2000;
    let driving = tokio::spawn(burst(format!("http://{}", system.api_addr.unwrap()), n));
    let deadline = Instant::now() + Duration::from_secs(120);
    while created(&system.db).await < 500 {
        assert!(Instant::now() < deadline, "no orders before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workers[0].kill();
    relay.kill();
    let at_kill = created(&system.db).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    workers[0] = Worker::spawn(&settings, &sim, jobs);
    let _relay = Worker::role(&settings, &sim, &["relay"]);
    let (accepted, refused) = driving.await.unwrap();
    assert_eq!((accepted, refused), (n, 0));

    assert_eq!(wait_settled(&system.db, Duration::from_secs(300)).await.unwrap(), 0, "orders still in flight");
    let ledger = ledger(&system);
    let a = audit(&system.db, &ledger).await.unwrap();
    // Analytics is a projection of its own: it may still be catching up
    // when the last order settles. Wait for it, then check its count.
    let count = "SELECT CAST(COALESCE(SUM(orders), 0) AS BIGINT) FROM order_stats";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut counted = scalar(&system.db, count).await;
    while counted < n as i64 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        counted = scalar(&system.db, count).await;
    }
    let deadlocks = deadlocks().await - deadlocks_before;
    print_audit(&format!("burst (killed at {at_kill} of {n} orders)"), &a, &ledger);
    println!(
        "burst: {n} orders on 2 products, {deadlocks} deadlocks detected by PostgreSQL, {} dead letters, {counted} \
         orders counted by analytics",
        a.dead_letters
    );
    assert!(at_kill < n as i64, "killed during the burst");
    assert!(a.violations.is_empty(), "broken promises:\n{}", a.violations.join("\n"));
    assert_eq!((a.orders as usize, a.in_flight, a.missing, a.duplicates), (n, 0, 0, 0));
    assert_eq!(a.dead_letters, 0, "no order dead-lettered: conflicts are not failures");
    assert_eq!(counted, n as i64, "every order counted once");
    system.stop().await.unwrap();
}
