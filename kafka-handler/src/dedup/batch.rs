//! Gathers the store calls of all records in flight into batches, so that a
//! consumer with many records in flight pays one round trip per batch, not
//! per record.
//!
//! There is no batching task: a record whose call finds a free batch slot
//! makes the store call itself, for its own request and every one queued
//! meanwhile, within its own poll. A store that answers at once (in memory)
//! so answers within the record's first poll, with no task hop and no
//! wake-up; a record that arrives while every slot is busy queues, and the
//! batch that frees a slot hands what queued meanwhile to a task of its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Claim, DedupStore, Lease, StoreError};

/// Most store calls sent in one batch.
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
pub(crate) struct Batcher(Arc<Shared>);

struct Shared {
    store: Arc<dyn DedupStore>,
    ttl: Duration,
    retention: Duration,
    state: Mutex<Queue>,
}

/// Requests not yet taken into a batch, and the batches running.
#[derive(Default)]
struct Queue {
    waiting: Vec<Request>,
    running: usize,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("ttl", &self.0.ttl)
            .field("retention", &self.0.retention)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    pub(crate) fn new(store: Arc<dyn DedupStore>, ttl: Duration, retention: Duration) -> Self {
        Self(Arc::new(Shared { store, ttl, retention, state: Mutex::default() }))
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
        let (taken, mut answer) = match self.0.enqueue(op, lease) {
            Enqueued::Alone(op, lease) => {
                let _slot = Slot(self.0.clone());
                return self.0.single(op, lease).await;
            }
            Enqueued::Queued(taken, answer) => (taken, answer),
        };
        if let Some(batch) = taken {
            // Our own request is in the batch: answered when it returns.
            let slot = Slot(self.0.clone());
            self.0.run(batch).await;
            drop(slot);
            if let Ok(result) = answer.try_recv() {
                return result;
            }
        }
        answer.await.map_err(|_| StoreError::new("the dedup batch was dropped"))?
    }
}

/// What [`Shared::enqueue`] did with a request.
enum Enqueued {
    /// Nobody waits and a slot was free: it is taken, for this request alone.
    Alone(Op, Lease),
    /// Queued; with a batch to run, if a slot was free.
    Queued(Option<Vec<Request>>, oneshot::Receiver<Result<Claim, StoreError>>),
}

impl Shared {
    fn enqueue(&self, op: Op, lease: Lease) -> Enqueued {
        let mut queue = self.lock();
        if queue.waiting.is_empty() && queue.running < MAX_CONCURRENT {
            // A batch of one, without the queue or a reply.
            queue.running += 1;
            return Enqueued::Alone(op, lease);
        }
        let (reply, answer) = oneshot::channel();
        queue.waiting.push(Request { op, lease, reply });
        Enqueued::Queued(queue.take(), answer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes the store call for one request alone.
    async fn single(&self, op: Op, lease: Lease) -> Result<Claim, StoreError> {
        let leases = std::slice::from_ref(&lease);
        match op {
            Op::Claim => match self.store.claim(leases, self.ttl).await?.as_slice() {
                [claim] => Ok(*claim),
                claims => Err(StoreError::new(format!("the store answered {} of 1 claims", claims.len()))),
            },
            Op::Complete => self.store.complete(leases, self.retention).await.map(|()| Claim::Done),
            Op::Release => self.store.release(leases).await.map(|()| Claim::Done),
        }
    }

    /// Makes the store calls of one batch and answers every caller.
    async fn run(&self, taken: Vec<Request>) {
        let mut batches: [Batch; 3] = Default::default();
        for request in taken {
            let batch = &mut batches[request.op as usize];
            batch.leases.push(request.lease);
            batch.replies.push(request.reply);
        }
        let [claims, completes, releases] = batches;
        let (store, ttl, retention) = (&*self.store, self.ttl, self.retention);
        tokio::join!(
            answer(&claims.leases, claims.replies, |l| store.claim(l, ttl)),
            answer(&completes.leases, completes.replies, |l| async {
                store.complete(l, retention).await.map(|()| vec![Claim::Done; l.len()])
            }),
            answer(&releases.leases, releases.replies, |l| async {
                store.release(l).await.map(|()| vec![Claim::Done; l.len()])
            }),
        );
    }
}

impl Queue {
    /// Takes a batch if a slot is free and someone waits.
    fn take(&mut self) -> Option<Vec<Request>> {
        if self.running >= MAX_CONCURRENT || self.waiting.is_empty() {
            return None;
        }
        self.running += 1;
        // The oldest go first.
        let batch = if self.waiting.len() <= MAX_BATCH {
            std::mem::take(&mut self.waiting)
        } else {
            self.waiting.drain(..MAX_BATCH).collect()
        };
        Some(batch)
    }
}

/// One running batch's slot: freed when the batch returns or is dropped,
/// and then what queued meanwhile goes on in a task of its own.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        let next = {
            let mut queue = self.0.lock();
            queue.running -= 1;
            queue.take()
        };
        if let Some(batch) = next {
            let slot = Slot(self.0.clone());
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        slot.0.run(batch).await;
                        drop(slot);
                    });
                }
                // No runtime left: the callers' replies are dropped and they
                // see an error, as with a store that failed.
                Err(_) => drop((batch, slot)),
            }
        }
    }
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
