//! `orders demo --orders N`: drives N orders through the API of a system
//! running on embedded defaults, waits until every follow-up is done, and
//! prints what happened.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::audit::{Audit, audit};
use crate::db::{CATALOG, Db};
use crate::money::format_cents;

/// The mix of orders a driver sends.
#[derive(Clone, Debug)]
pub struct Load {
    pub orders: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Share of orders for the sold-out product.
    pub sold_out: f64,
    /// Share of orders for the product with little stock.
    pub limited: f64,
    /// Share of requests sent twice with the same `Idempotency-Key`.
    pub client_retries: f64,
    /// Distinct users (orders are keyed by user).
    pub users: usize,
}

impl Load {
    /// `orders` orders, 3 % of them for a sold-out product.
    pub fn new(orders: usize) -> Self {
        Self { orders, concurrency: 32, sold_out: 0.03, limited: 0.02, client_retries: 0.05, users: 100 }
    }
}

/// What the driver saw.
#[derive(Clone, Debug, Default)]
pub struct Driven {
    pub order_ids: Vec<String>,
    /// Latency of each accepted `POST /orders`.
    pub latencies: Vec<Duration>,
    /// Answers other than 201 (and the 200 of a client retry).
    pub rejected: u64,
    /// Client retries that got the same order back.
    pub replays_matched: u64,
}

/// An order request of the mix.
pub fn order_body(load: &Load, i: usize) -> Value {
    let roll = fastrand::f64();
    let product = if roll < load.sold_out {
        CATALOG[21]
    } else if roll < load.sold_out + load.limited {
        CATALOG[20]
    } else {
        CATALOG[fastrand::usize(..20)]
    };
    let quantity = 1 + fastrand::i64(0..3);
    json!({
        "userId": format!("user-{}", i % load.users.max(1)),
        "productId": product.id,
        "quantity": quantity,
        "amount": format_cents(product.price_cents * quantity),
    })
}

/// Sends the orders of `load` to the API at `base`.
pub async fn drive(base: &str, load: &Load) -> anyhow::Result<Driven> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let results = futures::stream::iter(0..load.orders)
        .map(|i| {
            let (http, body) = (http.clone(), order_body(load, i));
            let key = uuid::Uuid::new_v4().to_string();
            let retry = fastrand::f64() < load.client_retries;
            async move {
                let started = Instant::now();
                let first = post(&http, base, &body, &key).await;
                let latency = started.elapsed();
                let again = if retry { Some(post(&http, base, &body, &key).await) } else { None };
                (first, latency, again)
            }
        })
        .buffer_unordered(load.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut driven = Driven::default();
    for (first, latency, again) in results {
        match first {
            Ok((201, id)) => {
                driven.latencies.push(latency);
                if let Some(Ok((200, same))) = &again {
                    driven.replays_matched += u64::from(*same == id);
                }
                driven.order_ids.push(id);
            }
            Ok((status, body)) => {
                tracing::warn!(status, body, "order refused");
                driven.rejected += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "order request failed");
                driven.rejected += 1;
            }
        }
    }
    Ok(driven)
}

async fn post(http: &reqwest::Client, base: &str, body: &Value, key: &str) -> anyhow::Result<(u16, String)> {
    let response = http.post(format!("{base}/orders")).header("Idempotency-Key", key).json(body).send().await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    Ok((status, body["orderId"].as_str().map_or_else(|| body.to_string(), str::to_owned)))
}

