//! The external providers — payment gateway, email, SMS, chat webhook — as
//! one small HTTP server with per-provider latency and failure rate.
//!
//! Every effect takes an `Idempotency-Key` header, as real gateways do: a
//! repeated key gets the first answer and no second effect. Failures are
//! injected before the effect (`503`), so a retry is always safe.

mod ledger;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

pub use self::ledger::Ledger;

/// Latency and failure rate of one provider.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub latency: Duration,
    pub failure_rate: f64,
}

/// Flags and environment of the simulator; defaults from the domain.
#[derive(Clone, Debug, clap::Args)]
pub struct SimulatorConfig {
    /// Payment gateway latency (ms).
    #[arg(long, env = "SIM_PAYMENT_LATENCY_MS", default_value_t = 1000)]
    pub payment_latency_ms: u64,
    /// Email provider latency (ms).
    #[arg(long, env = "SIM_EMAIL_LATENCY_MS", default_value_t = 1000)]
    pub email_latency_ms: u64,
    /// SMS provider latency (ms).
    #[arg(long, env = "SIM_SMS_LATENCY_MS", default_value_t = 1000)]
    pub sms_latency_ms: u64,
    /// Chat webhook latency (ms).
    #[arg(long, env = "SIM_CHAT_LATENCY_MS", default_value_t = 50)]
    pub chat_latency_ms: u64,
    /// Share of payment requests that fail with 503 (0.0–1.0).
    #[arg(long, env = "SIM_PAYMENT_FAILURE_RATE", default_value_t = 0.0)]
    pub payment_failure_rate: f64,
    /// Share of email requests that fail.
    #[arg(long, env = "SIM_EMAIL_FAILURE_RATE", default_value_t = 0.0)]
    pub email_failure_rate: f64,
    /// Share of SMS requests that fail.
    #[arg(long, env = "SIM_SMS_FAILURE_RATE", default_value_t = 0.0)]
    pub sms_failure_rate: f64,
    /// Injected failures per idempotency key at most (0: no limit). With 3
    /// retries, a limit of 3 or less means no request ends in a dead letter.
    #[arg(long, env = "SIM_MAX_FAILURES_PER_KEY", default_value_t = 0)]
    pub max_failures_per_key: u32,
    /// Where `orders simulator` listens.
    #[arg(long, env = "SIM_ADDR", default_value = "127.0.0.1:8090")]
    pub sim_addr: SocketAddr,
}

impl SimulatorConfig {
    /// Every latency `ms`, every failure rate `rate`.
    pub fn uniform(ms: u64, rate: f64) -> Self {
        Self {
            payment_latency_ms: ms,
            email_latency_ms: ms,
            sms_latency_ms: ms,
            chat_latency_ms: ms.min(50),
            payment_failure_rate: rate,
            email_failure_rate: rate,
            sms_failure_rate: rate,
            max_failures_per_key: 0,
            sim_addr: "127.0.0.1:0".parse().expect("address"),
        }
    }

    fn profile(&self, provider: &str) -> Profile {
        let (ms, rate) = match provider {
            "payment" => (self.payment_latency_ms, self.payment_failure_rate),
            "email" => (self.email_latency_ms, self.email_failure_rate),
            "sms" => (self.sms_latency_ms, self.sms_failure_rate),
            _ => (self.chat_latency_ms, 0.0),
        };
        Profile { latency: Duration::from_millis(ms), failure_rate: rate }
    }
}

/// The simulator's state; clones share it.
#[derive(Clone, Debug)]
pub struct Simulator {
    config: Arc<SimulatorConfig>,
    state: Arc<Mutex<SimState>>,
}

#[derive(Debug, Default)]
struct SimState {
    ledger: Ledger,
    /// Charges by idempotency key: (order id, payment id).
    charges: HashMap<String, (String, String)>,
    /// Keys already served, per provider.
    served: HashMap<(String, String), serde_json::Value>,
    failures: HashMap<String, u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChargeRequest {
    order_id: String,
    amount: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefundRequest {
    /// The idempotency key of the charge to refund.
    charge_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageRequest {
    order_id: String,
    to: String,
}

#[derive(Deserialize)]
struct ChatMessage {
    text: String,
}

impl Simulator {
    /// A simulator with `config`.
    pub fn new(config: SimulatorConfig) -> Self {
        Self { config: Arc::new(config), state: Arc::default() }
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/payment/charges", post(charge))
            .route("/payment/refunds", post(refund))
            .route("/email/send", post(email))
            .route("/sms/send", post(sms))
            .route("/chat/webhook", post(chat))
            .route("/ledger", get(ledger))
            .route("/health", get(|| async { "ok" }))
            .with_state(self.clone())
    }

    /// Serves on `addr` until `shutdown`; returns the bound address.
    pub async fn serve(&self, addr: SocketAddr, shutdown: crate::shutdown::Shutdown) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await;
        });
        Ok(bound)
    }

    /// A copy of what the providers did so far.
    pub fn ledger(&self) -> Ledger {
        self.state.lock().expect("simulator state").ledger.clone()
    }

