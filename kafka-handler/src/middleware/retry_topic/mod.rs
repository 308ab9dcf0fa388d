//! Non-blocking retries through retry topics.
//!
//! A record that fails retryably is published to its group's retry topic of
//! the next level, `<topic>.<group>.retry.<level>`, with the time it is due
//! in a header, and the source partition moves on at once. The consumer also
//! reads its retry topics (the [`ConsumerBuilder::retry_topics`] builder
//! method subscribes to them). A record read from one before it is due is not
//! handed to a handler: the polling thread holds it and dispatches it when it
//! falls due, and a retry partition holding its share of the buffer is paused
//! until its records fall due. No handler sleeps, so
//! nothing else waits for it. Each level has one delay, so records of a retry
//! partition fall due in order.
//!
//! Retry topics belong to one consumer group: a failure in `inventory` never
//! makes `notification` handle the record again. After the last level the
//! failure becomes a permanent [`RetriesExhausted`],
//! for the [`DeadLetterLayer`](super::DeadLetterLayer), which writes it to
//! `<original topic>.dlt` with the original provenance.
//!
//! [`ConsumerBuilder::retry_topics`]: crate::ConsumerBuilder::retry_topics
//!
//! ## Ordered retries
//!
//! By default a failing event leaves its key's later events behind: they are
//! handled while it waits in a retry topic (Spring's and Karafka's retry
//! topics do the same). With [`RetryTopicLayer::ordered`], while an event of
//! a key is in the retry path, later events of that key are parked behind
//! it: instead of being handled, each is sent at once to the level the
//! failing event is at, behind it (same key, so the same partition of the
//! retry topic), and follows it up the levels, sharing its remaining
//! retries. When the last of them is handled or dead-lettered, the key flows
//! normally again.
//!
//! The trade-off: one failing event delays every later event of its key by
//! the retry delays, and if it ends in the dead-letter topic, the events
//! parked behind it are still handled after it. The consumer remembers which
//! keys are parked in memory, so order holds while one consumer owns a key's
//! source partition and its retry partitions (a single instance, or the
//! `range` assignor, which gives partition *n* of the source and of every
//! retry topic, all created with the same partition count, to one member).
//! A rebalance that separates them, or a restart, forgets which keys were
//! parked, and events of those keys may then overtake each other once.
//!
//! | header | value |
//! | --- | --- |
//! | `retry.attempt` | the attempt the record is due for (2 for the first retry) |
//! | `retry.due` | when, ms since the Unix epoch |
//! | `retry.original.topic`, `…partition`, `…offset`, `…timestamp` | where the record first was |
//! | `retry.first.error`, `retry.last.error` | the first and the latest failure |
//!
//! These headers are believed only on a record of the group's own retry and
//! re-drive topics, for the source topic `retry.original.topic` names. On any
//! other topic anyone may have written them, so there they are just data: the
//! record is attempt 1, handled at once, and its origin is where it is (see
//! [`Origin`](crate::extract::Origin)). Such a record sent to a retry topic
//! carries the runtime's `retry.*` headers only, none of its own.

mod layer;
mod ordered;

use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tower::Service;

pub use self::layer::RetryTopicLayer;
use super::RetriesExhausted;
use crate::extract::{Attempt, Group, Origin};
use crate::handler::BoxHandlerFuture;
use crate::outcome::BoxError;
use crate::provenance;
use crate::{Disposition, HandlerError, Outgoing, Record};

/// Header names used on retry topics.
pub mod headers {
    pub use crate::provenance::headers::{
        ATTEMPT, DUE, FIRST_ERROR, LAST_ERROR, ORIGINAL_OFFSET, ORIGINAL_PARTITION, ORIGINAL_TIMESTAMP, ORIGINAL_TOPIC,
    };
}

pub(crate) use crate::provenance::retry_topic;