/// Waits until every order is settled or `timeout` passed; returns how many
/// are still in flight.
pub async fn wait_settled(db: &Db, timeout: Duration) -> anyhow::Result<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let open: i64 =
            crate::on_db!(db, |p| sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE settled_at IS NULL")
                .fetch_one(p)
                .await)?;
        let outbox = db.outbox_depth().await?;
        if (open == 0 && outbox == 0) || Instant::now() >= deadline {
            return Ok(open);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The p-th percentile (0–100) of `values`.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// End-to-end latencies in ms of the orders created since `since`: order
/// accepted → last follow-up done.
pub async fn e2e_latencies(db: &Db, since: i64) -> anyhow::Result<Vec<f64>> {
    let rows: Vec<(i64, i64)> = crate::on_db!(db, |p| sqlx::query_as(
        "SELECT created_at, settled_at FROM orders WHERE settled_at IS NOT NULL AND created_at >= $1"
    )
    .bind(since)
    .fetch_all(p)
    .await)?;
    Ok(rows.into_iter().map(|(c, s)| (s - c) as f64).collect())
}

/// Prints the summary table and the `RESULT` lines.
pub fn report(a: &Audit, driven: &Driven, e2e: &mut [f64], elapsed: Duration) {
    let mut api: Vec<f64> = driven.latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let (api50, api99) = (percentile(&mut api, 50.0), percentile(&mut api, 99.0));
    let (e2e50, e2e99) = (percentile(e2e, 50.0), percentile(e2e, 99.0));
    let rows = [
        ("orders accepted (and 1 warm-up order)", driven.order_ids.len().to_string()),
        ("client retries answered with the same order", driven.replays_matched.to_string()),
        ("orders confirmed", a.confirmed.to_string()),
        ("orders cancelled", a.cancelled.to_string()),
        ("orders still in flight", a.in_flight.to_string()),
        ("stock left (all products)", format!("{} of {}", a.stock_left, a.stock_initial)),
        ("payments", a.payments.to_string()),
        ("refunds", a.refunds.to_string()),
        ("points entries", a.points_entries.to_string()),
        ("emails", a.emails.to_string()),
        ("SMS", a.sms.to_string()),
        ("dead letters", a.dead_letters.to_string()),
        ("API latency p50 / p99", format!("{api50:.1} ms / {api99:.1} ms")),
        ("end-to-end latency p50 / p99", format!("{e2e50:.0} ms / {e2e99:.0} ms")),
        ("wall time", format!("{:.1} s", elapsed.as_secs_f64())),
    ];
    println!();
    println!("| {:<45} | {:>22} |", "what", "count");
    println!("|{:-<47}|{:->24}|", "", "");
    for (what, value) in rows {
        println!("| {what:<45} | {value:>22} |");
    }
    println!();
    if a.violations.is_empty() {
        println!("all promises hold: every order settled, no effect missing or doubled, stock consistent");
    } else {
        println!("BROKEN PROMISES ({}):", a.violations.len());
        for v in &a.violations {
            println!("  {v}");
        }
    }
    println!("RESULT orders_confirmed {}", a.confirmed);
    println!("RESULT orders_cancelled {}", a.cancelled);
    println!("RESULT payments {}", a.payments);
    println!("RESULT refunds {}", a.refunds);
    println!("RESULT dead_letters {}", a.dead_letters);
    println!("RESULT effects_missing {}", a.missing);
    println!("RESULT effects_duplicated {}", a.duplicates);
    println!("RESULT order_api_p50_ms {api50:.1}");
    println!("RESULT order_api_p99_ms {api99:.1}");
    println!("RESULT order_e2e_p50_ms {e2e50:.0}");
    println!("RESULT order_e2e_p99_ms {e2e99:.0}");
}

/// Runs the demo against a system already started with its API at `base`.
pub async fn run(system: &crate::system::System, base: &str, load: &Load) -> anyhow::Result<Audit> {
    let warm_up = Instant::now();
    drive(base, &Load { concurrency: 1, client_retries: 0.0, ..Load::new(1) }).await?;
    wait_settled(&system.db, Duration::from_secs(60)).await?;
    println!("consumer groups ready: a warm-up order went through in {:.1} s", warm_up.elapsed().as_secs_f64());
    let since = crate::config::now_ms();
    let started = Instant::now();
    println!("sending {} orders to {base}/orders ({} at a time) …", load.orders, load.concurrency);
    let driven = drive(base, load).await?;
    println!(
        "{} orders accepted in {:.1} s; waiting for every follow-up job …",
        driven.order_ids.len(),
        started.elapsed().as_secs_f64()
    );
    let open = wait_settled(&system.db, Duration::from_secs(120)).await?;
    if open > 0 {
        println!("{open} orders still in flight after 120 s");
    }
    let ledger = match &system.simulator {
        Some(sim) => sim.ledger(),
        None => system.providers.ledger().await?,
    };
    let a = audit(&system.db, &ledger).await?;
    let mut e2e = e2e_latencies(&system.db, since).await?;
    report(&a, &driven, &mut e2e, started.elapsed());
    Ok(a)
}
