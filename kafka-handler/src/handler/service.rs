use std::fmt;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use super::Handler;
use crate::{HandlerError, Record};

/// A [`Handler`] as a [`tower::Service`], made by [`Handler::into_service`].
pub struct HandlerService<H, T> {
    handler: H,
    _marker: PhantomData<fn() -> T>,
}

impl<H, T> HandlerService<H, T> {
    pub(crate) fn new(handler: H) -> Self {
        Self { handler, _marker: PhantomData }
    }
}

impl<H: Clone, T> Clone for HandlerService<H, T> {
    fn clone(&self) -> Self {
        Self::new(self.handler.clone())
    }
}

impl<H, T> fmt::Debug for HandlerService<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerService").finish_non_exhaustive()
    }
}

impl<H: Handler<T>, T> tower::Service<Record> for HandlerService<H, T> {
    type Response = ();
    type Error = HandlerError;
    type Future = H::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, record: Record) -> Self::Future {
        self.handler.clone().call(record)
    }
}
