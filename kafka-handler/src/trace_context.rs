//! Trace context in Kafka headers, through the OpenTelemetry API.
//!
//! The format is the application's choice: the global text-map propagator
//! (`opentelemetry::global::set_text_map_propagator`, for W3C Trace Context
//! the SDK's `TraceContextPropagator`, which writes `traceparent` and
//! `tracestate`). Until one is set nothing is written or read.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, global};

use crate::record::Header;

/// The context carried by `headers`; an empty one when there is none.
pub(crate) fn extract(headers: &[Header]) -> Context {
    global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
}

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
