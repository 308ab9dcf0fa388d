//! Traces: a `tracing` subscriber whose OpenTelemetry layer exports spans over
//! OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, or to stdout with
//! `OTEL_TRACES_EXPORTER=console`; and the W3C propagator, so the trace
//! context travels in Kafka headers from producer to consumer.

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

/// Installs the propagator and the subscriber; returns the tracer provider,
/// to shut down (and so flush) at exit.
pub(crate) fn init() -> anyhow::Result<SdkTracerProvider> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let mut provider =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name("quickstart").build());
    if let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        && !endpoint.is_empty()
    {
        // Reads OTEL_EXPORTER_OTLP_* from the environment (HTTP/protobuf, port 4318).
        let otlp = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
        provider = provider.with_batch_exporter(otlp);
        println!("exporting traces over OTLP to {endpoint}");
    } else if std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|e| e == "console") {
        provider = provider.with_simple_exporter(opentelemetry_stdout::SpanExporter::default());
    }
    let provider = provider.build();
    // The OpenTelemetry layer gets the spans of each record and of the
    // requests that publish them; the log lines follow RUST_LOG (default: warn).
    let spans =
        Targets::new().with_target("kafka_handler::record", Level::DEBUG).with_target("quickstart", Level::INFO);
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("quickstart")).with_filter(spans))
        .with(tracing_subscriber::fmt::layer().with_filter(logs))
        .init();
    Ok(provider)
}
