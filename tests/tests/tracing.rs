//! One span per handled record, joined to the producer's trace through the
//! W3C trace context in Kafka headers. The application's side is what a
//! service would set up: the OpenTelemetry SDK (here with an in-memory
//! exporter), the W3C propagator, and the `tracing-opentelemetry` layer.
//!
//! Invariant: the span that published a record is the parent of the span
//! that handled it, and the trace goes on through retry topics and into the
//! dead letter: the span of a retry is the child of the attempt that sent it
//! to the retry topic, and the dead letter carries the context of the attempt
//! that gave up. Retries in place stay inside the record's one span. A trace
//! the producer did not sample gets no span, yet its context goes on into
//! what the handler publishes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kafka_handler::extract::Attempt;
use kafka_handler::extract::EventId;
use kafka_handler::middleware::RetryTopicLayer;
use kafka_handler::mock::MockCluster;
use kafka_handler::{Consumer, HandlerError, Outgoing, Producer, Record};
use kafka_handler_tests::events::TestEvent;
use kafka_handler_tests::{bootstrap, create_topic, random_name, read_records, run_until};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::{Instrument, Level};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

/// The spans every test of this binary exports, as a service's SDK would.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        global::set_text_map_propagator(TraceContextPropagator::new());
        let spans = Targets::new()
            .with_target("kafka_handler::record", Level::DEBUG)
            .with_target("kafka_handler", Level::WARN)
            .with_target("http", Level::INFO);
        let log = EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("kafka-handler-tests")).with_filter(spans))
            .with(tracing_subscriber::fmt::layer().with_test_writer().with_filter(log))
            .init();
        exporter
    })
}

