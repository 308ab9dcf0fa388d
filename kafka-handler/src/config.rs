//! librdkafka settings shared by the consumer and producer builders.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// Environment variable naming the brokers.
pub(crate) const BOOTSTRAP_ENV: &str = "KAFKA_BOOTSTRAP_SERVERS";
/// Prefix of environment variables passed through as librdkafka settings:
/// `KAFKA_CONFIG_SECURITY_PROTOCOL=ssl` sets `security.protocol=ssl`.
pub(crate) const CONFIG_ENV_PREFIX: &str = "KAFKA_CONFIG_";

#[derive(Clone, Debug, Default)]
pub(crate) struct KafkaConfig {
    entries: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub(crate) fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.entries.insert(key.into(), value.into());
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    pub(crate) fn set_default(&mut self, key: &str, value: &str) {
        self.entries.entry(key.to_owned()).or_insert_with(|| value.to_owned());
    }

    /// Reads `KAFKA_BOOTSTRAP_SERVERS` and every `KAFKA_CONFIG_*` variable.
    /// The runtime's consumer settings: refuses the ones it cannot work
    /// with, sets defaults for the rest.
    pub(crate) fn consumer_defaults(&mut self) -> Result<(), crate::Error> {
        for (key, expected) in [("enable.auto.offset.store", "false"), ("enable.auto.commit", "true")] {
            if self.get(key).is_some_and(|v| v != expected) {
                return Err(crate::Error::Config(format!(
                    "`{key}` must stay `{expected}`: the runtime stores only finished offsets"
                )));
            }
        }
        self.set("enable.auto.offset.store", "false");
        self.set_default("enable.auto.commit", "true");
        self.set_default("auto.commit.interval.ms", "1000");
        self.set_default("auto.offset.reset", "earliest");
        self.set_default("enable.partition.eof", "false");
        // The runtime buffers up to `max_buffered` records itself; librdkafka's
        // own 64 MiB prefetch default would double the memory for nothing.
        self.set_default("queued.max.messages.kbytes", "32768");
        // Once a partition's prefetched records reach that limit, librdkafka
        // postpones its next fetch by `fetch.queue.backoff.ms` (1 s by
        // default). The polling thread drains the queue in a fraction of that
        // and would then sit idle: consuming a backlog ran at half speed.
        self.set_default("fetch.queue.backoff.ms", "10");
        // A partition resumed after back-pressure is fetched only once the
        // fetch request in flight returns, which the broker holds up to
        // `fetch.wait.max.ms` (500 ms by default) when the partitions in it
        // have nothing new: every pause cost up to half a second.
        self.set_default("fetch.wait.max.ms", "100");
        // Broker connection states, for readiness.
        self.set_default("statistics.interval.ms", "5000");
        if self.get("group.protocol") != Some("consumer") {
            self.set_default("partition.assignment.strategy", "cooperative-sticky");
        }
        Ok(())
    }

    pub(crate) fn merge_env(&mut self) {
        self.merge_vars(std::env::vars());
    }

    fn merge_vars(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (name, value) in vars {
            if name == BOOTSTRAP_ENV {
                self.set("bootstrap.servers", value);
            } else if let Some(key) = name.strip_prefix(CONFIG_ENV_PREFIX) {
                self.set(key.to_ascii_lowercase().replace('_', "."), value);
            }
        }
    }

    pub(crate) fn to_client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.entries {
            config.set(key, value);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_maps_to_librdkafka_names() {
        let mut c = KafkaConfig::default();
        c.merge_vars([
            ("KAFKA_BOOTSTRAP_SERVERS".into(), "b:9092".into()),
            ("KAFKA_CONFIG_SECURITY_PROTOCOL".into(), "ssl".into()),
            ("KAFKA_HOME".into(), "/opt/kafka".into()),
        ]);
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(c.get("security.protocol"), Some("ssl"));
        assert_eq!(c.get("home"), None);
    }
}
