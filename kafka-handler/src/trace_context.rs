//! Trace context in Kafka headers, through the OpenTelemetry API.
//!
//! The format is the application's choice: the global text-map propagator
//! (`opentelemetry::global::set_text_map_propagator`, for W3C Trace Context
//! the SDK's `TraceContextPropagator`, which writes `traceparent` and
//! `tracestate`). Until one is set nothing is written or read.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, ContextGuard, global};
use rustc_hash::FxHashMap;
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record as Values};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Span, Subscriber};

use crate::record::Header;

/// The context carried by `headers`; an empty one when there is none.
///
/// The W3C propagator, known by the headers it reads, gets a fast path: a
/// well-formed version-00 `traceparent` is parsed here, into what the
/// propagator would make of it. Its own parser splits into a vector and
/// parses digit by digit, which costs as much as the rest of the runtime's
/// work on a record when every record carries a context.
pub(crate) fn extract(headers: &[Header]) -> Context {
    let extractor = HeaderExtractor(headers);
    global::get_text_map_propagator(|propagator| {
        let mut fields = propagator.fields();
        let w3c = fields.next() == Some(TRACEPARENT) && fields.next() == Some(TRACESTATE) && fields.next().is_none();
        match w3c.then(|| w3c_span_context(&extractor)).flatten() {
            Some(sc) => Context::current().with_remote_span_context(sc),
            None => propagator.extract(&extractor),
        }
    })
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The span context of a `traceparent` of version 00 in its exact form
/// (`00-` 32 hex digits `-` 16 hex digits `-` 2 hex digits, lowercase) with
/// valid ids; `None` for anything else, which the propagator then reads.
fn w3c_span_context(extractor: &HeaderExtractor<'_>) -> Option<SpanContext> {
    let value = extractor.get(TRACEPARENT)?.as_bytes();
    if value.len() != 55 || !value.starts_with(b"00-") || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from(u128::from(hex(&value[3..19])?) << 64 | u128::from(hex(&value[19..35])?));
    let span_id = SpanId::from(hex(&value[36..52])?);
    let flags = TraceFlags::new(u8::try_from(hex(&value[53..55])?).ok()?) & TraceFlags::SAMPLED;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = extractor.get(TRACESTATE).map_or_else(TraceState::default, |s| s.parse().unwrap_or_default());
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// Lowercase hex digits, at most 16 of them; without a branch per digit.
fn hex(digits: &[u8]) -> Option<u64> {
    let (n, bad) = digits.iter().fold((0u64, 0u8), |(n, bad), &d| {
        let v = HEX[usize::from(d)];
        (n << 4 | u64::from(v & 0xf), bad | v)
    });
    (bad & NOT_HEX == 0).then_some(n)
}

const NOT_HEX: u8 = 0x80;

/// Each byte's value as a lowercase hex digit, or [`NOT_HEX`].
const HEX: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Writes the current context into `headers`, replacing headers of the same
/// names. Without a current span the headers stay as they are, so a record
/// re-published outside any span keeps the context it was read with.
pub(crate) fn inject_current(headers: &mut Vec<Header>) {
    let cx = Context::current();
    if !cx.span().span_context().is_valid() {
        return;
    }
    global::get_text_map_propagator(|propagator| propagator.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// A span that makes `cx` the current OpenTelemetry context while it is
/// entered, and nothing else: no subscriber sees it, no field is recorded,
/// nothing is exported.
///
/// It is what a record whose trace is not sampled runs in. Built for the
/// runtime's `Span::enter` and `Instrument`, it keeps the record's trace
/// context current across every poll of the handler, so what the handler
/// publishes carries it and the spans it opens join it, unsampled, at the
/// cost of a map entry instead of a span for the application's subscriber.
pub(crate) fn scope(cx: Context) -> Span {
    static SCOPES: LazyLock<Dispatch> = LazyLock::new(|| Dispatch::new(ContextScopes::default()));
    PENDING.with(|pending| *pending.borrow_mut() = Some(cx));
    tracing::dispatcher::with_default(&SCOPES, || tracing::span!(target: SCOPE_TARGET, Level::ERROR, "trace_context"))
}

/// The target of [`scope`]'s spans; the only one [`ContextScopes`] takes.
const SCOPE_TARGET: &str = "kafka_handler::trace_context";

thread_local! {
    /// The context of the scope being opened on this thread.
    static PENDING: RefCell<Option<Context>> = const { RefCell::new(None) };
    /// The scopes entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<(u64, ContextGuard)>> = const { RefCell::new(Vec::new()) };
}

/// The subscriber behind [`scope`]: each span holds a context, attached
/// while the span is entered.
#[derive(Debug, Default)]
struct ContextScopes {
    last: AtomicU64,
    /// Each open scope's context and how many handles it has.
    open: Mutex<FxHashMap<u64, (Context, usize)>>,
}

impl ContextScopes {
    fn with_open<T>(&self, f: impl FnOnce(&mut FxHashMap<u64, (Context, usize)>) -> T) -> T {
        f(&mut self.open.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Subscriber for ContextScopes {
    // Never interested in any other callsite, so the application's disabled
    // events and spans stay disabled at no cost.
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.target() == SCOPE_TARGET { Interest::always() } else { Interest::never() }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == SCOPE_TARGET
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::ERROR)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        let cx = PENDING.with(|pending| pending.borrow_mut().take()).unwrap_or_default();
        let id = self.last.fetch_add(1, Ordering::Relaxed) + 1;
        self.with_open(|open| open.insert(id, (cx, 1)));
        Id::from_u64(id)
    }

    fn record(&self, _: &Id, _: &Values<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, span: &Id) {
        let id = span.into_u64();
        let Some(cx) = self.with_open(|open| open.get(&id).map(|(cx, _)| cx.clone())) else {
            return;
        };
        let guard = cx.attach();
        ENTERED.with(|entered| entered.borrow_mut().push((id, guard)));
    }

    fn exit(&self, span: &Id) {
        let id = span.into_u64();
        let guard = ENTERED.with(|entered| {
            let mut entered = entered.borrow_mut();
            let at = entered.iter().rposition(|(entered, _)| *entered == id)?;
            Some(entered.remove(at))
        });
        drop(guard);
    }

    fn clone_span(&self, span: &Id) -> Id {
        self.with_open(|open| {
            if let Some((_, handles)) = open.get_mut(&span.into_u64()) {
                *handles += 1;
            }
        });
        span.clone()
    }

    fn try_close(&self, span: Id) -> bool {
        let closed = self.with_open(|open| {
            let id = span.into_u64();
            let (_, handles) = open.get_mut(&id)?;
            *handles -= 1;
            if *handles == 0 { open.remove(&id) } else { None }
        });
        // The context is dropped outside the lock: its spans may end there.
        closed.is_some()
    }
}

struct HeaderExtractor<'a>(&'a [Header]);

impl Extractor for HeaderExtractor<'_> {
    /// The last header of that name, like [`Record::header`](crate::Record::header).
    fn get(&self, key: &str) -> Option<&str> {
        let header = self.0.iter().rev().find(|h| h.name == key)?;
        std::str::from_utf8(header.value.as_deref()?).ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.name.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut Vec<Header>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|h| h.name != key);
        self.0.push(Header { name: key.to_owned(), value: Some(value.into()) });
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn header(headers: &[Header], name: &str) -> Option<String> {
        HeaderExtractor(headers).get(name).map(str::to_owned)
    }

    fn remote(trace: &str, span: &str) -> Context {
        let state = TraceState::from_key_value([("vendor", "x")]).unwrap();
        let sc = SpanContext::new(
            TraceId::from_hex(trace).unwrap(),
            SpanId::from_hex(span).unwrap(),
            TraceFlags::SAMPLED,
            true,
            state,
        );
        Context::new().with_remote_span_context(sc)
    }

    /// Invariant: what the producer writes for the current context is what
    /// the consumer reads back, and a context already on a record is
    /// replaced only by a current span, never by nothing.
    #[test]
    fn the_current_context_goes_into_headers_and_back() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let old = Header { name: "traceparent".into(), value: Some(format!("00-{}-{SPAN}-01", "1".repeat(32)).into()) };
        let mut headers = vec![Header { name: "eventType".into(), value: Some("OrderCreated".into()) }, old.clone()];

        // No current span: the record keeps the context it carries.
        inject_current(&mut headers);
        assert_eq!(headers[1], old);

        {
            let _current = remote(TRACE, SPAN).attach();
            inject_current(&mut headers);
        }
        assert_eq!(headers.iter().filter(|h| h.name == "traceparent").count(), 1);
        assert_eq!(header(&headers, "traceparent").unwrap(), format!("00-{TRACE}-{SPAN}-01"));
        assert_eq!(header(&headers, "tracestate").unwrap(), "vendor=x");
        assert_eq!(header(&headers, "eventType").unwrap(), "OrderCreated");

        let cx = extract(&headers);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), TRACE);
        assert_eq!(sc.span_id().to_string(), SPAN);
        assert_eq!(sc.trace_state().get("vendor"), Some("x"));
    }

    /// Invariant: the fast path reads a `traceparent` exactly as the W3C
    /// propagator does, and leaves what it does not take to it.
    #[test]
    fn the_fast_path_agrees_with_the_propagator() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let propagator = TraceContextPropagator::new();
        let values = [
            format!("00-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-00"),
            format!("00-{TRACE}-{SPAN}-03"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("01-{TRACE}-{SPAN}-01-extra"),
            format!(" 00-{TRACE}-{SPAN}-01 "),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{TRACE}-{SPAN}-0g"),
            "00-zz-yy-01".to_owned(),
        ];
        for value in values {
            for state in [None, Some("vendor=x,other=y"), Some("not a state")] {
                let mut headers =
                    vec![Header { name: "traceparent".into(), value: Some(value.clone().into_bytes().into()) }];
                if let Some(state) = state {
                    headers.push(Header { name: "tracestate".into(), value: Some(state.as_bytes().to_vec().into()) });
                }
                let fast = extract(&headers);
                let sdk = propagator.extract(&HeaderExtractor(&headers));
                assert_eq!(fast.span().span_context(), sdk.span().span_context(), "{value} {state:?}");
            }
        }
    }

    #[test]
    fn a_missing_or_malformed_header_gives_an_empty_context() {
        let propagator = TraceContextPropagator::new();
        let none = propagator.extract(&HeaderExtractor(&[]));
        assert!(!none.span().span_context().is_valid());
        let bad = [Header { name: "traceparent".into(), value: Some("00-zz-yy-01".into()) }];
        assert!(!propagator.extract(&HeaderExtractor(&bad)).span().span_context().is_valid());
        let null = [Header { name: "traceparent".into(), value: None }];
        assert!(!propagator.extract(&HeaderExtractor(&null)).span().span_context().is_valid());
    }
}
