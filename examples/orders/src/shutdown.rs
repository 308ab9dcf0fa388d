//! One shutdown signal for every task of a process.

use tokio::sync::watch;

/// Clonable; [`wait`](Shutdown::wait) returns once [`trigger`](Shutdown::trigger)
/// was called on any clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        let (tx, rx) = watch::channel(false);
        Self { tx: std::sync::Arc::new(tx), rx }
    }
}

impl Shutdown {
    /// Asks every task to stop.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// Whether a stop was asked for.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits for the stop.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Triggers on Ctrl-C or SIGTERM.
    pub fn on_signal(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            kafka_handler::shutdown_signal().await;
            this.trigger();
        });
    }
}
