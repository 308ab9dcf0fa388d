//! The polling thread: fetches records, dispatches them, stores finished offsets.
//!
//! It polls continuously, also while handlers run for a long time or fetching
//! is paused, so the consumer never exceeds `max.poll.interval.ms` and
//! rebalances are served promptly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;

use super::RuntimeContext;
use super::fetch::{FetchQueue, Fetched, Polled};
use crate::Error;

const IDLE_POLL: Duration = Duration::from_millis(100);
const BUSY_POLL: Duration = Duration::from_millis(5);
const MAX_BATCH: usize = 1024;

pub(super) fn run(
    consumer: &Arc<BaseConsumer<RuntimeContext>>,
    stop: &AtomicBool,
    shutdown_timeout: Duration,
) -> Result<(), Error> {
    let context = consumer.context();
    context.wake.register();
    // Records of assigned partitions arrive here; the main queue keeps the
    // rest (see `fetch`). Installed before the first rebalance is served,
    // removed (and destroyed) before the consumer is.
    let fetch = FetchQueue::new(Arc::clone(consumer), Arc::clone(&context.wake))
        .map(Arc::new)
        .ok_or_else(|| Error::Runtime("the consumer has no group queue".into()))?;
    let _installed = context.install_fetch(Arc::clone(&fetch));
    // Declared after `fetch`, so dropped (and joined) before it.
    let reaper = Reaper::start(format!("kafka-handler-free:{}", context.observed.group))
        .map_err(|e| Error::Runtime(format!("could not start the thread that frees records: {e}")))?;
    let mut polled = Vec::with_capacity(MAX_BATCH);
    let mut fetched = Vec::with_capacity(MAX_BATCH);
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
        // The main queue first: rebalances (their callbacks run inside `poll`
        // and lock the scheduler, so it is not locked here), errors, and any
        // record of a partition not forwarded.
        let mut served = false;
        while let Some(result) = consumer.poll(Duration::ZERO) {
            served = true;
            match result {
                Ok(message) => polled.push(message),
                Err(e) => consumer_error(consumer, e)?,
            }
            if polled.len() >= room {
                break;
            }
        }
        if !polled.is_empty() {
            context.scheduler().dispatch(polled.iter().map(Polled::borrowed));
            polled.clear();
        }
        // Then what librdkafka already has of the assigned partitions, up to
        // the room left, dispatched under one lock.
        fetch.take(room, &mut fetched);
        if fetched.is_empty() {
            // Nothing on either queue: wait until librdkafka has something
            // (it unparks this thread) or the scheduler has work.
            if !served && fetch.is_idle() {
                std::thread::park_timeout(timeout);
            }
            continue;
        }
        for message in &fetched {
            if let Some(e) = message.view().error() {
                consumer_error(consumer, e)?;
            }
        }
        context.scheduler().dispatch(fetched.iter().map(Fetched::view).filter(|m| m.error().is_none()));
        reaper.free(&mut fetched);
    }
    shutdown(consumer, shutdown_timeout);
    Ok(())
}

/// Frees taken records on a thread of its own. Freeing a record takes the
/// lock of the malloc arena it was allocated in: that of the librdkafka
/// thread that fetched it, which is allocating the next records in it. The
/// polling thread used to wait there about 2,500 times per million records.
#[derive(Debug)]
struct Reaper {
    tx: Option<mpsc::Sender<Vec<Fetched>>>,
    /// Emptied vectors, to be filled again.
    spare: mpsc::Receiver<Vec<Fetched>>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    fn start(name: String) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Vec<Fetched>>();
        let (spare_tx, spare) = mpsc::channel();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            for mut batch in rx {
                batch.clear();
                let _ = spare_tx.send(batch);
            }
        })?;
        Ok(Reaper { tx: Some(tx), spare, thread: Some(thread) })
    }

    /// Hands `batch`'s records over to be freed, leaving it empty.
    fn free(&self, batch: &mut Vec<Fetched>) {
        let empty = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(batch.capacity()));
        let full = std::mem::replace(batch, empty);
        if let Some(tx) = &self.tx {
            let _ = tx.send(full);
        }
    }
}

impl Drop for Reaper {
    /// Waits until every record handed over is freed: before the fetch
    /// queue and the consumer go.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Logs a consumer error; fails if it is fatal.
fn consumer_error(consumer: &BaseConsumer<RuntimeContext>, e: KafkaError) -> Result<(), Error> {
    if let Some((code, reason)) = consumer.client().fatal_error() {
        tracing::error!(?code, %reason, "fatal consumer error");
        return Err(Error::Kafka(e));
    }
    tracing::warn!(error = %e, "consumer error");
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
