//! Trace context in Kafka headers, through the OpenTelemetry API.
//!
//! The format is the application's choice: the global text-map propagator
//! (`opentelemetry::global::set_text_map_propagator`, for W3C Trace Context
//! the SDK's `TraceContextPropagator`, which writes `traceparent` and
//! `tracestate`). Until one is set nothing is written or read.

use std::marker::PhantomData;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, global};

use crate::record::Header;

/// The instrumentation scope of the spans the runtime makes itself:
/// `kafka-handler` and its version.
pub(crate) fn scope() -> opentelemetry::InstrumentationScope {
    opentelemetry::InstrumentationScope::builder("kafka-handler").with_version(env!("CARGO_PKG_VERSION")).build()
}

/// The context carried by `headers`; an empty one when there is none.
pub(crate) fn extract(headers: &[Header]) -> Context {
    extract_from(&HeaderExtractor(headers))
}

/// What the global propagator makes of `extractor`'s headers, with the fast
/// path of [`Propagation::W3c`] when the propagator is the W3C one.
fn extract_from(extractor: &impl Extractor) -> Context {
    global::get_text_map_propagator(|propagator| {
        let fast = (Propagation::of(propagator) == Propagation::W3c)
            .then(|| w3c_span_context(extractor.get(TRACEPARENT)?.as_bytes(), extractor.get(TRACESTATE)))
            .flatten();
        match fast {
            Some(sc) => Context::current().with_remote_span_context(sc),
            None => propagator.extract(extractor),
        }
    })
}

/// How a consumer reads trace context, decided from the global propagator
/// when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// No propagator is set: nothing to read.
    None,
    /// The W3C propagator, known by the headers it reads. A well-formed
    /// version-00 `traceparent` is parsed here, into what the propagator
    /// would make of it; its own parser splits into a vector and parses
    /// digit by digit, which costs as much as the rest of the runtime's work
    /// on a record when every record carries a context.
    W3c,
    /// Another propagator, asked for every record.
    Other,
}

impl Propagation {
    /// The global propagator's.
    pub(crate) fn current() -> Self {
        global::get_text_map_propagator(|propagator| Propagation::of(propagator))
    }

    fn of(propagator: &dyn TextMapPropagator) -> Self {
        let mut fields = propagator.fields();
        match (fields.next(), fields.next(), fields.next()) {
            (None, _, _) => Propagation::None,
            (Some(TRACEPARENT), Some(TRACESTATE), None) => Propagation::W3c,
            _ => Propagation::Other,
        }
    }

