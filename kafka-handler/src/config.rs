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
