#![doc = include_str!("docs/crate.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod consumer;
pub mod dedup;
mod error;
pub mod extract;
mod failure;
mod handler;
pub mod metrics;
pub mod middleware;
mod outcome;
mod producer;
mod provenance;
mod record;
mod record_span;
mod retry_policy;
mod shutdown;
#[cfg(feature = "trace-context")]
mod trace_context;

pub use self::consumer::{Consumer, ConsumerBuilder, Consumers, Health, HealthReport, Ordering, Stalled};
pub use self::error::Error;
pub use self::handler::{BoxHandlerFuture, Handler, HandlerService};
pub use self::outcome::{BoxError, Disposition, HandlerError, IntoOutcome, ResultExt};
pub use self::producer::{Delivered, Outgoing, Producer, ProducerBuilder};
pub use self::record::{Header, Record, RecordBuilder};
pub use self::shutdown::shutdown_signal;

/// Turns an `async fn` into a handler that knows its topics and group.
///
/// ```no_run
/// use kafka_handler::{extract::Json, handler, Consumer, HandlerError};
/// # #[derive(serde::Deserialize)] struct OrderCreated { quantity: u32 }
///
/// #[handler(topic = "order.created", group = "inventory")]
/// async fn reserve_stock(Json(order): Json<OrderCreated>) -> Result<(), HandlerError> {
///     // decrease stock …
///     Ok(())
/// }
///
/// # async fn run() -> Result<(), kafka_handler::Error> {
/// // Topics and group come from the attribute.
/// Consumer::builder().from_env().handler(reserve_stock).build()?.run().await
/// # }
/// ```
///
/// The function stays callable as `reserve_stock::handle(..)`, for tests.
///
/// Arguments: `topic = "…"` (repeatable) or `topics = ["…", …]`, `group = "…"`,
/// where the event id is for [dedup] (`event_id = "field"` for a
/// payload field, or `event_id_header = "name"`; default the field `eventId`),
/// and `crate = "path"` when `kafka_handler` is renamed.
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use kafka_handler_macros::handler;

#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub mod mock;

#[cfg(feature = "endpoint")]
#[cfg_attr(docsrs, doc(cfg(feature = "endpoint")))]
pub mod endpoint;

#[doc = include_str!("docs/extending.md")]
pub mod extending {}

#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;

/// Not public API: used by code that `#[handler]` generates.
#[doc(hidden)]
pub mod __private {
    pub use crate::handler::BoxHandlerFuture;

    /// Topics and group declared by `#[handler(..)]`.
    #[derive(Clone, Copy, Debug)]
    pub struct Subscription {
        pub topics: &'static [&'static str],
        pub group: Option<&'static str>,
        pub event_id: Option<EventIdDecl>,
    }

    /// `event_id = ".."` or `event_id_header = ".."`.
    #[derive(Clone, Copy, Debug)]
    pub enum EventIdDecl {
        Field(&'static str),
        Header(&'static str),
    }

    impl Subscription {
        pub(crate) fn event_id(&self) -> Option<crate::dedup::EventIdSource> {
            self.event_id.map(|decl| match decl {
                EventIdDecl::Field(f) => crate::dedup::EventIdSource::field(f),
                EventIdDecl::Header(h) => crate::dedup::EventIdSource::header(h),
            })
        }
    }
}
