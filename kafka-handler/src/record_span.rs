//! The span of one record's handling, named and filled in after the
//! OpenTelemetry semantic conventions for messaging.
//!
//! It is made only when a subscriber wants it: with `kafka_handler::record`
//! below `DEBUG` in the filter, a record costs one level check. There is not
//! even a disabled `Span` then, whose enter, exit and drop would each check
//! for `log` output.
//!
//! `DEBUG`, not `INFO`: a span with these fields costs microseconds per
//! record, more than the rest of the runtime at full speed, and a service
//! that logs at `INFO` should not pay that unasked. Whoever exports traces
//! turns it on for this target.
//!
//! With the `trace-context` feature, a record whose trace the producer did
//! not sample gets no span: only its context, made current while the
//! handler runs, so that the trace is carried on (unsampled) and a sampled
//! fraction of the traffic costs a sampled fraction of the spans. A record
//! without trace context starts a trace: with a global tracer provider, its
//! sampler is asked before any span is made (see [`root`]).

use std::borrow::Cow;
use std::fmt;

use tracing::field::{Empty, display};
use tracing::{Level, Span};

use crate::dedup::EventIdSource;
use crate::extract::Group;
use crate::{Disposition, HandlerError, Record};

/// The target of the record spans, for filters: `kafka_handler::record=debug`.
pub(crate) const TARGET: &str = "kafka_handler::record";

/// The record span's name, before `otel.name` gives it its OpenTelemetry one.
#[cfg(feature = "trace-context")]
const SPAN_NAME: &str = "kafka_handler.record";

/// Where the consumer's records carry their event id (as dedup reads it),
/// for the spans' `messaging.message.id`.
#[derive(Clone, Debug)]
pub(crate) struct EventIdOf(pub(crate) EventIdSource);

/// What a record's handling runs in: its span, or, for a record whose trace
/// the producer did not sample, only that trace's context.
pub(crate) enum Scope {
    Span(Span),
    /// Made current while the handler runs, so that what it publishes
    /// carries the trace on (unsampled) and the spans it opens join it.
    #[cfg(feature = "trace-context")]
    Context(opentelemetry::Context),
    /// The span of a record without trace context that the global tracer
    /// provider's sampler chose to trace, made through the OpenTelemetry
    /// API (see [`root`]); current while the handler runs, ended on close.
    #[cfg(feature = "trace-context")]
    Root(opentelemetry::Context),
}

/// A [`Scope`] entered on this thread, until dropped.
pub(crate) struct Entered<'a> {
    _span: Option<tracing::span::Entered<'a>>,
    #[cfg(feature = "trace-context")]
    _context: Option<opentelemetry::ContextGuard>,
}

impl Scope {
    pub(crate) fn enter(&self) -> Entered<'_> {
        match self {
            Scope::Span(span) => Entered {
                _span: Some(span.enter()),
                #[cfg(feature = "trace-context")]
                _context: None,
            },
            #[cfg(feature = "trace-context")]
            Scope::Context(cx) | Scope::Root(cx) => Entered { _span: None, _context: Some(cx.clone().attach()) },
        }
    }

    /// Records how the handling ended, in the span if there is one.
    pub(crate) fn close(&self, result: &Result<(), HandlerError>) {
        match self {
            Scope::Span(span) => close(span, result),
            #[cfg(feature = "trace-context")]
            Scope::Context(_) => {}
            #[cfg(feature = "trace-context")]
            Scope::Root(cx) => root::close(cx, result),
        }
    }

    /// Runs `call` in the scope, if there is one, and records how it ended.
    pub(crate) async fn run(
        scope: Option<Scope>,
        call: impl Future<Output = Result<(), HandlerError>>,
    ) -> Result<(), HandlerError> {
        match scope {
            None => call.await,
            Some(Scope::Span(span)) => {
                let result = tracing::Instrument::instrument(call, span.clone()).await;
                close(&span, &result);
                result
            }
            #[cfg(feature = "trace-context")]
            Some(Scope::Context(cx)) => opentelemetry::context::FutureExt::with_context(call, cx).await,
            #[cfg(feature = "trace-context")]
            Some(Scope::Root(cx)) => {
                let result = opentelemetry::context::FutureExt::with_context(call, cx.clone()).await;
                root::close(&cx, &result);
                result
            }
        }
    }
}

/// Whether a subscriber wants record spans: one inlined level check while
/// `DEBUG` is off.
#[cfg(feature = "trace-context")]
#[inline]
pub(crate) fn wanted() -> bool {
    tracing::level_enabled!(Level::DEBUG) && tracing::span_enabled!(target: TARGET, Level::DEBUG)
}

