//! Dedup by event id: each event handled once per consumer group.
//!
//! For each record: read its event id (missing or malformed: a permanent
//! failure, so it goes to the dead-letter topic with the reason); claim it
//! in the store; if the event is done already, acknowledge the record
//! without calling the handler; if another consumer holds the claim (the old
//! owner after a rebalance), wait and claim again until it is done or its
//! lease expires. After the handler succeeded, mark the event done; after it
//! failed, or handed the record to a retry topic, release the claim so the
//! next attempt can run.
//!
//! The store failing never lets a record through unchecked: claims and done
//! marks are retried with backoff until the store answers, holding the
//! record, so its partition fills up and is paused, and resumes by itself.
//!
//! In [`ConsumerBuilder::dedup`](crate::ConsumerBuilder::dedup) the layer sits
//! inside the dead-letter layer and outside the retry layers.

mod layer;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use tower::Service;

pub use self::layer::DedupLayer;
use crate::dedup::{Batcher, Claim, DedupCounters, Deferred, EventId, EventIdSource, Lease, StoreError};
use crate::extract::Group;
use crate::handler::BoxHandlerFuture;
use crate::outcome::BoxError;
use crate::{HandlerError, Record};

/// Handles each event once per group; see [`DedupLayer`].
#[derive(Clone, Debug)]
pub struct Dedup<S> {
    inner: S,
    state: Arc<DedupState>,
}

/// What the clones of one [`Dedup`] share.
#[derive(Debug)]
struct DedupState {
    batcher: Batcher,
    source: EventIdSource,
    recheck: Duration,
    counters: Arc<DedupCounters>,
}

impl<S> Service<Record> for Dedup<S>
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
        // The service made ready is the one called; the clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let event_id = state.source.event_id(&record).map_err(HandlerError::permanent)?;
            let group = record.lookup::<Group>().ok_or_else(|| HandlerError::permanent("no consumer group"))?;
            let lease = Lease { group: group.0.clone(), event_id: event_id.clone(), owner: owner() };
            let (batcher, counters) = (&state.batcher, &*state.counters);
            let mut waited = false;
            loop {
                match until_ok(counters, "claim", || batcher.claim(lease.clone())).await {
                    Claim::Acquired => break,
                    Claim::Done => {
                        DedupCounters::add(&counters.hits, 1);
                        tracing::debug!(
                            event_id = &*event_id,
                            topic = record.topic(),
                            offset = record.offset(),
                            "event handled before: skipped"
                        );
                        return Ok(());
                    }
                    Claim::InProgress => {
                        if !std::mem::replace(&mut waited, true) {
                            DedupCounters::add(&counters.waits, 1);
                        }
                        tokio::time::sleep(state.recheck).await;
                    }
                }
            }
            DedupCounters::add(&counters.claimed, 1);
            let deferred = Deferred::default();
            record.extensions_mut().insert(EventId(event_id));
            record.extensions_mut().insert(deferred.clone());
            let call = async { inner.call(record).await.map_err(HandlerError::from_error) };
            let result = AssertUnwindSafe(call).catch_unwind().await;
            if matches!(result, Ok(Ok(()))) && !deferred.is_set() {
                until_ok(counters, "done mark", || batcher.complete(lease.clone())).await;
            } else if let Err(e) = batcher.release(lease.clone()).await {
                // The claim then runs out with its lease.
                DedupCounters::add(&counters.store_errors, 1);
                tracing::warn!(error = %e, event_id = &*lease.event_id, "could not release a dedup claim");
            }
            match result {
                Ok(outcome) => outcome,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

/// Retries a store call with backoff until it succeeds: a record is never
/// handled, nor finished, without its answer.
async fn until_ok<T, F, Fut>(counters: &DedupCounters, what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) => {
                DedupCounters::add(&counters.store_errors, 1);
                tracing::warn!(error = %e, retry_in = ?delay, "dedup {what} failed; the record waits");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A token unique to one claim: this process's random id and a counter.
fn owner() -> Arc<str> {
    use std::fmt::Write as _;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let process = PROCESS.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        format!("{:016x}-", h.finish())
    });
    // Written into a buffer on the stack: one allocation, the `Arc`'s own.
    let mut token = Token::default();
    token.0[..process.len()].copy_from_slice(process.as_bytes());
    token.1 = process.len();
    let _ = write!(token, "{}", NEXT.fetch_add(1, Relaxed));
    Arc::from(std::str::from_utf8(&token.0[..token.1]).unwrap_or_default())
}

/// Room for 17 bytes of process id and a counter of at most 20 digits.
struct Token([u8; 40], usize);

impl Default for Token {
    fn default() -> Self {
        Self([0; 40], 0)
    }
}

impl std::fmt::Write for Token {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.1 + s.len();
        self.0.get_mut(self.1..end).ok_or(std::fmt::Error)?.copy_from_slice(s.as_bytes());
        self.1 = end;
        Ok(())
    }
}
