//! What the runtime calls for each record: a handler, or a tower service when
//! layers wrap it.

use std::marker::PhantomData;
use std::task::{Context, Poll};

use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::handler::BoxHandlerFuture;
use crate::{Handler, HandlerError, Record};

/// A handler or service behind one erased type.
///
/// A bare handler is called directly: its future is already boxed, and
/// wrapping it in `BoxCloneSyncService` would box it a second time for every
/// record.
pub(crate) enum RecordService {
    Handler(Box<dyn ErasedHandler>),
    Tower(BoxCloneSyncService<Record, (), HandlerError>),
}

impl Clone for RecordService {
    fn clone(&self) -> Self {
        match self {
            RecordService::Handler(h) => RecordService::Handler(h.clone_box()),
            RecordService::Tower(s) => RecordService::Tower(s.clone()),
        }
    }
}

impl std::fmt::Debug for RecordService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordService::Handler(_) => "RecordService::Handler",
            RecordService::Tower(_) => "RecordService::Tower",
        })
    }
}

impl RecordService {
    pub(crate) fn handler<H: Handler<T>, T: 'static>(handler: H) -> Self {
        RecordService::Handler(Box::new(Erased(handler, PhantomData)))
    }

    /// The service as tower sees it, for wrapping in layers.
    pub(crate) fn into_tower(self) -> BoxCloneSyncService<Record, (), HandlerError> {
        match self {
            RecordService::Handler(h) => {
                let h: std::sync::Arc<dyn ErasedHandler> = std::sync::Arc::from(h);
                BoxCloneSyncService::new(tower::service_fn(move |r| h.call(r)))
            }
            RecordService::Tower(s) => s,
        }
    }

    /// Whether a call may start now (without waiting).
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        match self {
            RecordService::Handler(_) => Poll::Ready(Ok(())),
            RecordService::Tower(s) => s.poll_ready(cx),
        }
    }

    /// Waits until ready, then calls.
    pub(crate) async fn ready_call(&mut self, record: Record) -> Result<(), HandlerError> {
        match self {
            RecordService::Handler(h) => h.call(record).await,
            RecordService::Tower(s) => s.ready().await?.call(record).await,
        }
    }

    /// Whether the service may read records' headers: a handler whose
    /// extractors all leave them alone does not, anything else may.
    pub(crate) fn reads_headers(&self) -> bool {
        match self {
            RecordService::Handler(h) => h.reads_headers(),
            RecordService::Tower(_) => true,
        }
    }

    /// Calls; only after `poll_ready` returned ready.
    pub(crate) fn call(&mut self, record: Record) -> BoxHandlerFuture {
        match self {
            RecordService::Handler(h) => h.call(record),
            RecordService::Tower(s) => s.call(record),
        }
    }
}

pub(crate) trait ErasedHandler: Send + Sync {
    fn call(&self, record: Record) -> BoxHandlerFuture;
    fn clone_box(&self) -> Box<dyn ErasedHandler>;
    fn reads_headers(&self) -> bool;
}

struct Erased<H, T>(H, PhantomData<fn() -> T>);

impl<H: Handler<T>, T: 'static> ErasedHandler for Erased<H, T> {
    fn call(&self, record: Record) -> BoxHandlerFuture {
        self.0.clone().__call_boxed(record)
    }

    fn clone_box(&self) -> Box<dyn ErasedHandler> {
        Box::new(Erased(self.0.clone(), PhantomData))
    }

    fn reads_headers(&self) -> bool {
        self.0.__reads_headers()
    }
}