/// Opens the scope of `record`, if a subscriber wants its span. With the
/// `trace-context` feature, the trace context in the record's headers is made
/// the span's parent.
#[inline]
pub(crate) fn open(record: &Record) -> Option<Scope> {
    if tracing::level_enabled!(Level::DEBUG) { open_span(record) } else { None }
}

#[inline(never)]
fn open_span(record: &Record) -> Option<Scope> {
    // A record whose trace the producer did not sample: no span to record,
    // only its context to carry on into what the handler publishes. Its
    // context was read because a subscriber wanted record spans (see the
    // scheduler's dispatch), so the subscriber is not asked again.
    #[cfg(feature = "trace-context")]
    if let Some(cx) = record.trace_parent().filter(|cx| unsampled(cx)) {
        return Some(Scope::Context(cx.clone()));
    }
    if !tracing::span_enabled!(target: TARGET, Level::DEBUG) {
        return None;
    }
    // The span takes as parent the OpenTelemetry context current when it is
    // made (no tracing span is current on the runtime's threads and tasks).
    #[cfg(feature = "trace-context")]
    let _parent = {
        let cx = match record.trace_parent() {
            Some(cx) => cx.clone(),
            None => crate::trace_context::extract(record.headers()),
        };
        if unsampled(&cx) {
            return Some(Scope::Context(cx));
        }
        // A root: asked of the sampler before any span is made.
        if is_root(&cx)
            && let Some(scope) = root::open(record)
        {
            return Some(scope);
        }
        cx.attach()
    };
    Some(Scope::Span(recorded(record)))
}

/// Whether `cx` carries no trace: the record's span would start one.
#[cfg(feature = "trace-context")]
fn is_root(cx: &opentelemetry::Context) -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    !cx.span().span_context().is_valid()
}

/// Whether `cx` carries a trace its producer did not sample.
#[cfg(feature = "trace-context")]
fn unsampled(cx: &opentelemetry::Context) -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    let incoming = cx.span();
    incoming.span_context().is_valid() && !incoming.span_context().is_sampled()
}

/// The span itself, its fields given as `&str` and integers where they can
/// be, which an OpenTelemetry layer turns into attributes without
/// formatting them.
fn recorded(record: &Record) -> Span {
    let key =
        record.key().map(|key| std::str::from_utf8(key).map_or_else(|_| String::from_utf8_lossy(key), Cow::Borrowed));
    let event_id = record.lookup::<EventIdOf>().and_then(|source| source.0.event_id(record).ok());
    tracing::debug_span!(
        target: TARGET,
        "kafka_handler.record",
        otel.name = %Process(record.topic()),
        otel.kind = "consumer",
        otel.status_description = Empty,
        messaging.system = "kafka",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.consumer.group.name = record.lookup::<Group>().map(|g| &*g.0),
        messaging.destination.name = record.topic(),
        messaging.destination.partition.id = %record.partition(),
        messaging.kafka.offset = record.offset(),
        messaging.kafka.message.key = key.as_deref(),
        messaging.message.id = event_id.as_deref(),
        kafka_handler.attempt = attempt(record),
        kafka_handler.outcome = Empty,
        kafka_handler.forwarded_to = Empty,
        error.type = Empty,
    )
}

/// Records how the handling ended: `ok`, `failed` (permanently, committed
/// past) or `abandoned` (a retryable failure left when the partition was
/// given up; the record is delivered again).
pub(crate) fn close(span: &Span, result: &Result<(), HandlerError>) {
    match result {
        Ok(()) => {
            span.record("kafka_handler.outcome", "ok");
        }
        Err(error) if error.disposition() == Disposition::Permanent => {
            span.record("kafka_handler.outcome", "failed");
            span.record("error.type", kind(error));
            span.record("otel.status_description", display(error.source_error()));
        }
        Err(_) => {
            span.record("kafka_handler.outcome", "abandoned");
        }
    }
}

/// Notes on the current record span that a middleware took a failure off the
/// handler's hands by writing the record to `topic` (a retry or dead-letter
/// topic); `kind` says why.
#[cfg(any(feature = "retry-topic", feature = "dead-letter"))]
pub(crate) fn forwarded(topic: &str, kind: &str, error: &HandlerError) {
    let span = Span::current();
    #[cfg(feature = "trace-context")]
    if span.is_none() {
        root::forwarded(topic, kind, error);
        return;
    }
    span.record("kafka_handler.forwarded_to", topic);
    span.record("error.type", kind);
    span.record("otel.status_description", display(error.source_error()));
}

/// The failure's kind, as its dead letter would name it.
fn kind(error: &HandlerError) -> &'static str {
    crate::failure::FailureKind::of(error).as_str()
}

