//! kafka-handler's consumer metrics (lag, processing time, outcomes,
//! retries, dead letters, dedup), through OpenTelemetry into a Prometheus
//! registry that `/metrics` renders.

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Registry, TextEncoder};

/// The meter provider the consumers report to, and where it is read.
#[derive(Clone, Debug)]
pub struct Telemetry {
    pub registry: Registry,
    pub provider: SdkMeterProvider,
}

impl Telemetry {
    /// A provider exporting to a fresh Prometheus registry.
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let exporter = opentelemetry_prometheus::exporter().with_registry(registry.clone()).build()?;
        let provider = SdkMeterProvider::builder()
            .with_resource(Resource::builder().with_service_name("orders").build())
            .with_reader(exporter)
            .build();
        Ok(Self { registry, provider })
    }

    /// Every metric, in Prometheus' text format.
    pub fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }

    /// Serves `/metrics` alone (a process without the API) on `addr`.
    pub async fn serve(&self, addr: std::net::SocketAddr, shutdown: crate::shutdown::Shutdown) -> anyhow::Result<()> {
        let this = self.clone();
        let app = axum::Router::new().route("/metrics", axum::routing::get(move || async move { this.render() }));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await;
        });
        Ok(())
    }
}
