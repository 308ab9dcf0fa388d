//! Non-blocking retries through retry topics.
//!
//! A record that fails retryably is published to its group's retry topic of
//! the next level, `<topic>.<group>.retry.<level>`, with the time it is due
//! in a header, and the source partition moves on at once. The consumer also
//! reads its retry topics (the [`ConsumerBuilder::retry_topics`] builder
//! method subscribes to them). A record read from one before it is due is not
//! handled: the runtime pauses that retry partition, rewinds it to the
//! record and resumes it when the record falls due, so nothing sleeps and
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
//! | header | value |
//! | --- | --- |
//! | `retry.attempt` | the attempt the record is due for (2 for the first retry) |
//! | `retry.due` | when, ms since the Unix epoch |
//! | `retry.original.topic`, `…partition`, `…offset`, `…timestamp` | where the record first was |
//! | `retry.first.error`, `retry.last.error` | the first and the latest failure |

mod layer;

use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tower::Service;

pub use self::layer::RetryTopicLayer;
use super::RetriesExhausted;
use crate::extract::{Attempt, Group};
use crate::handler::BoxHandlerFuture;
use crate::outcome::BoxError;
use crate::{Disposition, HandlerError, Outgoing, Record};

/// Header names used on retry topics.
pub mod headers {
    /// The attempt the record is due for.
    pub const ATTEMPT: &str = "retry.attempt";
    /// When it is due, ms since the Unix epoch.
    pub const DUE: &str = "retry.due";
    /// The topic it was first read from.
    pub const ORIGINAL_TOPIC: &str = "retry.original.topic";
    /// Its partition there.
    pub const ORIGINAL_PARTITION: &str = "retry.original.partition";
    /// Its offset there.
    pub const ORIGINAL_OFFSET: &str = "retry.original.offset";
    /// Its original timestamp.
    pub const ORIGINAL_TIMESTAMP: &str = "retry.original.timestamp";
    /// The first failure.
    pub const FIRST_ERROR: &str = "retry.first.error";
    /// The latest failure.
    pub const LAST_ERROR: &str = "retry.last.error";
}

/// Where a record read from a retry topic came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp: Option<i64>,
}

impl Origin {
    /// The record's original coordinates, from retry headers or the record itself.
    pub(crate) fn of(record: &Record) -> Self {
        let text = |h| record.header(h).and_then(|v| std::str::from_utf8(v).ok());
        match (text(headers::ORIGINAL_TOPIC), text(headers::ORIGINAL_PARTITION), text(headers::ORIGINAL_OFFSET)) {
            (Some(topic), Some(p), Some(o)) if p.parse::<i32>().is_ok() && o.parse::<i64>().is_ok() => Origin {
                topic: topic.to_owned(),
                partition: p.parse().unwrap_or_default(),
                offset: o.parse().unwrap_or_default(),
                timestamp: text(headers::ORIGINAL_TIMESTAMP).and_then(|t| t.parse().ok()),
            },
            _ => Origin {
                topic: record.topic().to_owned(),
                partition: record.partition(),
                offset: record.offset(),
                timestamp: record.timestamp(),
            },
        }
    }
}

/// The retry topic of `level` (1-based) for records of `topic` in `group`.
pub(crate) fn retry_topic(topic: &str, group: &str, level: usize) -> String {
    format!("{topic}.{group}.retry.{level}")
}

/// Sends retryable failures to retry topics, and handles records from them
/// when they are due.
#[derive(Clone, Debug)]
pub struct RetryTopic<S> {
    inner: S,
    config: RetryTopicLayer,
}

fn parsed_header<T: std::str::FromStr>(record: &Record, name: &str) -> Option<T> {
    record.header(name).and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse().ok())
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
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

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut record: Record) -> Self::Future {
        let mut inner = self.inner.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let attempt: u32 = parsed_header(&record, headers::ATTEMPT).unwrap_or(1);
            if let Some(due) = parsed_header::<i64>(&record, headers::DUE) {
                let wait = due - now_millis();
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
            }
            record.extensions_mut().insert(Attempt(attempt));
            let Err(error) = super::call_inner(&mut inner, record.clone()).await else {
                return Ok(());
            };
            let delay = match error.disposition() {
                Disposition::Permanent => return Err(error),
                Disposition::Retryable => None,
                Disposition::RetryAfter(d) => Some(d),
            };
            let level = attempt as usize;
            let Some(&level_delay) = config.delays.get(level - 1) else {
                return Err(HandlerError::permanent(RetriesExhausted { attempts: attempt, last: error }));
            };
            let group = record.lookup::<Group>().map(|g| g.0.to_string()).unwrap_or_default();
            let origin = Origin::of(&record);
            let due = now_millis() + delay.unwrap_or(level_delay).max(level_delay).as_millis() as i64;
            let retry = retry_record(&record, &origin, &group, level, attempt + 1, due, &error);
            match config.producer.send(retry).await {
                Ok(_) => {
                    crate::dedup::Deferred::mark(&record);
                    tracing::info!(topic = record.topic(), partition = record.partition(), offset = record.offset(),
                        attempt, level, error = %error, "record sent to a retry topic");
                    Ok(())
                }
                Err(e) => Err(HandlerError::retryable(format!("could not write to the retry topic: {e}"))),
            }
        })
    }
}

fn retry_record(
    record: &Record,
    origin: &Origin,
    group: &str,
    level: usize,
    next_attempt: u32,
    due: i64,
    error: &HandlerError,
) -> Outgoing {
    let topic = retry_topic(&origin.topic, group, level);
    let mut out = Outgoing::from_parts(
        topic,
        record.key().map(Bytes::copy_from_slice),
        record.payload().map(Bytes::copy_from_slice),
    );
    let ours = [headers::ATTEMPT, headers::DUE, headers::LAST_ERROR];
    for h in record.headers().iter().filter(|h| !ours.contains(&h.name.as_str())) {
        out = out.raw_header(h.name.clone(), h.value.clone());
    }
    if record.header(headers::ORIGINAL_TOPIC).is_none() {
        out = out
            .header(headers::ORIGINAL_TOPIC, origin.topic.clone())
            .header(headers::ORIGINAL_PARTITION, origin.partition.to_string())
            .header(headers::ORIGINAL_OFFSET, origin.offset.to_string())
            .header(headers::FIRST_ERROR, error.source_error().to_string());
        if let Some(ts) = origin.timestamp {
            out = out.header(headers::ORIGINAL_TIMESTAMP, ts.to_string());
        }
    }
    out.header(headers::ATTEMPT, next_attempt.to_string())
        .header(headers::DUE, due.to_string())
        .header(headers::LAST_ERROR, error.source_error().to_string())
}
