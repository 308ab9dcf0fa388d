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
    /// Requests that repeated an idempotency key already served, per provider
    /// (`payment`, `refund`, `email`, `sms`, `chat`): each one is a handler
    /// that ran again for an effect it had already had.
    pub replays: HashMap<String, u64>,
    /// Email and SMS requests that repeated a served key, per order id.
    pub message_repeats: HashMap<String, u32>,
    /// Email and SMS requests answered with an injected failure, per order id.
    pub message_failures: HashMap<String, u32>,
}

impl Ledger {
    /// Provider requests that repeated an effect already had and that no
    /// injected failure explains: a handler that ran twice for one event.
    /// Charges, refunds and alerts are one request per event, so every
    /// repeat counts. Notification sends email and SMS together, so an
    /// attempt that failed on one channel is retried with both: each failure
    /// injected on an order's messages explains up to two repeats of them.
    pub fn unexplained_repeats(&self) -> u64 {
        let replays = |p: &str| self.replays.get(p).copied().unwrap_or(0);
        let messages: u64 = self
            .message_repeats
            .iter()
            .map(|(order, &n)| {
                let failures = self.message_failures.get(order).copied().unwrap_or(0);
                u64::from(n.saturating_sub(2 * failures))
            })
            .sum();
        replays("payment") + replays("refund") + replays("chat") + messages
    }

    /// Total of a per-order count.
    pub fn total(map: &HashMap<String, u32>) -> u64 {
        map.values().map(|&n| u64::from(n)).sum()
    }
}
