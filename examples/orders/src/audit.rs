//! Counts what a run did and checks the promises: every order CONFIRMED or
//! CANCELLED with nothing in flight; stock never negative and equal to the
//! initial stock minus confirmed quantities; every confirmed order has
//! exactly one payment, points entry, email and SMS; every cancelled order
//! that was charged is refunded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::db::Db;
use crate::db::view;
use crate::on_db;
use crate::simulator::Ledger;

/// What a run did, and the broken promises (empty when all hold).
#[derive(Clone, Debug, Default)]
pub struct Audit {
    pub orders: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub in_flight: u64,
    pub stock_initial: i64,
    pub stock_left: i64,
    pub payments: u64,
    pub refunds: u64,
    pub points_entries: u64,
    pub emails: u64,
    pub sms: u64,
    pub dead_letters: u64,
    pub outbox_depth: i64,
    /// Effects beyond one per order (a duplicate charge, email, …).
    pub duplicates: u64,
    /// Provider requests that repeated an effect already had, beyond what
    /// injected failures explain ([`Ledger::unexplained_repeats`]): a
    /// handler that ran twice for one event. The provider answers a repeated
    /// key with its first reply, so this is the only trace of a double run.
    /// Zero unless a process crashed or Kafka was unavailable between an
    /// effect and the acknowledgement of its record.
    pub repeats: u64,
    /// Effects missing for an order (a confirmed order without its SMS, …).
    pub missing: u64,
    /// Each broken promise, with the order it concerns.
    pub violations: Vec<String>,
}

impl Audit {
    fn check(&mut self, ok: bool, missing: bool, message: impl FnOnce() -> String) {
        if !ok {
            if missing {
                self.missing += 1;
            } else {
                self.duplicates += 1;
            }
            if self.violations.len() < 50 {
                self.violations.push(message());
            }
        }
    }
}

/// How long the audit gives the relay to publish outbox rows written after
/// the orders settled before it counts them as unpublished. A worker killed
/// after writing an event and before marking its record done handles the
/// record again once its dedup lease expires, and writes the event again
/// (same event id, deduplicated downstream), possibly after every order has
/// settled.
const OUTBOX_GRACE: Duration = Duration::from_secs(30);

/// The outbox rows left once the relay had [`OUTBOX_GRACE`] to publish them.
async fn outbox_left(db: &Db) -> anyhow::Result<i64> {
    let deadline = Instant::now() + OUTBOX_GRACE;
    loop {
        let depth = db.outbox_depth().await?;
        if depth == 0 || Instant::now() >= deadline {
            return Ok(depth);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Audits the database against the providers' `ledger`.
pub async fn audit(db: &Db, ledger: &Ledger) -> anyhow::Result<Audit> {
    let orders = view::all(db).await?;
    let points: Vec<(String, i64)> =
        on_db!(db, |p| sqlx::query_as("SELECT order_id, COUNT(*) FROM points_ledger GROUP BY order_id")
            .fetch_all(p)
            .await)?;
    let points: HashMap<String, i64> = points.into_iter().collect();
    let dead_letters: i64 = on_db!(db, |p| sqlx::query_scalar("SELECT COUNT(*) FROM error_log").fetch_one(p).await)?;
    let mut a = Audit {
        orders: orders.len() as u64,
        payments: Ledger::total(&ledger.charges),
        refunds: Ledger::total(&ledger.refunds),
        points_entries: points.values().sum::<i64>() as u64,
        emails: Ledger::total(&ledger.emails),
        sms: Ledger::total(&ledger.sms),
        dead_letters: dead_letters as u64,
        repeats: ledger.unexplained_repeats(),
        outbox_depth: outbox_left(db).await?,
        ..Audit::default()
    };
    let n = |map: &HashMap<String, u32>, id: &str| map.get(id).copied().unwrap_or(0);
    let mut confirmed_qty: HashMap<&str, i64> = HashMap::new();
    for o in &orders {
        let id = o.order_id.as_str();
        let (charges, refunds, emails, sms) =
            (n(&ledger.charges, id), n(&ledger.refunds, id), n(&ledger.emails, id), n(&ledger.sms, id));
        let pts = points.get(id).copied().unwrap_or(0);
        match o.status.as_str() {
            "CONFIRMED" => {
                a.confirmed += 1;
                *confirmed_qty.entry(&o.product_id).or_default() += o.quantity;
                for (what, count) in
                    [("payment", charges), ("email", emails), ("SMS", sms), ("points entry", pts as u32)]
                {
                    a.check(count == 1, count == 0, || format!("confirmed order {id} has {count} × {what}"));
                }
                a.check(refunds == 0, false, || format!("confirmed order {id} was refunded {refunds} ×"));
            }
            "CANCELLED" => {
                a.cancelled += 1;
                a.check(charges <= 1, false, || format!("cancelled order {id} was charged {charges} ×"));
                a.check(refunds == charges.min(1), refunds < charges, || {
                    format!("cancelled order {id}: charged {charges} ×, refunded {refunds} ×")
                });
                a.check(pts == 0, false, || format!("cancelled order {id} earned points"));
            }
            other => {
                a.in_flight += 1;
                a.check(false, true, || format!("order {id} is still {other}"));
            }
        }
        if o.status != "PENDING" && o.settled_at.is_none() {
            a.in_flight += 1;
            a.check(false, true, || format!("order {id} ({}) has follow-ups in flight", o.status));
        }
    }
    let known: std::collections::HashSet<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    for id in ledger.charges.keys().filter(|id| !known.contains(id.as_str())) {
        a.check(false, false, || format!("charge for unknown order {id}"));
    }
    for (product, initial, available) in db.stock().await? {
        a.stock_initial += initial;
        a.stock_left += available;
        let expected = initial - confirmed_qty.get(product.as_str()).copied().unwrap_or(0);
        a.check(available >= 0, false, || format!("stock of {product} is negative: {available}"));
        a.check(available == expected, available > expected, || {
            format!("stock of {product} is {available}, expected {initial} − confirmed = {expected}")
        });
    }
    let depth = a.outbox_depth;
    a.check(depth == 0, true, || format!("{depth} outbox rows unpublished"));
    Ok(a)
}
