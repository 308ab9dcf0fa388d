//! Records that carry no trace context start a trace of their own (a root).
//! When the application has set a global tracer provider, its sampler
//! decides before any span is made. The application's side is what a service
//! exporting traces sets up: a global provider sampling half of its roots,
//! an in-memory exporter, the W3C propagator and the `tracing-opentelemetry`
//! layer. This binary owns the process's global provider, so it holds one
//! test only.
//!
//! Invariant: every record is handled once inside a valid trace context;
//! every root the sampler keeps is exported once, as a root `process <topic>`
//! consumer span with the record's attributes, and the handler runs inside
//! it; every root it drops exports nothing; and what the handler publishes
//! carries its trace with the sampler's decision (0 missing, 0 doubled).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_handler::extract::EventId;
use kafka_handler::{Consumer, Outgoing, Producer};
use kafka_handler_tests::events::TestEvent;
use kafka_handler_tests::{bootstrap, create_topic, random_name, read_records, run_until};
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider, SpanData};
use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

const RECORDS: usize = 200;

/// What the handler saw of its trace context.
#[derive(Clone, Copy, Debug)]
struct Seen {
    trace: TraceId,
    span: SpanId,
    valid: bool,
    sampled: bool,
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_ask_the_global_sampler_and_only_the_kept_ones_are_exported() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::TraceIdRatioBased(0.5))
        .with_simple_exporter(exporter.clone())
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    let spans = Targets::new().with_target("kafka_handler::record", Level::DEBUG);
    let log = EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("kafka-handler-tests")).with_filter(spans))
        .with(tracing_subscriber::fmt::layer().with_test_writer().with_filter(log))
        .init();

    let bootstrap = bootstrap();
    let (topic, out) = (random_name("orders"), random_name("receipts"));
    create_topic(&bootstrap, &topic, 2, 1).await;
    create_topic(&bootstrap, &out, 1, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).set("linger.ms", "0").build().unwrap();
    // Published outside any trace: no traceparent header.
    for seq in 0..RECORDS {
        let id = format!("evt-{seq}");
        let event = TestEvent { event_id: id.clone(), key: id, seq: seq as u64 };
        producer.send(Outgoing::json(&topic, &event).unwrap()).await.unwrap();
    }

    let seen: Arc<Mutex<HashMap<String, Vec<Seen>>>> = Arc::default();
    let (s, p, o) = (seen.clone(), producer.clone(), out.clone());
    let handler = move |EventId(id): EventId| {
        let (s, p, o) = (s.clone(), p.clone(), o.clone());
        async move {
            let cx = Context::current();
            let sc = cx.span().span_context().clone();
            let event = TestEvent { event_id: id.to_string(), key: id.to_string(), seq: 0 };
            p.send(Outgoing::json(&o, &event).unwrap()).await.map_err(kafka_handler::HandlerError::retryable)?;
            let seen =
                Seen { trace: sc.trace_id(), span: sc.span_id(), valid: sc.is_valid(), sampled: sc.is_sampled() };
            s.lock().unwrap().entry(id.to_string()).or_default().push(seen);
            Ok::<_, kafka_handler::HandlerError>(())
        }
    };
    let group = random_name("receipts");
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(&group)
        .topic(&topic)
        .handler(handler)
        .build()
        .unwrap();
    let (s, e) = (seen.clone(), exporter.clone());
    let done = move || {
        let seen = s.lock().unwrap();
        let kept = seen.values().flatten().filter(|x| x.sampled).count();
        seen.len() == RECORDS
            && e.get_finished_spans().unwrap().iter().filter(|s| s.name.starts_with("process")).count() >= kept
    };
    run_until(consumer, Duration::from_secs(90), done).await;

    let seen = seen.lock().unwrap().clone();
    let twice = seen.values().filter(|v| v.len() != 1).count();
    assert_eq!(seen.len(), RECORDS, "every record handled");
    assert_eq!(twice, 0, "no record handled twice");
    let seen: HashMap<String, Seen> = seen.into_iter().map(|(id, v)| (id, v[0])).collect();
    assert!(seen.values().all(|s| s.valid), "every handler ran inside a trace context");
    let kept: HashMap<SpanId, &String> = seen.iter().filter(|(_, s)| s.sampled).map(|(id, s)| (s.span, id)).collect();
    assert!(
        !kept.is_empty() && kept.len() < RECORDS,
        "a ratio sampler keeps some roots and drops others: {}",
        kept.len()
    );

    let exported: Vec<SpanData> =
        exporter.get_finished_spans().unwrap().into_iter().filter(|s| s.name.starts_with("process")).collect();
    assert_eq!(exported.len(), kept.len(), "one span per kept root, none for a dropped one");
    for span in &exported {
        let id = kept.get(&span.span_context.span_id()).expect("the exported span is the one the handler ran in");
        assert_eq!(span.parent_span_id, SpanId::INVALID, "{id}: a root");
        assert_eq!(span.span_kind, SpanKind::Consumer);
        assert_eq!(span.name, format!("process {topic}"));
        assert_eq!(span.instrumentation_scope.name(), "kafka-handler");
        assert_eq!(attr(span, "messaging.destination.name"), Some(topic.clone()));
        assert_eq!(attr(span, "messaging.consumer.group.name"), Some(group.clone()));
        assert_eq!(attr(span, "messaging.message.id").as_ref(), Some(*id));
        assert_eq!(attr(span, "kafka_handler.outcome").as_deref(), Some("ok"));
    }

    // What each handler published carries its trace, sampled or not.
    let receipts = read_records(&bootstrap, &out, RECORDS).await;
    assert_eq!(receipts.len(), RECORDS);
    for receipt in &receipts {
        let event: TestEvent = serde_json::from_slice(receipt.payload().unwrap()).unwrap();
        let s = &seen[&event.event_id];
        let flags = if s.sampled { "01" } else { "00" };
        let header = String::from_utf8_lossy(receipt.header("traceparent").expect("traceparent")).into_owned();
        assert_eq!(header, format!("00-{}-{}-{flags}", s.trace, s.span), "{}", event.event_id);
    }
    println!(
        "{RECORDS} roots: {} kept and exported, {} dropped and exported nothing; {RECORDS} outputs carry their trace",
        kept.len(),
        RECORDS - kept.len()
    );
}
