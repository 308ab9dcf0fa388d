//! Follow-up events a job has no use for, acknowledged before dedup.
//!
//! Every job but `analytics` reads `order.events`, and most want one or two
//! of its eleven kinds: `points` only `OrderConfirmed`, `inventory` only
//! `OrderCancelled`. Passed on, each of the others would cost a dedup claim
//! (a row in `processed_events`, or a Redis claim and done mark) and a
//! handler call that does nothing — at about six follow-up events per order,
//! most of the system's database work. The `eventType` header every event
//! carries names its kind; an event whose header names a kind the job
//! ignores is acknowledged at once. An event without the header, or with
//! one the job does not know, goes on to the handler, which decides from
//! the payload; a header that lies can only make its own event ignored.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use kafka_handler::Record;

/// Every kind of `order.events`.
const KINDS: [&str; 11] = [
    "StockReserved",
    "InventoryFailed",
    "StockReleased",
    "PaymentCompleted",
    "PaymentRefunded",
    "OrderConfirmed",
    "OrderCancelled",
    "RefundRequested",
    "PointsEarned",
    "NotificationSent",
    "StepFailed",
];

/// The kinds of `order.events` that `job` does nothing with.
pub fn ignored(job: &str) -> Arc<[&'static str]> {
    let handled: &[&str] = match job {
        "inventory" => &["OrderCancelled"],
        "payment" => &["RefundRequested"],
        "points" | "notification" => &["OrderConfirmed"],
        // What order-status emits itself changes nothing more.
        "order-status" => return Arc::from(["OrderConfirmed", "OrderCancelled", "RefundRequested"]),
        _ => return Arc::from([]),
    };
    KINDS.into_iter().filter(|k| !handled.contains(k)).collect()
}

/// Wraps a job's service: events of `topic` (by their origin, so retry
/// copies too) whose kind is in `ignored` are acknowledged without it.
#[derive(Clone, Debug)]
pub struct InterestLayer {
    pub topic: String,
    pub ignored: Arc<[&'static str]>,
}

impl<S> tower::Layer<S> for InterestLayer {
    type Service = Interest<S>;

    fn layer(&self, inner: S) -> Interest<S> {
        Interest { inner, layer: self.clone() }
    }
}

/// The service of [`InterestLayer`].
#[derive(Clone, Debug)]
pub struct Interest<S> {
    inner: S,
    layer: InterestLayer,
}

impl<S> Interest<S> {
    fn ignores(&self, record: &Record) -> bool {
        let Some(kind) = record.header("eventType").and_then(|v| std::str::from_utf8(v).ok()) else { return false };
        self.layer.ignored.contains(&kind) && super::origin(record) == self.layer.topic
    }
}

impl<S: tower::Service<Record, Response = ()>> tower::Service<Record> for Interest<S> {
    type Response = ();
    type Error = S::Error;
    type Future = Either<Ready<Result<(), S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, record: Record) -> Self::Future {
        if self.ignores(&record) { Either::Left(ready(Ok(()))) } else { Either::Right(self.inner.call(record)) }
    }
}

#[cfg(test)]
mod tests {
    use super::ignored;

    #[test]
    fn each_job_keeps_what_it_handles() {
        for (job, kept) in [
            ("inventory", "OrderCancelled"),
            ("payment", "RefundRequested"),
            ("points", "OrderConfirmed"),
            ("notification", "OrderConfirmed"),
            ("order-status", "StockReserved"),
        ] {
            assert!(!ignored(job).contains(&kept), "{job} must handle {kept}");
        }
        assert_eq!(ignored("inventory").len(), 10);
        assert!(ignored("analytics").is_empty() && ignored("dlt-monitor").is_empty());
    }
}
