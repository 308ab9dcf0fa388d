//! Several consumers in one process, run as one.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Consumer, Health};
use crate::Error;

/// Several consumers run under one shutdown signal, with one health report:
/// a service that handles several topics in several groups.
///
/// ```no_run
/// use kafka_handler::{Consumer, Consumers};
/// # async fn reserve_stock() {}
/// # async fn send_email() {}
/// # async fn run() -> Result<(), kafka_handler::Error> {
/// let inventory = Consumer::builder().from_env().group_id("inventory").topic("order.created").handler(reserve_stock);
/// let notification = Consumer::builder().from_env().group_id("notification").topic("order.events").handler(send_email);
/// let consumers = Consumers::new().with(inventory.build()?).with(notification.build()?);
/// let health = consumers.health(); // ready and live when each consumer is
/// # drop(health);
/// consumers.run().await // until Ctrl-C or SIGTERM, then each shuts down gracefully
/// # }
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct Consumers {
    consumers: Vec<Consumer>,
}

impl Consumers {
    /// No consumer yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a consumer.
    pub fn with(mut self, consumer: Consumer) -> Self {
        self.consumers.push(consumer);
        self
    }

    /// One health handle for all of them: ready and live when each is; the
    /// stalled partitions of each, with their group.
    pub fn health(&self) -> Health {
        self.consumers.iter().map(Consumer::health).collect()
    }

    /// Runs every consumer until Ctrl-C or SIGTERM, then shuts them down
    /// gracefully.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(crate::shutdown_signal()).await
    }

    /// Runs every consumer until `signal` completes, then shuts them all down
    /// gracefully, each as [`Consumer::run_until`] does. If one of them stops
    /// with an error, the others are shut down too and the first error is
    /// returned once all have stopped.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let (stop, stopping) = watch::channel(false);
        let mut running = JoinSet::new();
        for consumer in self.consumers {
            let mut stopping = stopping.clone();
            running.spawn(consumer.run_until(async move {
                let _ = stopping.wait_for(|&stop| stop).await;
            }));
        }
        tokio::pin!(signal);
        let mut first_error = None;
        loop {
            tokio::select! {
                () = &mut signal, if !*stop.borrow() => {
                    stop.send_replace(true);
                }
                stopped = running.join_next() => {
                    let Some(stopped) = stopped else { break };
                    let result = stopped.unwrap_or_else(|e| Err(Error::Runtime(format!("a consumer's task failed: {e}"))));
                    if let Err(e) = result {
                        tracing::error!(error = %e, "a consumer stopped; stopping the others");
                        first_error.get_or_insert(e);
                        stop.send_replace(true);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
