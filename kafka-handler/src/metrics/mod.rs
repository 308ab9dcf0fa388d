#![doc = include_str!("../docs/observability.md")]

// The runtime records into the instruments of a `Meter` that the
// application's `MeterProvider` makes (the global one unless
// `ConsumerBuilder::meter_provider` names another). What the runtime already counts — partitions, records in
// flight, lag, outcomes — is read by observable instruments when the
// exporter collects, so the record path pays nothing for it; only events
// that are rare or already slow (a handler call that waits, a retry, a dead
// letter) are recorded as they happen. Without the `metrics` feature,
// `Meters` records nothing and costs nothing.

#[cfg(feature = "metrics")]
mod instruments;
#[cfg(feature = "metrics")]
mod lag;
pub(crate) mod observed;

use std::time::Duration;

#[cfg(feature = "metrics")]
pub(crate) use self::instruments::register;
#[cfg(feature = "metrics")]
pub(crate) use self::lag::LagRefresh;
use crate::{HandlerError, Record};

/// The instrumentation scope of the runtime's meter: `kafka-handler` and its version.
#[cfg(feature = "metrics")]
pub(crate) fn scope() -> opentelemetry::InstrumentationScope {
    opentelemetry::InstrumentationScope::builder("kafka-handler").with_version(env!("CARGO_PKG_VERSION")).build()
}

/// What a dedup layer counts, read when the exporter collects: the runtime
/// hands the layer's counters over without this module knowing the layer.
#[cfg(feature = "metrics")]
pub(crate) trait DedupCounts: Send + Sync + 'static {
    /// Records skipped because their event was handled before.
    fn hits(&self) -> u64;
    /// Times a record waited for its event's claim held by another consumer.
    fn waits(&self) -> u64;
    /// Store calls that failed.
    fn store_errors(&self) -> u64;
}

/// Where the runtime and its middleware record events; found in the
/// consumer's shared extensions.
#[derive(Clone, Debug, Default)]
pub(crate) struct Meters {
    #[cfg(feature = "metrics")]
    inner: Option<std::sync::Arc<instruments::Recorders>>,
}

impl Meters {
    /// The meters of the consumer that fetched `record`.
    pub(crate) fn of(record: &Record) -> Meters {
        record.lookup::<Meters>().cloned().unwrap_or_default()
    }

    /// A handler call that waited took `took` and ended with `result`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn handler_call(&self, took: Duration, result: &Result<(), HandlerError>) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner {
            m.handler_call(took, result);
        }
    }

    /// A failed record is tried again; `attempt` is the attempt coming (2 for
    /// the first retry).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn retry(&self, attempt: u32) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner {
            m.retry(attempt);
        }
    }

    /// A record of `topic` was written to its dead-letter topic, for `kind`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    #[cfg_attr(not(feature = "dead-letter"), allow(dead_code))]
    pub(crate) fn dead_letter(&self, topic: &str, kind: &'static str) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.inner {
            m.dead_letter(topic, kind);
        }
    }
}
