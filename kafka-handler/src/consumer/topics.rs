//! Creating the topics a consumer's middleware writes to.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::Error;
use crate::config::KafkaConfig;

/// Creates each `(topic, source)` that does not exist yet, with as many
/// partitions as `source` and the broker's default replication factor.
pub(super) async fn create_derived(config: &KafkaConfig, topics: &[(String, String)]) -> Result<(), Error> {
    let mut admin_config = KafkaConfig::default();
    if let Some(servers) = config.get("bootstrap.servers") {
        admin_config.set("bootstrap.servers", servers);
    }
    for key in ["security.protocol", "sasl.mechanisms", "sasl.username", "sasl.password", "ssl.ca.location"] {
        if let Some(value) = config.get(key) {
            admin_config.set(key, value);
        }
    }
    let admin: AdminClient<DefaultClientContext> = admin_config.to_client_config().create()?;
    let mut new = Vec::new();
    for (topic, source) in topics {
        let metadata = admin.inner().fetch_metadata(Some(source), Duration::from_secs(10))?;
        let Some(partitions) = metadata.topics().first().filter(|t| t.error().is_none()).map(|t| t.partitions().len())
        else {
            tracing::warn!(%source, %topic, "source topic unknown; not creating its derived topic");
            continue;
        };
        if partitions > 0 {
            new.push(NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(-1)));
        }
    }
    if new.is_empty() {
        return Ok(());
    }
    #[cfg(feature = "mock")]
    if let Some(servers) = config.get("bootstrap.servers")
        && let Some(created) = create_on_mock(servers, &new)
    {
        return created;
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let names = || new.iter().map(|t| t.name).collect::<Vec<_>>().join(", ");
    let results = admin.create_topics(&new, &options).await.map_err(|e| {
        Error::Config(format!(
            "could not create the topics the consumer's middleware needs ({}): {e}; create them beforehand, \
             with as many partitions as their source topic, and call `.create_topics(false)`",
            names()
        ))
    })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Config(format!("could not create topic {topic}: {code}")));
            }
        }
    }
    Ok(())
}

/// Creates `topics` on this process's mock cluster at `servers`, if there is one.
#[cfg(feature = "mock")]
fn create_on_mock(servers: &str, topics: &[NewTopic<'_>]) -> Option<Result<(), Error>> {
    let mut result = Some(Ok(()));
    for topic in topics {
        match crate::mock::create_topic(servers, topic.name, topic.num_partitions)? {
            Ok(()) => tracing::info!(topic = topic.name, "created topic on the mock cluster"),
            Err(e) => result = Some(Err(e)),
        }
    }
    result
}