fn spans() -> Vec<SpanData> {
    exporter().get_finished_spans().expect("exported spans")
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

/// Publishes `event` from inside an "HTTP request" span, as an order
/// service would, and returns that span.
async fn publish_in_request(producer: &Producer, topic: &str, event: &TestEvent) -> SpanData {
    let request = tracing::info_span!(target: "http", "POST /orders", order = %event.event_id);
    let record = Outgoing::json(topic, event).unwrap().key(event.key.clone());
    producer.send(record).instrument(request).await.unwrap();
    spans()
        .into_iter()
        .find(|s| s.name == "POST /orders" && attr(s, "order").as_deref() == Some(&event.event_id))
        .expect("the request span was exported")
}

/// The record spans of `group` for event `id`, by attempt.
fn record_spans(group: &str, id: &str) -> Vec<SpanData> {
    let mut found: Vec<SpanData> = spans()
        .into_iter()
        .filter(|s| {
            attr(s, "messaging.consumer.group.name").as_deref() == Some(group)
                && attr(s, "messaging.message.id").as_deref() == Some(id)
        })
        .collect();
    found.sort_by_key(|s| attr(s, "kafka_handler.attempt"));
    found
}

fn traceparent(trace: TraceId, span: SpanId) -> String {
    format!("00-{trace}-{span}-01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_trace_runs_through_the_consumer_its_retry_topic_and_the_dead_letter() {
    exporter();
    let bootstrap = bootstrap();
    let topic = random_name("orders");
    create_topic(&bootstrap, &topic, 2, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).set("linger.ms", "0").build().unwrap();
    let (flaky, broken) = (random_name("flaky"), random_name("broken"));
    let mut requests = HashMap::new();
    for id in [&flaky, &broken] {
        let event = TestEvent { event_id: id.clone(), key: id.clone(), seq: 0 };
        requests.insert(id.clone(), publish_in_request(&producer, &topic, &event).await);
    }

    // "flaky" fails on its first attempt, "broken" on every one; each handler
    // call notes the trace it runs in.
    let seen: Arc<Mutex<Vec<(String, u32, TraceId)>>> = Arc::default();
    let s = seen.clone();
    let broken_id = broken.clone();
    let handler = move |EventId(id): EventId, Attempt(n): Attempt| {
        let (s, broken) = (s.clone(), broken_id.clone());
        async move {
            let trace = Context::current().span().span_context().trace_id();
            s.lock().unwrap().push((id.to_string(), n, trace));
            if n == 1 || *id == *broken {
                return Err(HandlerError::retryable("inventory API timed out"));
            }
            Ok(())
        }
    };
    let group = random_name("inventory");
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(&group)
        .topic(&topic)
        .handler(handler)
        .retry_topics(RetryTopicLayer::with_delays(producer.clone(), [Duration::from_secs(1)]))
        .dead_letter(producer.clone())
        .build()
        .unwrap();
    let (g, f, b) = (group.clone(), flaky.clone(), broken.clone());
    let done = move || record_spans(&g, &f).len() == 2 && record_spans(&g, &b).len() == 2;
    run_until(consumer, Duration::from_secs(90), done).await;

    let retry_topic = format!("{topic}.{group}.retry.1");
    let mut checked = 0;
    for id in [&flaky, &broken] {
        let request = &requests[id];
        let trace = request.span_context.trace_id();
        let spans = record_spans(&group, id);
        let (first, retry) = (&spans[0], &spans[1]);
        assert_eq!(first.span_context.trace_id(), trace, "{id}: first attempt left the trace");
        assert_eq!(first.parent_span_id, request.span_context.span_id(), "{id}: first attempt's parent");
        assert_eq!(retry.span_context.trace_id(), trace, "{id}: the retry left the trace");
        assert_eq!(retry.parent_span_id, first.span_context.span_id(), "{id}: the retry's parent");
        assert_eq!(first.span_kind, SpanKind::Consumer);
        assert_eq!(first.name, format!("process {topic}"));
        assert_eq!(retry.name, format!("process {retry_topic}"));
        assert_eq!(attr(first, "messaging.system").as_deref(), Some("kafka"));
        assert_eq!(attr(first, "messaging.destination.name"), Some(topic.clone()));
        assert_eq!(attr(first, "messaging.kafka.message.key"), Some(id.clone()));
        assert!(attr(first, "messaging.kafka.offset").is_some());
        assert!(attr(first, "messaging.destination.partition.id").is_some());
        assert_eq!(attr(first, "kafka_handler.attempt").as_deref(), Some("1"));
        assert_eq!(attr(retry, "kafka_handler.attempt").as_deref(), Some("2"));
        assert_eq!(attr(first, "kafka_handler.outcome").as_deref(), Some("ok"));
        assert_eq!(attr(first, "kafka_handler.forwarded_to"), Some(retry_topic.clone()));
        assert_eq!(attr(first, "error.type").as_deref(), Some("retryable"));
        assert!(matches!(first.status, Status::Error { .. }), "{:?}", first.status);
        checked += 1;
    }
    let flaky_retry = &record_spans(&group, &flaky)[1];
    assert_eq!(attr(flaky_retry, "kafka_handler.forwarded_to"), None);
    assert_eq!(flaky_retry.status, Status::Unset);
    let broken_retry = &record_spans(&group, &broken)[1];
    assert_eq!(attr(broken_retry, "kafka_handler.forwarded_to"), Some(format!("{topic}.dlt")));
    assert_eq!(attr(broken_retry, "error.type").as_deref(), Some("retries-exhausted"));

    // The handler ran inside the record's span, so in the producer's trace.
    for (id, n, trace) in seen.lock().unwrap().iter() {
        assert_eq!(*trace, requests[id].span_context.trace_id(), "{id} attempt {n} ran outside its trace");
    }

    // The dead letter carries the context of the attempt that gave it up.
    let dead = read_records(&bootstrap, &format!("{topic}.dlt"), 1).await;
    let header = String::from_utf8_lossy(dead[0].header("traceparent").expect("traceparent")).into_owned();
    let broken_trace = requests[&broken].span_context.trace_id();
    assert_eq!(header, traceparent(broken_trace, broken_retry.span_context.span_id()));
    println!("trace checked through {checked} records, their retries and a dead letter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_span_covers_retries_in_place_on_the_mock_cluster() {
    exporter();
    let cluster = MockCluster::start(1).unwrap();
    let topic = random_name("orders");
    cluster.create_topic(&topic, 1).unwrap();
    let producer = Producer::builder().bootstrap_servers(cluster.bootstrap_servers()).build().unwrap();
    // One finishes on its first poll, one waits, one fails twice in place.
    let ids = ["at-once", "waits", "flaky"].map(random_name);
    let mut requests = HashMap::new();
    for id in &ids {
        let event = TestEvent { event_id: id.clone(), key: id.clone(), seq: 0 };
        requests.insert(id.clone(), publish_in_request(&producer, &topic, &event).await);
    }
    let calls: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let c = calls.clone();
    let handler = move |EventId(id): EventId| {
        let c = c.clone();
        async move {
            let n = {
                let mut calls = c.lock().unwrap();
                let n = calls.entry(id.to_string()).or_default();
                *n += 1;
                *n
            };
            if id.starts_with("waits") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if id.starts_with("flaky") && n < 3 {
                return Err(HandlerError::retryable("stock service busy"));
            }
            Ok(())
        }
    };
    let group = random_name("inventory");
    let consumer = Consumer::builder()
        .bootstrap_servers(cluster.bootstrap_servers())
        .group_id(&group)
        .topic(&topic)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .handler(handler)
        .build()
        .unwrap();
    let (g, all) = (group.clone(), ids.clone());
    run_until(consumer, Duration::from_secs(60), move || all.iter().all(|id| !record_spans(&g, id).is_empty())).await;

    for id in &ids {
        let spans = record_spans(&group, id);
        assert_eq!(spans.len(), 1, "{id}: one span per record");
        let (span, request) = (&spans[0], &requests[id]);
        assert_eq!(span.span_context.trace_id(), request.span_context.trace_id(), "{id}");
        assert_eq!(span.parent_span_id, request.span_context.span_id(), "{id}");
        assert_eq!(attr(span, "kafka_handler.outcome").as_deref(), Some("ok"), "{id}");
    }
    let flaky = &record_spans(&group, &ids[2])[0];
    let retries = flaky.events.iter().filter(|e| e.name == "handler failed; retrying in place").count();
    assert_eq!(retries, 2, "the retries in place are events of the record's one span");
    assert_eq!(calls.lock().unwrap()[&ids[2]], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_trace_gets_no_span_but_reaches_what_the_handler_publishes() {
    exporter();
    let cluster = MockCluster::start(1).unwrap();
    let (topic, out) = (random_name("orders"), random_name("stock"));
    cluster.create_topic(&topic, 1).unwrap();
    cluster.create_topic(&out, 1).unwrap();
    let producer = Producer::builder().bootstrap_servers(cluster.bootstrap_servers()).build().unwrap();
    // What a producer that did not sample this trace writes: flags 00.
    let (trace, parent) = (TraceId::from_hex(&"5".repeat(32)).unwrap(), SpanId::from_hex(&"6".repeat(16)).unwrap());
    let unsampled = format!("00-{trace}-{parent}-00");
    let id = random_name("unsampled");
    let event = TestEvent { event_id: id.clone(), key: id.clone(), seq: 0 };
    let record = Outgoing::json(&topic, &event).unwrap().key(id.clone()).header("traceparent", unsampled.clone());
    producer.send(record).await.unwrap();

    let seen: Arc<Mutex<Option<TraceId>>> = Arc::default();
    let published = Arc::new(AtomicBool::new(false));
    let (s, p, to, reserved) = (seen.clone(), published.clone(), out.clone(), producer.clone());
    let handler = move |_: Record| {
        let (s, p, to, reserved) = (s.clone(), p.clone(), to.clone(), reserved.clone());
        async move {
            *s.lock().unwrap() = Some(Context::current().span().span_context().trace_id());
            reserved.send(Outgoing::new(to, "reserved")).await.map_err(HandlerError::retryable)?;
            p.store(true, Ordering::SeqCst);
            Ok::<_, HandlerError>(())
        }
    };
    let group = random_name("inventory");
    let consumer = Consumer::builder()
        .bootstrap_servers(cluster.bootstrap_servers())
        .group_id(&group)
        .topic(&topic)
        .handler(handler)
        .build()
        .unwrap();
    run_until(consumer, Duration::from_secs(60), move || published.load(Ordering::SeqCst)).await;

    assert_eq!(*seen.lock().unwrap(), Some(trace), "the handler ran in the incoming trace");
    assert!(record_spans(&group, &id).is_empty(), "a span was exported for an unsampled trace");
    assert!(spans().iter().all(|s| s.span_context.trace_id() != trace), "a span of the unsampled trace was exported");
    let stock = read_records(&cluster.bootstrap_servers(), &out, 1).await;
    let header = String::from_utf8_lossy(stock[0].header("traceparent").expect("traceparent")).into_owned();
    assert_eq!(header, unsampled, "what the handler published carries the unsampled context");
}
