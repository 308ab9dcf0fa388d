//! Metrics and health over HTTP: `/metrics` for Prometheus (the OpenTelemetry
//! Prometheus exporter), `/health/ready` and `/health/live` for probes, and
//! OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kafka_handler::{Health, HealthReport};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prometheus::{Registry, TextEncoder};

/// The application's meter provider: Prometheus always, OTLP on request.
pub(crate) fn meter_provider(registry: &Registry) -> anyhow::Result<SdkMeterProvider> {
    let prometheus = opentelemetry_prometheus::exporter().with_registry(registry.clone()).build()?;
    let mut provider = SdkMeterProvider::builder()
        .with_resource(Resource::builder().with_service_name("quickstart").build())
        .with_reader(prometheus);
    if let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        && !endpoint.is_empty()
    {
        // Reads OTEL_EXPORTER_OTLP_* from the environment (HTTP/protobuf, port 4318).
        let otlp = opentelemetry_otlp::MetricExporter::builder().with_http().build()?;
        provider = provider.with_reader(PeriodicReader::builder(otlp).build());
        println!("exporting metrics over OTLP to {endpoint}");
    }
    Ok(provider.build())
}

#[derive(Clone)]
struct App {
    registry: Registry,
    health: Health,
}

/// Serves metrics and health on `addr` (or any free port if it is taken);
/// returns the address it listens on.
pub(crate) async fn serve(addr: SocketAddr, registry: Registry, health: Health) -> anyhow::Result<SocketAddr> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?,
    };
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health/ready", get(ready))
        .route("/health/live", get(live))
        .with_state(App { registry, health });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("metrics server stopped: {e}");
        }
    });
    Ok(local)
}

async fn metrics(State(app): State<App>) -> Response {
    match TextEncoder::new().encode_to_string(&app.registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn ready(State(app): State<App>) -> Response {
    let report = app.health.report();
    probe(report.ready, &report)
}

async fn live(State(app): State<App>) -> Response {
    let report = app.health.report();
    probe(report.live, &report)
}

/// 200 or 503, with the report as text.
fn probe(ok: bool, report: &HealthReport) -> Response {
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, format!("{report:#?}\n")).into_response()
}