/// Sends retryable failures to retry topics, and handles records from them
/// when they are due.
#[derive(Clone, Debug)]
pub struct RetryTopic<S> {
    inner: S,
    config: RetryTopicLayer,
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl<S> Service<Record> for RetryTopic<S>
where
    S: Service<Record, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxHandlerFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(HandlerError::from_error)
    }

    fn call(&mut self, mut record: Record) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let attempt = provenance::attempt(&record);
            let level = provenance::retry_level(&record);
            let group = record.lookup::<Group>().map(|g| g.0.to_string()).unwrap_or_default();
            let origin = Origin::of(&record);
            let parking = config.parking.as_deref().zip(record.key().map(<[u8]>::to_vec));
            if let Some((parking, key)) = &parking
                && let Some(head) = parking.parked_at(&origin.topic, key, level)
            {
                // An earlier event of this key is further up: follow it.
                let parked = HandlerError::retryable("parked behind an earlier event of its key");
                let out = retry_record(&record, &origin, &group, head, attempt, now_millis(), &parked);
                send(&config, &record, out, attempt, head, &parked).await?;
                parking.entered(&origin.topic, key, head, level == 0);
                return Ok(());
            }
            // The consumer holds a record of a retry topic until it is due
            // (see `retry.due`): it arrives here on time.
            record.extensions_mut().insert(Attempt(attempt));
            let left = || {
                if let Some((parking, key)) = &parking
                    && level > 0
                {
                    parking.left(&origin.topic, key);
                }
            };
            let Err(error) = super::call_inner(&mut inner, record.clone()).await else {
                left();
                return Ok(());
            };
            // In-place retries inside may have made more attempts.
            let (last_attempt, error) = RetriesExhausted::resume(error, attempt);
            let delay = match error.disposition() {
                Disposition::Permanent => {
                    left();
                    return Err(error);
                }
                Disposition::Retryable => None,
                Disposition::RetryAfter(d) => Some(d),
            };
            let next = level + 1;
            let Some(&level_delay) = config.delays.get(next - 1) else {
                left();
                return Err(RetriesExhausted::after(last_attempt, error));
            };
            let due = now_millis() + delay.unwrap_or(level_delay).max(level_delay).as_millis() as u64;
            let retry = retry_record(&record, &origin, &group, next, last_attempt + 1, due, &error);
            send(&config, &record, retry, last_attempt, next, &error).await?;
            crate::metrics::Meters::of(&record).retry(last_attempt + 1);
            if let Some((parking, key)) = &parking {
                parking.entered(&origin.topic, key, next, level == 0);
            }
            Ok(())
        })
    }
}

/// Writes `out` to a retry topic; the record is then finished here.
async fn send(
    config: &RetryTopicLayer,
    record: &Record,
    out: Outgoing,
    attempt: u32,
    level: usize,
    error: &HandlerError,
) -> Result<(), HandlerError> {
    let topic = out.topic().to_owned();
    match config.producer.send(out).await {
        Ok(_) => {
            crate::dedup::Deferred::mark(record);
            crate::record_span::forwarded(&topic, "retryable", error);
            tracing::info!(topic = record.topic(), partition = record.partition(), offset = record.offset(),
                attempt, level, error = %error, "record sent to a retry topic");
            Ok(())
        }
        Err(e) => Err(HandlerError::retryable(format!("could not write to the retry topic: {e}"))),
    }
}

/// The record as the retry topic of `level` gets it: its key, value and
/// headers, where it first was and the first failure (kept from a record of
/// the group's own retry path, else the runtime's own), the attempt it is due
/// for and when.
fn retry_record(
    record: &Record,
    origin: &Origin,
    group: &str,
    level: usize,
    next_attempt: u32,
    due: u64,
    error: &HandlerError,
) -> Outgoing {
    let topic = retry_topic(&origin.topic, group, level);
    let mut out = Outgoing::from_parts(
        topic,
        record.key().map(Bytes::copy_from_slice),
        record.payload().map(Bytes::copy_from_slice),
    );
    let trusted = provenance::trusted(record);
    let ours = [headers::ATTEMPT, headers::DUE, headers::LAST_ERROR];
    for h in provenance::carried(record, trusted).filter(|h| !ours.contains(&h.name.as_str())) {
        out = out.raw_header(h.name.clone(), h.value.clone());
    }
    if !trusted {
        out = out
            .header(headers::ORIGINAL_TOPIC, origin.topic.clone())
            .header(headers::ORIGINAL_PARTITION, origin.partition.to_string())
            .header(headers::ORIGINAL_OFFSET, origin.offset.to_string());
        if let Some(ts) = origin.timestamp {
            out = out.header(headers::ORIGINAL_TIMESTAMP, ts.to_string());
        }
    }
    if !trusted || record.header(headers::FIRST_ERROR).is_none() {
        out = out.header(headers::FIRST_ERROR, error.source_error().to_string());
    }
    out.header(headers::ATTEMPT, next_attempt.to_string())
        .header(headers::DUE, due.to_string())
        .header(headers::LAST_ERROR, error.source_error().to_string())
}
