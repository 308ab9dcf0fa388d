//! The [`Handler`] trait: business logic as an async function.

mod service;

use std::future::Future;
use std::pin::Pin;

pub use self::service::HandlerService;

use crate::extract::FromRecord;
use crate::outcome::IntoOutcome;
use crate::{HandlerError, Record};

/// Business logic for one record.
///
/// Implemented for every `async fn` (or closure returning a future) whose
/// arguments are [extractors](crate::extract) (up to twelve) and whose return
/// value implements [`IntoOutcome`]: `()`, `Result<(), HandlerError>` or
/// `Result<(), E>` for any error `E`. `T` is the tuple of argument types;
/// it only exists so that the blanket implementations do not overlap.
///
/// A handler is tested without a broker by calling it, or through
/// [`Handler::call`] with a hand-built [`Record`]:
///
/// ```
/// use kafka_handler::{extract::Json, Handler, HandlerError, Record};
///
/// #[derive(serde::Deserialize)]
/// struct OrderCreated { quantity: u32 }
///
/// async fn reserve(Json(order): Json<OrderCreated>) -> Result<(), HandlerError> {
///     if order.quantity == 0 {
///         return Err(HandlerError::permanent("quantity must be positive"));
///     }
///     Ok(())
/// }
///
/// # tokio_test_block_on(async {
/// let record = Record::builder("order.created").payload(r#"{"quantity":2}"#).build();
/// assert!(reserve.call(record).await.is_ok());
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Kafka handler",
    label = "not a handler",
    note = "a handler is an `async fn` whose arguments all implement `FromRecord` and that returns `()` or `Result<(), E>`",
    note = "its future must be `Send`: a value that is not (an `Rc`, a `std::sync::MutexGuard`) held across an `.await` makes it no handler",
    note = "put `#[kafka_handler::handler]` on the function for a more precise error"
)]
pub trait Handler<T>: Clone + Send + Sync + Sized + 'static {
    /// The future that handles one record.
    type Future: Future<Output = Result<(), HandlerError>> + Send + 'static;

    /// Handles `record`.
    fn call(self, record: Record) -> Self::Future;

    /// Turns the handler into a [`tower::Service`], to wrap it in layers.
    fn into_service(self) -> HandlerService<Self, T> {
        HandlerService::new(self)
    }

    /// Handles `record` with the future boxed; handlers whose future already
    /// is a box return it as it is.
    #[doc(hidden)]
    fn __call_boxed(self, record: Record) -> BoxHandlerFuture {
        Box::pin(self.call(record))
    }

    /// Topics and group declared with `#[handler(..)]`, if any.
    #[doc(hidden)]
    fn __subscription(&self) -> Option<crate::__private::Subscription> {
        None
    }

    /// Whether the handler may read the record's headers.
    #[doc(hidden)]
    fn __reads_headers(&self) -> bool {
        true
    }
}

/// The future of a handler function.
pub type BoxHandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

macro_rules! impl_handler {
    ($($ty:ident),*) => {
        #[allow(non_snake_case, unused_mut, unused_variables)]
        impl<F, Fut, R, $($ty,)*> Handler<($($ty,)*)> for F
        where
            F: FnOnce($($ty),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoOutcome,
            $($ty: FromRecord + Send + 'static,)*
        {
            type Future = BoxHandlerFuture;

            fn call(self, mut record: Record) -> Self::Future {
                $(
                    let $ty = match $ty::from_record(&mut record) {
                        Ok(value) => value,
                        Err(e) => return Box::pin(std::future::ready(Err(e))),
                    };
                )*
                let fut = self($($ty),*);
                Box::pin(async move { fut.await.into_outcome() })
            }

            fn __call_boxed(self, record: Record) -> BoxHandlerFuture {
                self.call(record)
            }

            fn __reads_headers(&self) -> bool {
                false $(|| $ty::__READS_HEADERS)*
            }
        }
    };
}

impl_handler!();
impl_handler!(T1);
impl_handler!(T1, T2);
impl_handler!(T1, T2, T3);
impl_handler!(T1, T2, T3, T4);
impl_handler!(T1, T2, T3, T4, T5);
impl_handler!(T1, T2, T3, T4, T5, T6);
impl_handler!(T1, T2, T3, T4, T5, T6, T7);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11);
impl_handler!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Disposition;
    use crate::extract::{Key, Metadata, Payload};

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn extractors_run_in_order_and_errors_convert() {
        async fn h(meta: Metadata, Key(k): Key, Payload(p): Payload) -> Result<(), std::io::Error> {
            assert_eq!(meta.offset, 7);
            assert_eq!(k.as_deref(), Some(&b"k"[..]));
            assert!(p.is_none());
            Err(std::io::Error::other("down"))
        }
        let rec = Record::builder("t").offset(7).key("k").build();
        let err = block_on(h.call(rec)).unwrap_err();
        assert_eq!(err.disposition(), Disposition::Retryable);
    }

    #[test]
    fn headers_are_read_only_by_extractors_that_need_them() {
        use crate::extract::{Headers, State};
        async fn meta_only(_: Metadata, _: Key, _: Payload, _: State<u8>) {}
        async fn with_headers(_: Metadata, _: Option<Headers>) {}
        async fn whole(_: Record) {}
        assert!(!Handler::__reads_headers(&meta_only));
        assert!(!Handler::__reads_headers(&|| async {}));
        assert!(Handler::__reads_headers(&with_headers));
        assert!(Handler::__reads_headers(&whole));
    }

    #[test]
    fn unit_handlers_succeed() {
        let rec = Record::builder("t").build();
        assert!(block_on((|| async {}).call(rec)).is_ok());
    }

    #[cfg(feature = "json")]
    #[test]
    fn undecodable_payload_is_permanent_and_skips_the_body() {
        use crate::extract::Json;
        async fn h(Json(_v): Json<u32>) {
            panic!("must not run");
        }
        let rec = Record::builder("t").payload("nope").build();
        let err = block_on(h.call(rec)).unwrap_err();
        assert_eq!(err.disposition(), Disposition::Permanent);
        assert!(err.is_decode());
    }
}
