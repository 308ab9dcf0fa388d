//! The smallest complete kafka-handler program: publish a few `OrderCreated`
//! events keyed by user, handle them in a consumer group, print what happened.
//! Metrics for Prometheus are served on `/metrics`, health probes on
//! `/health/ready` and `/health/live` (address: `METRICS_ADDR`, default
//! `127.0.0.1:9464`); with `--serve` it keeps consuming and serving until Ctrl-C.
//! Each order is published inside a request span, and the consumer handles it
//! inside a span of that trace (the trace context travels in Kafka headers);
//! spans go to OTLP, or to stdout with `OTEL_TRACES_EXPORTER=console`.
//!
//! ```text
//! cargo run -p quickstart                                   # in-process broker
//! cargo run -p quickstart -- --serve                        # keep running: curl localhost:9464/metrics
//! KAFKA_BOOTSTRAP_SERVERS=localhost:9092 cargo run -p quickstart
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 cargo run -p quickstart   # also OTLP
//! OTEL_TRACES_EXPORTER=console cargo run -p quickstart      # spans to stdout
//! ```

mod telemetry;
mod traces;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_handler::extract::{Json, Metadata, State};
use kafka_handler::mock::MockCluster;
use kafka_handler::{Consumer, HandlerError, Ordering, Outgoing, Producer, handler};
use opentelemetry::trace::{TraceContextExt, TraceId};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

const TOPIC: &str = "order.created";
const ORDERS: usize = 12;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderCreated {
    event_id: String,
    order_id: u64,
    user_id: String,
    product_id: String,
    quantity: u32,
    /// Decimal money as a string: never a float.
    amount: String,
    run: String,
}

#[derive(Clone)]
struct Run {
    id: String,
    handled: Arc<AtomicUsize>,
    /// The trace of the request that published each order.
    published: Arc<Mutex<HashMap<u64, TraceId>>>,
    /// Orders handled in that trace.
    in_trace: Arc<AtomicUsize>,
}

/// The trace the code runs in.
fn current_trace() -> TraceId {
    opentelemetry::Context::current().span().span_context().trace_id()
}

/// Business logic only: the runtime decodes, orders per user, commits.
#[handler(topic = "order.created", group = "quickstart-inventory")]
async fn reserve_stock(
    meta: Metadata,
    State(run): State<Run>,
    Json(order): Json<OrderCreated>,
) -> Result<(), HandlerError> {
    if order.run != run.id {
        return Ok(()); // an earlier run's event on a shared cluster
    }
    if order.quantity == 0 {
        return Err(HandlerError::permanent("quantity must be positive"));
    }
    tokio::time::sleep(Duration::from_millis(20)).await; // the inventory API call
    println!(
        "  handled order {:>2} of {} (qty {}, {}) from partition {} offset {}",
        order.order_id, order.user_id, order.quantity, order.amount, meta.partition, meta.offset
    );
    // The record's span continues the trace of the request that published it.
    if run.published.lock().unwrap().get(&order.order_id) == Some(&current_trace()) {
        run.in_trace.fetch_add(1, AtomicOrdering::SeqCst);
    }
    run.handled.fetch_add(1, AtomicOrdering::SeqCst);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tracer_provider = traces::init()?;

    // No broker configured: start librdkafka's in-process mock cluster.
    let mock;
    let bootstrap = match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(servers) if !servers.is_empty() => {
            println!("using Kafka at {servers}");
            servers
        }
        _ => {
            mock = MockCluster::start(1)?;
            mock.create_topic(TOPIC, 3)?;
            println!("KAFKA_BOOTSTRAP_SERVERS is not set: using an in-process mock broker");
            mock.bootstrap_servers()
        }
    };

    let run = Run {
        id: uuid::Uuid::new_v4().to_string(),
        handled: Arc::default(),
        published: Arc::default(),
        in_trace: Arc::default(),
    };
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build()?;
    println!("publishing {ORDERS} OrderCreated events to {TOPIC}, keyed by userId");
    for order_id in 1..=ORDERS as u64 {
        let event = OrderCreated {
            event_id: uuid::Uuid::new_v4().to_string(),
            order_id,
            user_id: format!("user-{}", order_id % 4),
            product_id: format!("sku-{}", order_id % 3),
            quantity: 1 + (order_id % 3) as u32,
            amount: format!("{}.99", 10 * order_id),
            run: run.id.clone(),
        };
        let key = event.user_id.clone();
        // As an HTTP handler would: the request's span is current while it publishes.
        let request = tracing::info_span!("place_order", order_id);
        run.published.lock().unwrap().insert(order_id, request.in_scope(current_trace));
        producer.send(Outgoing::json(TOPIC, &event)?.key(key)).instrument(request).await?;
    }

    let registry = prometheus::Registry::new();
    let meter_provider = telemetry::meter_provider(&registry)?;
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .ordering(Ordering::Key)
        .state(run.clone())
        .handler(reserve_stock) // topic and group come from #[handler]
        .meter_provider(&meter_provider)
        .build()?;
    let addr = std::env::var("METRICS_ADDR").ok().and_then(|a| a.parse().ok()).unwrap_or(([127, 0, 0, 1], 9464).into());
    let addr = telemetry::serve(addr, registry.clone(), consumer.health()).await?;
    println!("metrics: http://{addr}/metrics   health: http://{addr}/health/ready, http://{addr}/health/live");

    if std::env::args().any(|a| a == "--serve") {
        println!("consuming until Ctrl-C");
        consumer.run().await?;
    } else {
        let handled = run.handled.clone();
        let registry = registry.clone();
        let all_handled = async move {
            while handled.load(AtomicOrdering::SeqCst) < ORDERS {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Long enough for a commit and a look at the partitions' ends.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            print_metrics(&registry);
        };
        tokio::time::timeout(Duration::from_secs(60), consumer.run_until(all_handled)).await??;
        println!("done: {} of {ORDERS} orders handled, offsets committed", run.handled.load(AtomicOrdering::SeqCst));
        let in_trace = run.in_trace.load(AtomicOrdering::SeqCst);
        println!("traces: {in_trace} of {ORDERS} orders handled in the trace of the request that published them");
    }
    // Flushes the spans; an unreachable collector is not the program's failure.
    if let Err(e) = tracer_provider.shutdown() {
        eprintln!("could not export the last traces: {e}");
    }
    meter_provider.shutdown()?;
    Ok(())
}

/// Prints a few of the lines `/metrics` serves.
fn print_metrics(registry: &prometheus::Registry) {
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap_or_default();
    println!("some of what /metrics serves now:");
    let shown = [
        "kafka_handler_consumer_lag{",
        "kafka_handler_consumer_records_total",
        "kafka_handler_process_duration_seconds_count",
    ];
    for line in text.lines().filter(|l| shown.iter().any(|s| l.starts_with(s))) {
        // The scope labels are the same on every line.
        let short = line.replace(",otel_scope_name=\"kafka-handler\",otel_scope_version=\"0.1.0\"", "");
        println!("  {short}");
    }
}
