//! The HTTP client of the external providers, with timeouts; failures typed
//! for the runtime: 5xx, timeouts and connection errors are retryable, other
//! 4xx permanent.

use std::time::Duration;

use kafka_handler::HandlerError;
use serde_json::{Value, json};

use crate::simulator::Ledger;

/// The providers at one base URL (the simulator, or a gateway in front of the
/// real ones).
#[derive(Clone, Debug)]
pub struct Providers {
    http: reqwest::Client,
    base: String,
}

/// What a refund found.
#[derive(Debug, PartialEq, Eq)]
pub enum Refund {
    /// Refunded this payment.
    Refunded(String),
    /// There was no charge with that key.
    NothingCharged,
}

impl Providers {
    /// A client of the providers at `base` (`http://host:port`), each call
    /// limited to `timeout`.
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(4096)
            .build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned() })
    }

    /// Charges `amount` for the order; the same `key` never charges twice.
    pub async fn charge(&self, key: &str, order_id: &str, amount: &str) -> Result<String, HandlerError> {
        let body = self.post("/payment/charges", key, json!({"orderId": order_id, "amount": amount})).await?;
        body["paymentId"].as_str().map(str::to_owned).ok_or_else(|| HandlerError::permanent("gateway: no paymentId"))
    }

    /// Refunds the charge made with `charge_key`.
    pub async fn refund(&self, charge_key: &str) -> Result<Refund, HandlerError> {
        let key = format!("refund:{charge_key}");
        match self.post("/payment/refunds", &key, json!({"chargeKey": charge_key})).await {
            Ok(body) => Ok(Refund::Refunded(body["paymentId"].as_str().unwrap_or_default().to_owned())),
            Err(e) if e.to_string().contains("404") => Ok(Refund::NothingCharged),
            Err(e) => Err(e),
        }
    }

    /// Sends the order confirmation by `channel` (`email` or `sms`).
    pub async fn notify(&self, channel: &str, key: &str, order_id: &str, to: &str) -> Result<(), HandlerError> {
        self.post(&format!("/{channel}/send"), key, json!({"orderId": order_id, "to": to})).await.map(drop)
    }

    /// Posts `text` to the team's chat webhook.
    pub async fn alert(&self, key: &str, text: &str) -> Result<(), HandlerError> {
        self.post("/chat/webhook", key, json!({"text": text})).await.map(drop)
    }

    /// What the simulator recorded.
    pub async fn ledger(&self) -> anyhow::Result<Ledger> {
        Ok(self.http.get(format!("{}/ledger", self.base)).send().await?.error_for_status()?.json().await?)
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> Result<Value, HandlerError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .map_err(|e| HandlerError::retryable(format!("{path}: {e}")))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(HandlerError::retryable(format!("{path}: {status}")));
        }
        if !status.is_success() {
            return Err(HandlerError::permanent(format!("{path}: {status}")));
        }
        response.json().await.or_else(|_| Ok(Value::Null))
    }
}
