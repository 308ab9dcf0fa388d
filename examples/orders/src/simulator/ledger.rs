//! What the providers did, as the audit of a run counts it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Effects per order, plus request and failure counts per provider.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// Charges per order id (one per distinct idempotency key).
    pub charges: HashMap<String, u32>,
    /// Refunds per order id.
    pub refunds: HashMap<String, u32>,
    /// Emails delivered per order id.
    pub emails: HashMap<String, u32>,
    /// SMS delivered per order id.
    pub sms: HashMap<String, u32>,
    /// Alerts posted to the chat webhook.
    pub alerts: Vec<String>,
    /// Requests received per provider (retries and duplicates included).
    pub requests: HashMap<String, u64>,
    /// Requests answered with an injected failure, per provider.
    pub injected_failures: HashMap<String, u64>,
    /// Requests that repeated an idempotency key already served, per provider.
    pub replays: HashMap<String, u64>,
}

impl Ledger {
    /// Total of a per-order count.
    pub fn total(map: &HashMap<String, u32>) -> u64 {
        map.values().map(|&n| u64::from(n)).sum()
    }
}
