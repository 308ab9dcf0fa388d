//! A ready HTTP endpoint for metrics and health probes.
//!
//! [`Endpoint`] owns an OpenTelemetry meter provider with a Prometheus
//! exporter. Give it to the consumers' builders, hand it their
//! [`Health`], and serve it:
//!
//! | route | answers |
//! | --- | --- |
//! | `GET /metrics` | every instrument of the [`metrics`](crate::metrics) module, in the Prometheus text format |
//! | `GET /health/ready` | `200` when [`HealthReport::ready`], else `503`; the report as text |
//! | `GET /health/live` | `200` when [`HealthReport::live`], else `503`; the report as text |
//!
//! ```no_run
//! # async fn run() -> Result<(), kafka_handler::BoxError> {
//! use kafka_handler::Consumer;
//! use kafka_handler::endpoint::Endpoint;
//!
//! let endpoint = Endpoint::new()?;
//! let consumer = Consumer::builder()
//!     .from_env()
//!     .group_id("inventory")
//!     .topic("order.created")
//!     .handler(|| async {})
//!     .meter_provider(endpoint.meter_provider())
//!     .build()?;
//! tokio::spawn(endpoint.health(consumer.health()).serve(([0, 0, 0, 0], 9464).into()));
//! consumer.run().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Or mount [`Endpoint::router`] in an application's own axum router. The
//! endpoint holds the consumers' health, and with it what their gauges read,
//! so a consumer that has stopped still exports its last gauges (and is not
//! ready nor live).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Registry, TextEncoder};

use crate::{BoxError, Health, HealthReport};

/// `/metrics`, `/health/ready` and `/health/live` for one or more consumers.
#[derive(Clone, Debug)]
pub struct Endpoint {
    registry: Registry,
    provider: SdkMeterProvider,
    health: Health,
}

impl Endpoint {
    /// An endpoint with a meter provider of its own, exported to Prometheus,
    /// and no consumer's health yet (ready and live).
    pub fn new() -> Result<Self, BoxError> {
        Self::with_registry(Registry::new())
    }

    /// An endpoint whose exporter writes into `registry` (to serve
    /// application metrics of that registry on the same route).
    pub fn with_registry(registry: Registry) -> Result<Self, BoxError> {
        let exporter = opentelemetry_prometheus::exporter().with_registry(registry.clone()).build()?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        Ok(Self { registry, provider, health: std::iter::empty().collect() })
    }

    /// The meter provider to give
    /// [`ConsumerBuilder::meter_provider`](crate::ConsumerBuilder::meter_provider)
    /// (or to install as the global one).
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.provider
    }

    /// Adds the health of a consumer, or of several
    /// ([`Consumers::health`](crate::Consumers::health)), to the probes.
    pub fn health(mut self, health: Health) -> Self {
        self.health = [self.health, health].into_iter().collect();
        self
    }

    /// The routes, to mount in an application's router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/health/ready", get(ready))
            .route("/health/live", get(live))
            .with_state(self.clone())
    }

    /// Serves the routes on `addr` until the task is dropped or the listener
    /// fails.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        self.serve_on(listener).await
    }

    /// Serves the routes on a bound listener (bind port 0 and read its
    /// address first to pick a free port).
    pub async fn serve_on(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}

async fn metrics(State(endpoint): State<Endpoint>) -> Response {
    match TextEncoder::new().encode_to_string(&endpoint.registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn ready(State(endpoint): State<Endpoint>) -> Response {
    let report = endpoint.health.report();
    probe(report.ready, &report)
}

async fn live(State(endpoint): State<Endpoint>) -> Response {
    let report = endpoint.health.report();
    probe(report.live, &report)
}

/// `200` or `503`, with the report as text.
fn probe(ok: bool, report: &HealthReport) -> Response {
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, format!("{report:#?}\n")).into_response()
}
