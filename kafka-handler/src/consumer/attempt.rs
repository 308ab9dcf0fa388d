//! A record's first attempt, as the polling thread hands it to a lane.
//!
//! Both ways of starting a record know this module and nothing of each
//! other: [`inline`](super::inline) makes a [`Started`], a
//! [`lane`](super::lane) goes on with it.

use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::record_span::Scope;
use crate::handler::BoxHandlerFuture;
use crate::{HandlerError, Record};

/// A record whose first attempt the polling thread started and that did not
/// finish at once: the lane takes it over.
pub(crate) struct Started {
    pub(crate) record: Record,
    pub(crate) attempt: Attempt,
    /// The record's span or trace context, opened when its first attempt
    /// started.
    pub(crate) span: Option<Scope>,
}

pub(crate) enum Attempt {
    /// Still running, holding its in-flight slot (`None` if a lane took the
    /// last slot after the first poll: the call then waits for one before it
    /// goes on); waiting since the instant.
    Running(BoxHandlerFuture, Option<OwnedSemaphorePermit>, Instant),
    /// Failed with a retryable error.
    Failed(HandlerError),
}