/// The delivery attempt: 1, or the attempt a record of the group's own
/// retry or re-drive topic is due for.
fn attempt(record: &Record) -> i64 {
    crate::provenance::attempt(record).into()
}

/// The span name the conventions ask for: `process <topic>`.
struct Process<'a>(&'a str);

impl fmt::Display for Process<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process {}", self.0)
    }
}

/// The span of a record without trace context, when the application set a
/// global tracer provider: its sampler is asked before the span is made,
/// with nothing but the span's kind, so that a root it drops costs a
/// sampling decision and a context, not a `tracing` span's attributes. A
/// sampled root's span is made here, through the OpenTelemetry API, with
/// the record span's name, kind and attributes; a dropped one's context is
/// carried on like a producer's unsampled one.
///
/// Without a global tracer provider (its tracer makes invalid contexts), a
/// root gets the `tracing` span, and `tracing-opentelemetry` asks the
/// sampler when it starts it.
#[cfg(feature = "trace-context")]
mod root {
    use std::sync::OnceLock;

    use opentelemetry::trace::{SpanBuilder, SpanKind, Status, TraceContextExt as _, Tracer as _};
    use opentelemetry::{Context, KeyValue, global};

    use super::{Scope, attempt, kind};
    use crate::extract::Group;
    use crate::{Disposition, HandlerError, Record};

    /// The global provider's tracer, taken the first time a root arrives:
    /// the provider is set before consumers run.
    fn tracer() -> &'static global::BoxedTracer {
        static TRACER: OnceLock<global::BoxedTracer> = OnceLock::new();
        TRACER.get_or_init(|| global::tracer_with_scope(crate::trace_context::scope()))
    }

    /// The scope of a root `record`; `None` without a global tracer provider.
    pub(super) fn open(record: &Record) -> Option<Scope> {
        let builder = SpanBuilder::from_name(super::SPAN_NAME).with_kind(SpanKind::Consumer);
        let span = tracer().build_with_context(builder, &Context::new());
        let sc = opentelemetry::trace::Span::span_context(&span);
        if !sc.is_valid() {
            return None;
        }
        if !sc.is_sampled() {
            return Some(Scope::Context(Context::new().with_span(span)));
        }
        let cx = Context::new().with_span(span);
        let span = cx.span();
        span.update_name(format!("process {}", record.topic()));
        span.set_attributes(attributes(record));
        Some(Scope::Root(cx))
    }

    /// The record span's fields, as attributes.
    fn attributes(record: &Record) -> Vec<KeyValue> {
        let mut attrs = Vec::with_capacity(11);
        attrs.extend([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", record.topic().to_owned()),
            KeyValue::new("messaging.destination.partition.id", record.partition().to_string()),
            KeyValue::new("messaging.kafka.offset", record.offset()),
            KeyValue::new("kafka_handler.attempt", attempt(record)),
        ]);
        if let Some(group) = record.lookup::<Group>() {
            attrs.push(KeyValue::new(
                "messaging.consumer.group.name",
                opentelemetry::StringValue::from(group.0.clone()),
            ));
        }
        if let Some(key) = record.key() {
            attrs.push(KeyValue::new("messaging.kafka.message.key", String::from_utf8_lossy(key).into_owned()));
        }
        if let Some(id) = record.lookup::<super::EventIdOf>().and_then(|source| source.0.event_id(record).ok()) {
            attrs.push(KeyValue::new("messaging.message.id", id.to_string()));
        }
        attrs
    }

    /// Records how the handling ended, as [`super::close`] does, and ends
    /// the span.
    pub(super) fn close(cx: &Context, result: &Result<(), HandlerError>) {
        let span = cx.span();
        match result {
            Ok(()) => span.set_attribute(KeyValue::new("kafka_handler.outcome", "ok")),
            Err(error) if error.disposition() == Disposition::Permanent => {
                span.set_attributes([
                    KeyValue::new("kafka_handler.outcome", "failed"),
                    KeyValue::new("error.type", kind(error)),
                ]);
                span.set_status(Status::error(error.source_error().to_string()));
            }
            Err(_) => span.set_attribute(KeyValue::new("kafka_handler.outcome", "abandoned")),
        }
        span.end();
    }

    /// [`super::forwarded`], on the current OpenTelemetry span: a root's.
    #[cfg(any(feature = "retry-topic", feature = "dead-letter"))]
    pub(super) fn forwarded(topic: &str, kind: &str, error: &HandlerError) {
        let cx = Context::current();
        let span = cx.span();
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("kafka_handler.forwarded_to", topic.to_owned()),
                KeyValue::new("error.type", kind.to_owned()),
            ]);
            span.set_status(Status::error(error.source_error().to_string()));
        }
    }
}
