//! Starting a record on the polling thread.
//!
//! Many handlers finish without ever waiting (a cache update, a counter, a
//! filter), and handing each record to another thread costs more than
//! handling it. So when a record's lane is idle, the polling thread polls the
//! handler once: if it is done, the record is finished with no hand-off; if it
//! waits, the started call moves to a lane task and runs there. A handler
//! that turns out to burn CPU before its first wait is no longer started here,
//! so it cannot slow down polling.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::attempt::{Attempt, Started};
use super::service::RecordService;
use crate::record_span;
use crate::{Disposition, HandlerError, Record};

/// A first poll longer than this is slow.
const SLOW_POLL: Duration = Duration::from_micros(50);
/// Inline starts stop when most first polls of a window of this many are
/// slow. A majority, not an average: a thread preempted now and then on a busy
/// machine must not look like a handler that computes.
const WINDOW: u32 = 256;

pub(crate) struct InlineStart {
    service: RecordService,
    pub(crate) enabled: bool,
    /// Polls timed and slow polls in the current window.
    polls: u32,
    slow: u32,
    /// Only every [`SAMPLE_EVERY`]th first poll is timed: reading the clock
    /// costs about as much as a trivial handler.
    untimed: u32,
}

const SAMPLE_EVERY: u32 = 8;

impl std::fmt::Debug for InlineStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineStart").field("enabled", &self.enabled).finish_non_exhaustive()
    }
}

impl InlineStart {
    pub(crate) fn new(service: RecordService) -> Self {
        Self { service, enabled: true, polls: 0, slow: 0, untimed: 0 }
    }

    /// Polls the handler for `record` once. `Ok` if it finished (with its
    /// permanent failure, if any); otherwise what a lane must take over,
    /// or the record untouched when no slot or the service is not ready.
    pub(crate) fn start(
        &mut self,
        in_flight: &Arc<Semaphore>,
        record: Record,
    ) -> Result<Option<HandlerError>, Result<Started, Record>> {
        // A call that finishes on its first poll never holds an in-flight
        // slot (taking and giving one back costs a lock); one that waits takes
        // its slot then.
        if in_flight.available_permits() == 0 {
            return Err(Err(record));
        }
        let mut cx = Context::from_waker(Waker::noop());
        if !matches!(self.service.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
            return Err(Err(record));
        }
        self.untimed = (self.untimed + 1) % SAMPLE_EVERY;
        let began = (self.untimed == 0).then(Instant::now);
        let span = record_span::open(&record);
        let entered = span.as_ref().map(record_span::Scope::enter);
        let mut call = self.service.call(record.clone());
        let polled = super::attempt::poll_once(&mut call, &mut cx);
        drop(entered);
        if let Some(began) = began {
            self.observe(began.elapsed());
        }
        let attempt = match polled {
            Poll::Pending => Attempt::Running(call, Arc::clone(in_flight).try_acquire_owned().ok(), Instant::now()),
            Poll::Ready(Ok(())) => return Ok(finished(&span, Ok(()))),
            Poll::Ready(Err(error)) if error.disposition() == Disposition::Permanent => {
                return Ok(finished(&span, Err(error)));
            }
            Poll::Ready(Err(error)) => Attempt::Failed(error),
        };
        Err(Ok(Started { record, attempt, span }))
    }

    fn observe(&mut self, took: Duration) {
        self.polls += 1;
        self.slow += u32::from(took > SLOW_POLL);
        if self.polls < WINDOW {
            return;
        }
        if self.slow > WINDOW / 2 {
            self.enabled = false;
            tracing::info!(
                slow_first_polls = self.slow,
                of = self.polls,
                "the handler computes before it waits; starting records on worker threads from now on"
            );
        }
        (self.polls, self.slow) = (0, 0);
    }
}

/// A record finished on its first poll: closes its span.
fn finished(span: &Option<record_span::Scope>, result: Result<(), HandlerError>) -> Option<HandlerError> {
    if let Some(span) = span {
        span.close(&result);
    }
    result.err()
}
