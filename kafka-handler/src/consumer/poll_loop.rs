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

pub(super) fn run(
    consumer: &BaseConsumer<RuntimeContext>,
    stop: &AtomicBool,
    shutdown_timeout: Duration,
) -> Result<(), Error> {
    let context = consumer.context();
    loop {
        let timeout = {
            let mut scheduler = context.scheduler();
            scheduler.drain_completions();
            scheduler.store_offsets(consumer);
            scheduler.apply_backpressure(consumer);
            if scheduler.in_flight() > 0 { BUSY_POLL } else { IDLE_POLL }
        };
        if stop.load(Ordering::Acquire) {
            break;
        }
        match consumer.poll(timeout) {
            Some(Ok(message)) => context.scheduler().dispatch(&message),
            Some(Err(e)) => {
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    tracing::error!(?code, %reason, "fatal consumer error");
                    return Err(Error::Kafka(e));
                }
                tracing::warn!(error = %e, "consumer error");
            }
            None => {}
        }
    }
    shutdown(consumer, shutdown_timeout);
    Ok(())
}

/// Stops fetching, lets in-flight records finish, commits, and unsubscribes so
/// the group rebalances at once instead of waiting for the session timeout.
fn shutdown(consumer: &BaseConsumer<RuntimeContext>, timeout: Duration) {
    let mut scheduler = consumer.context().scheduler();
    scheduler.set_paused(consumer, true);
    let assigned = scheduler.assigned();
    tracing::info!(in_flight = scheduler.in_flight(), "waiting for in-flight records");
    scheduler.revoke(consumer, &assigned, Instant::now() + timeout);
    drop(scheduler);
    consumer.unsubscribe();
}