    /// Waits the provider's latency, counts the request, and maybe fails it.
    async fn enter(&self, provider: &str, key: &str, order_id: Option<&str>) -> Result<(), Response> {
        let profile = self.config.profile(provider);
        tokio::time::sleep(profile.latency).await;
        let mut state = self.state.lock().expect("simulator state");
        *state.ledger.requests.entry(provider.to_owned()).or_default() += 1;
        let limit = self.config.max_failures_per_key;
        let failed = state.failures.entry(format!("{provider}/{key}")).or_default();
        if fastrand::f64() < profile.failure_rate && (limit == 0 || *failed < limit) {
            *failed += 1;
            *state.ledger.injected_failures.entry(provider.to_owned()).or_default() += 1;
            if let Some(order_id) = order_id.filter(|_| matches!(provider, "email" | "sms")) {
                *state.ledger.message_failures.entry(order_id.to_owned()).or_default() += 1;
            }
            return Err((StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "injected failure"}))).into_response());
        }
        Ok(())
    }

    /// The first answer for `key`, if it was served before.
    fn replay(&self, state: &mut SimState, provider: &str, key: &str) -> Option<Response> {
        let answer = state.served.get(&(provider.to_owned(), key.to_owned()))?.clone();
        *state.ledger.replays.entry(provider.to_owned()).or_default() += 1;
        Some((StatusCode::OK, Json(answer)).into_response())
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Box<Response>> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            Box::new(
                (StatusCode::BAD_REQUEST, Json(json!({"error": "Idempotency-Key header required"}))).into_response(),
            )
        })
}

async fn charge(State(sim): State<Simulator>, headers: HeaderMap, Json(req): Json<ChargeRequest>) -> Response {
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if crate::money::parse_cents(&req.amount).is_err() {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": "bad amount"}))).into_response();
    }
    if let Err(r) = sim.enter("payment", &key, Some(&req.order_id)).await {
        return r;
    }
    let mut state = sim.state.lock().expect("simulator state");
    if let Some(r) = sim.replay(&mut state, "payment", &key) {
        return r;
    }
    let payment_id = format!("pay_{}", uuid::Uuid::new_v4().simple());
    *state.ledger.charges.entry(req.order_id.clone()).or_default() += 1;
    state.charges.insert(key.clone(), (req.order_id, payment_id.clone()));
    let answer = json!({"paymentId": payment_id, "amount": req.amount});
    state.served.insert(("payment".into(), key), answer.clone());
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn refund(State(sim): State<Simulator>, headers: HeaderMap, Json(req): Json<RefundRequest>) -> Response {
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if let Err(r) = sim.enter("payment", &key, None).await {
        return r;
    }
    let mut state = sim.state.lock().expect("simulator state");
    if let Some(r) = sim.replay(&mut state, "refund", &key) {
        return r;
    }
    let Some((order_id, payment_id)) = state.charges.get(&req.charge_key).cloned() else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "no charge with this key"}))).into_response();
    };
    *state.ledger.refunds.entry(order_id).or_default() += 1;
    let answer = json!({"paymentId": payment_id, "refundId": format!("re_{}", uuid::Uuid::new_v4().simple())});
    state.served.insert(("refund".into(), key), answer.clone());
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn send_message(sim: &Simulator, provider: &str, headers: &HeaderMap, req: MessageRequest) -> Response {
    let key = match idempotency_key(headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if let Err(r) = sim.enter(provider, &key, Some(&req.order_id)).await {
        return r;
    }
    let mut state = sim.state.lock().expect("simulator state");
    if let Some(r) = sim.replay(&mut state, provider, &key) {
        *state.ledger.message_repeats.entry(req.order_id).or_default() += 1;
        return r;
    }
    let delivered = if provider == "email" { &mut state.ledger.emails } else { &mut state.ledger.sms };
    *delivered.entry(req.order_id).or_default() += 1;
    let answer = json!({"messageId": uuid::Uuid::new_v4().to_string(), "to": req.to});
    state.served.insert((provider.to_owned(), key), answer.clone());
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn email(State(sim): State<Simulator>, headers: HeaderMap, Json(req): Json<MessageRequest>) -> Response {
    send_message(&sim, "email", &headers, req).await
}

async fn sms(State(sim): State<Simulator>, headers: HeaderMap, Json(req): Json<MessageRequest>) -> Response {
    send_message(&sim, "sms", &headers, req).await
}

async fn chat(State(sim): State<Simulator>, headers: HeaderMap, Json(msg): Json<ChatMessage>) -> Response {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    if let Err(r) = sim.enter("chat", &key, None).await {
        return r;
    }
    let mut state = sim.state.lock().expect("simulator state");
    if !key.is_empty() && sim.replay(&mut state, "chat", &key).is_some() {
        return "ok".into_response();
    }
    state.ledger.alerts.push(msg.text);
    state.served.insert(("chat".into(), key), json!("ok"));
    "ok".into_response()
}

async fn ledger(State(sim): State<Simulator>) -> Json<Ledger> {
    Json(sim.ledger())
}