    /// The context carried by a record's headers where they are kept, read
    /// without copying them out: `headers` gives each header's name and
    /// value, in order, every time it is called. `None` without a propagator.
    pub(crate) fn extract<'h, I>(self, headers: Option<impl Fn() -> I>) -> Option<Context>
    where
        I: DoubleEndedIterator<Item = (&'h str, Option<&'h [u8]>)>,
    {
        let headers = match (self, headers) {
            (Propagation::None, _) => return None,
            (_, None) => return Some(Context::new()),
            (_, Some(headers)) => headers,
        };
        if self == Propagation::W3c {
            // One pass over the headers for both names; the last of each.
            let (mut parent, mut state) = (None, None);
            for (name, value) in headers() {
                match name {
                    TRACEPARENT => parent = value,
                    TRACESTATE => state = value,
                    _ => {}
                }
            }
            let Some(parent) = parent else {
                return Some(Context::new());
            };
            let state = state.and_then(|s| std::str::from_utf8(s).ok());
            if let Some(sc) = w3c_span_context(parent, state) {
                return Some(Context::new().with_remote_span_context(sc));
            }
        }
        Some(global::get_text_map_propagator(|propagator| {
            propagator.extract(&BorrowedExtractor(&headers, PhantomData))
        }))
    }
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The span context of a `traceparent` of version 00 in its exact form
/// (`00-` 32 hex digits `-` 16 hex digits `-` 2 hex digits, lowercase) with
/// valid ids, and its `tracestate`; `None` for anything else, which the
/// propagator then reads.
fn w3c_span_context(value: &[u8], state: Option<&str>) -> Option<SpanContext> {
    if value.len() != 55 || !value.starts_with(b"00-") || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from(u128::from(hex16(&value[3..19])?) << 64 | u128::from(hex16(&value[19..35])?));
    let span_id = SpanId::from(hex16(&value[36..52])?);
    let flags = TraceFlags::new(u8::try_from(hex(&value[53..55])?).ok()?) & TraceFlags::SAMPLED;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = state.map_or_else(TraceState::default, |s| s.parse().unwrap_or_default());
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// Sixteen lowercase hex digits, most significant first.
fn hex16(digits: &[u8]) -> Option<u64> {
    let (hi, lo) = digits.split_at_checked(8)?;
    Some(u64::from(hex8(hi.try_into().ok()?)?) << 32 | u64::from(hex8(lo.try_into().ok()?)?))
}

/// Eight lowercase hex digits, most significant first, worked on as one
/// word: no branch or table lookup per digit.
fn hex8(digits: [u8; 8]) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = u64::from_be_bytes(digits);
    // The high bit of each byte set where that byte is at least `n` (every
    // byte being below 0x80, no byte borrows from the next).
    let at_least = |n: u8| ((x | HIGH) - u64::from(n) * ONES) & HIGH;
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if x & HIGH != 0 || digit | letter != HIGH {
        return None;
    }
    // Each byte's value (`a` is 0x61: 1 + 9), then the nibbles packed.
    let v = (x & 0x0f0f_0f0f_0f0f_0f0f) + (letter >> 7) * 9;
    let v = (v | v >> 4) & 0x00ff_00ff_00ff_00ff;
    let v = (v | v >> 8) & 0x0000_ffff_0000_ffff;
    u32::try_from((v | v >> 16) & 0xffff_ffff).ok()
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

/// Reads headers where they are kept (librdkafka's, for a fetched record).
struct BorrowedExtractor<'h, F>(F, PhantomData<&'h ()>);

impl<'h, F, I> Extractor for BorrowedExtractor<'h, F>
where
    F: Fn() -> I,
    I: DoubleEndedIterator<Item = (&'h str, Option<&'h [u8]>)>,
{
    /// The last header of that name, as [`HeaderExtractor`] reads it.
    fn get(&self, key: &str) -> Option<&str> {
        let (_, value) = (self.0)().rev().find(|(name, _)| *name == key)?;
        std::str::from_utf8(value?).ok()
    }

    fn keys(&self) -> Vec<&str> {
        (self.0)().map(|(name, _)| name).collect()
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

    /// Invariant: the runtime parses trace context itself only for the W3C
    /// propagator alone; any other (a composite one with W3C in it included)
    /// reads the headers itself, and without one nothing is read.
    #[test]
    fn the_propagator_decides_how_context_is_read() {
        use opentelemetry::propagation::TextMapCompositePropagator;
        use opentelemetry::trace::noop::NoopTextMapPropagator;
        use opentelemetry_sdk::propagation::BaggagePropagator;

        assert_eq!(Propagation::of(&TraceContextPropagator::new()), Propagation::W3c);
        assert_eq!(Propagation::of(&NoopTextMapPropagator::new()), Propagation::None);
        assert_eq!(Propagation::of(&BaggagePropagator::new()), Propagation::Other);
        let composite = TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]);
        assert_eq!(Propagation::of(&composite), Propagation::Other);
        let no_headers = None::<fn() -> std::iter::Empty<(&'static str, Option<&'static [u8]>)>>;
        assert!(Propagation::None.extract(no_headers).is_none());
        let empty = Propagation::W3c.extract(no_headers).expect("a context");
        assert!(!empty.span().span_context().is_valid());
    }

    /// Invariant: the word-at-a-time parser reads eight digits as the
    /// digit-by-digit one does, for every byte value in every position.
    #[test]
    fn hex8_agrees_with_hex() {
        for position in 0..8 {
            for byte in 0..=u8::MAX {
                let mut digits = *b"0f1e2d3c";
                digits[position] = byte;
                let expected = hex(&digits).map(|n| u32::try_from(n).unwrap());
                assert_eq!(hex8(digits), expected, "{digits:?}");
            }
        }
        assert_eq!(hex8(*b"89abcdef"), Some(0x89ab_cdef));
        assert_eq!(hex16(b"0123456789abcdef"), Some(0x0123_4567_89ab_cdef));
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
