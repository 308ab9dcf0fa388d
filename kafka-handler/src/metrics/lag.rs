//! Keeps the end offsets of paused partitions fresh.
//!
//! librdkafka's statistics report each partition's end (high watermark) as
//! its fetch responses last told it, so while back-pressure pauses a
//! partition its known end stands still and the lag would look frozen just
//! when it grows. A thread of its own asks the broker for the end of every
//! paused partition (and of any whose end is not known yet) every few
//! seconds; the polling thread never waits on the broker for metrics.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};

use super::observed::Observed;

/// How often the end offsets of partitions whose end is not known are
/// asked for; those of paused partitions, every [`PAUSED_EVERY`] ticks.
const TICK: Duration = Duration::from_secs(1);
const PAUSED_EVERY: u32 = 5;
const TIMEOUT: Duration = Duration::from_secs(2);

/// The refreshing thread; stopped and joined on drop.
#[derive(Debug)]
pub(crate) struct LagRefresh {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LagRefresh {
    pub(crate) fn start<C: ConsumerContext + 'static>(consumer: Arc<BaseConsumer<C>>, observed: Arc<Observed>) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("kafka-handler-lag:{}", observed.group))
            .spawn(move || {
                let mut tick = 0u32;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                    tick = tick.wrapping_add(1);
                    let stale: Vec<_> = observed
                        .snapshot()
                        .partitions
                        .iter()
                        .filter(|p| {
                            (p.paused && tick.is_multiple_of(PAUSED_EVERY))
                                || !observed.knows_high(&p.topic, p.partition)
                        })
                        .map(|p| (p.topic.clone(), p.partition))
                        .collect();
                    for (topic, partition) in stale {
                        if let Err(mpsc::TryRecvError::Disconnected) = stopped.try_recv() {
                            return;
                        }
                        match consumer.fetch_watermarks(&topic, partition, TIMEOUT) {
                            Ok((_, high)) => observed.high(topic, partition, high),
                            Err(e) => tracing::debug!(%topic, partition, error = %e, "could not query the end offset"),
                        }
                    }
                }
            })
            .ok();
        if thread.is_none() {
            tracing::warn!("could not start the lag thread; paused partitions' lag is not refreshed");
        }
        Self { stop: Some(stop), thread }
    }
}

impl Drop for LagRefresh {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
