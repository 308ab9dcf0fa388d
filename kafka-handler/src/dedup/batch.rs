//! Gathers the store calls of all records in flight into batches, so that a
//! consumer with many records in flight pays one round trip per batch, not
//! per record.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use super::{Claim, DedupStore, Lease, StoreError};

/// Most store calls of one kind sent in one batch.
const MAX_BATCH: usize = 512;
/// Batches in flight at once.
const MAX_CONCURRENT: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
enum Op {
    Claim,
    Complete,
    Release,
}

type Reply = oneshot::Sender<Result<Claim, StoreError>>;

struct Request {
    op: Op,
    lease: Lease,
    reply: Reply,
}

/// The batching front of one [`DedupStore`].
pub(crate) struct Batcher {
    store: Arc<dyn DedupStore>,
    ttl: Duration,
    retention: Duration,
    queue: OnceLock<mpsc::UnboundedSender<Request>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("ttl", &self.ttl).field("retention", &self.retention).finish_non_exhaustive()
    }
}

impl Batcher {
    pub(crate) fn new(store: Arc<dyn DedupStore>, ttl: Duration, retention: Duration) -> Self {
        Self { store, ttl, retention, queue: OnceLock::new() }
    }

    pub(crate) async fn claim(&self, lease: Lease) -> Result<Claim, StoreError> {
        self.call(Op::Claim, lease).await
    }

    pub(crate) async fn complete(&self, lease: Lease) -> Result<(), StoreError> {
        self.call(Op::Complete, lease).await.map(drop)
    }

    pub(crate) async fn release(&self, lease: Lease) -> Result<(), StoreError> {
        self.call(Op::Release, lease).await.map(drop)
    }

    async fn call(&self, op: Op, lease: Lease) -> Result<Claim, StoreError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(drive(self.store.clone(), self.ttl, self.retention, rx));
            tx
        });
        queue.send(Request { op, lease, reply }).map_err(|_| StoreError::new("the dedup batcher stopped"))?;
        answer.await.map_err(|_| StoreError::new("the dedup batcher stopped"))?
    }
}

async fn drive(
    store: Arc<dyn DedupStore>,
    ttl: Duration,
    retention: Duration,
    mut queue: mpsc::UnboundedReceiver<Request>,
) {
    // The batches in flight run in this task, not one task each: a batch
    // costs no spawn and no hand-over between tasks.
    let mut running = FuturesUnordered::new();
    let mut taken = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            biased;
            Some(()) = running.next(), if !running.is_empty() => {}
            // Take requests only while a slot is free: they pile up meanwhile
            // and make the next batch larger.
            n = queue.recv_many(&mut taken, MAX_BATCH), if running.len() < MAX_CONCURRENT => {
                if n == 0 {
                    break;
                }
                let mut batches: [Batch; 3] = Default::default();
                for request in taken.drain(..) {
                    let batch = &mut batches[request.op as usize];
                    batch.leases.push(request.lease);
                    batch.replies.push(request.reply);
                }
                let store = &*store;
                running.push(async move {
                    let [claims, completes, releases] = batches;
                    tokio::join!(
                        answer(&claims.leases, claims.replies, |l| store.claim(l, ttl)),
                        answer(&completes.leases, completes.replies, |l| async {
                            store.complete(l, retention).await.map(|()| vec![Claim::Done; l.len()])
                        }),
                        answer(&releases.leases, releases.replies, |l| async {
                            store.release(l).await.map(|()| vec![Claim::Done; l.len()])
                        }),
                    );
                });
            }
        }
    }
    while running.next().await.is_some() {}
}

/// Calls of one kind, with whom to answer.
#[derive(Default)]
struct Batch {
    leases: Vec<Lease>,
    replies: Vec<Reply>,
}

/// Makes one store call for the batch and answers every caller.
async fn answer<'a, F, Fut>(leases: &'a [Lease], replies: Vec<Reply>, call: F)
where
    F: FnOnce(&'a [Lease]) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Claim>, StoreError>>,
{
    if leases.is_empty() {
        return;
    }
    match call(leases).await {
        Ok(claims) if claims.len() == replies.len() => {
            for (reply, claim) in replies.into_iter().zip(claims) {
                let _ = reply.send(Ok(claim));
            }
        }
        Ok(claims) => {
            let message = format!("the store answered {} of {} claims", claims.len(), replies.len());
            for reply in replies {
                let _ = reply.send(Err(StoreError::new(message.clone())));
            }
        }
        Err(error) => {
            let message = error.0.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::new(message.clone())));
            }
        }
    }
}
