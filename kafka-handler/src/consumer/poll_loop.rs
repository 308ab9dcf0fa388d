//! The polling thread: fetches records, dispatches them, stores finished offsets.
//!
//! It polls continuously, also while handlers run for a long time or fetching
//! is paused, so the consumer never exceeds `max.poll.interval.ms` and
//! rebalances are served promptly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};

use super::RuntimeContext;
use crate::Error;

const IDLE_POLL: Duration = Duration::from_millis(100);
const BUSY_POLL: Duration = Duration::from_millis(5);
const MAX_BATCH: usize = 1024;

pub(super) fn run(
    consumer: &BaseConsumer<RuntimeContext>,
    stop: &AtomicBool,
    shutdown_timeout: Duration,
) -> Result<(), Error> {
    let context = consumer.context();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let (timeout, room) = {
            let mut scheduler = context.scheduler();
            scheduler.drain_completions();
            scheduler.store_offsets(consumer);
            #[cfg(feature = "retry-topic")]
            scheduler.dispatch_due();
            scheduler.apply_backpressure(consumer);
            scheduler.observe(consumer, &context.observed);
            #[cfg_attr(not(feature = "retry-topic"), allow(unused_mut))]
            let mut timeout = if scheduler.in_flight() > 0 { BUSY_POLL } else { IDLE_POLL };
            #[cfg(feature = "retry-topic")]
            if let Some(due) = scheduler.next_due() {
                timeout = timeout.min(due.max(Duration::from_millis(1)));
            }
            (timeout, scheduler.capacity().clamp(1, MAX_BATCH))
        };
        if stop.load(Ordering::Acquire) {
            break;
        }
        // Take what librdkafka already has, up to the room left, and dispatch
        // it under one lock. The scheduler is not locked while polling:
        // rebalance callbacks run inside `poll` and need it.
        let mut next = consumer.poll(timeout);
        while let Some(result) = next {
            match result {
                Ok(message) => batch.push(message),
                Err(e) => {
                    if let Some((code, reason)) = consumer.client().fatal_error() {
                        tracing::error!(?code, %reason, "fatal consumer error");
                        return Err(Error::Kafka(e));
                    }
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
            }
            if batch.len() >= room {
                break;
            }
            next = consumer.poll(Duration::ZERO);
        }
        if !batch.is_empty() {
            context.scheduler().dispatch(&mut batch);
        }
    }
    shutdown(consumer, shutdown_timeout);
    Ok(())
}

/// Stops fetching, lets in-flight records finish, commits, and unsubscribes so
/// the group rebalances at once instead of waiting for the session timeout.
fn shutdown(consumer: &BaseConsumer<RuntimeContext>, timeout: Duration) {
    let mut scheduler = consumer.context().scheduler();
    scheduler.stop_fetching(consumer);
    let assigned = scheduler.assigned();
    tracing::info!(in_flight = scheduler.in_flight(), "waiting for in-flight records");
    scheduler.revoke(consumer, &assigned, Instant::now() + timeout);
    drop(scheduler);
    consumer.unsubscribe();
}
