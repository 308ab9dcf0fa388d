//! The `#[handler(..)]` attribute of [`kafka-handler`]. Use it through
//! `kafka_handler::handler`, which documents it; this crate only holds the
//! procedural macro.
//!
//! Layout, as in `tracing-attributes` and `tokio-macros`: this file dispatches,
//! [`attr`] parses the attribute's arguments, [`expand`] checks the function and
//! generates the code.
//!
//! [`kafka-handler`]: https://docs.rs/kafka-handler

mod attr;
mod expand;

use proc_macro::TokenStream;

/// Turns an `async fn` into a handler type that knows its topics and group.
///
/// ```text
/// #[handler(topic = "order.created", group = "inventory")]
/// async fn reserve_stock(Json(order): Json<OrderCreated>) -> Result<(), HandlerError> { .. }
/// ```
///
/// Arguments: `topic = "…"` (repeatable) or `topics = ["…", …]`, `group = "…"`,
/// and `crate = "path"` when `kafka_handler` is not reachable as
/// `::kafka_handler` (a renamed dependency or a re-export).
///
/// The function becomes a unit struct of the same name implementing
/// `kafka_handler::Handler`; the function itself stays callable as
/// `reserve_stock::handle(..)`.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::handler(args.into(), item.into()).into()
}
