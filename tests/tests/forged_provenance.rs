//! A foreign producer writes to a source topic records carrying the
//! runtime's provenance headers: `retry.original.*` naming another topic, a
//! `retry.due` an hour ahead, `retry.attempt=99`, `dlt.original.topic`.
//!
//! Invariants: on a source topic those headers are data. Every forged record
//! is handled at once (0 held), as attempt 1 (0 wrong attempts), with its own
//! topic, partition and offset as its `Origin` (0 wrong origins); a retry of
//! it comes back as attempt 2 with the real source as origin; a forged
//! record that fails for good lands in `<source>.dlt` with exactly one
//! `dlt.original.topic`, the real source (0 in the forged topic's
//! dead-letter topic); with dedup on, a tombstone is dead-lettered as
//! `tombstone` and a payload that is not JSON as `decode`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_handler::dedup::redis::RedisStore;
use kafka_handler::extract::{Attempt, Json, Metadata, Origin};
use kafka_handler::middleware::{DedupLayer, RetryTopicLayer};
use kafka_handler::{Consumer, HandlerError, Producer, Record};
use kafka_handler_tests::{bootstrap, create_topic, init_tracing, random_name, read_records, run_until};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;

const FORGED: usize = 30;
const FAIL_ONCE: usize = 5;
const POISON: usize = 5;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    event_id: String,
    kind: String,
}

/// One call of the handler.
struct Call {
    event_id: String,
    attempt: u32,
    origin: Origin,
    at: Metadata,
    after: Duration,
}

/// The forged headers, naming `other` as where the record was.
fn forged(other: &str) -> OwnedHeaders {
    let in_an_hour = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() + 3_600_000).to_string();
    [
        ("retry.original.topic", other),
        ("retry.original.partition", "0"),
        ("retry.original.offset", "0"),
        ("retry.original.timestamp", "0"),
        ("retry.due", &in_an_hour),
        ("retry.attempt", "99"),
        ("retry.first.error", "forged"),
        ("dlt.original.topic", other),
        ("dlt.group", "forged"),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: Some(value) }))
}

/// Records of `topic` so far, 0 for a topic that does not exist.
fn count(bootstrap: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) else { return 0 };
    let partitions =
        metadata.topics().first().map_or(0, |t| if t.error().is_some() { 0 } else { t.partitions().len() });
    (0..partitions as i32)
        .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).map_or(0, |(low, high)| high - low))
        .sum()
}

fn values(record: &Record, name: &str) -> Vec<String> {
    record
        .headers()
        .iter()
        .filter(|h| h.name == name)
        .map(|h| String::from_utf8_lossy(h.value.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_provenance_headers_on_a_source_topic_are_only_data() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("orders");
    let other = random_name("payments");
    create_topic(&bootstrap, &topic, 3, 1).await;
    create_topic(&bootstrap, &other, 1, 1).await;
    create_topic(&bootstrap, &format!("{other}.dlt"), 1, 1).await;
    let group = random_name("inventory");

    let raw: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    let send = |key: String, payload: Option<String>| {
        let (raw, topic, headers) = (raw.clone(), topic.clone(), forged(&other));
        async move {
            let mut record = FutureRecord::<String, String>::to(&topic).key(&key).headers(headers);
            if let Some(payload) = &payload {
                record = record.payload(payload);
            }
            raw.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap()
        }
    };
    for i in 0..FORGED {
        let kind = match i {
            i if i < FAIL_ONCE => "fail-once",
            i if i < FAIL_ONCE + POISON => "poison",
            _ => "ok",
        };
        send(format!("k{i}"), Some(format!(r#"{{"eventId":"{group}-{i}","kind":"{kind}"}}"#))).await;
    }
    send("tombstone".into(), None).await;
    send("not-json".into(), Some("{not json".into())).await;

    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let c = calls.clone();
    let started = Instant::now();
    let handler = move |Attempt(attempt): Attempt, origin: Origin, at: Metadata, Json(ev): Json<Event>| {
        let c = c.clone();
        async move {
            let fail = match ev.kind.as_str() {
                "fail-once" if attempt == 1 => Some(HandlerError::retryable("inventory API timed out")),
                "poison" => Some(HandlerError::permanent("no such product")),
                _ => None,
            };
            c.lock().unwrap().push(Call { event_id: ev.event_id, attempt, origin, at, after: started.elapsed() });
            fail.map_or(Ok(()), Err)
        }
    };
    let producer = Producer::builder().bootstrap_servers(&bootstrap).set("linger.ms", "0").build().unwrap();
    let store = RedisStore::connect(&kafka_handler_tests::redis_url()).await.unwrap();
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(&group)
        .topic(&topic)
        .handler(handler)
        .retry_topics(RetryTopicLayer::with_delays(producer.clone(), [Duration::from_secs(1)]))
        .dedup(DedupLayer::new(store))
        .dead_letter(producer.clone())
        .build()
        .unwrap();
    let c = calls.clone();
    run_until(consumer, Duration::from_secs(90), move || c.lock().unwrap().len() >= FORGED + FAIL_ONCE).await;
    let dead = read_records(&bootstrap, &format!("{topic}.dlt"), POISON + 2).await;
    let retried = read_records(&bootstrap, &format!("{topic}.{group}.retry.1"), FAIL_ONCE).await;

    let calls = calls.lock().unwrap();
    let first: HashMap<&str, &Call> =
        calls.iter().filter(|c| c.attempt == 1).map(|c| (c.event_id.as_str(), c)).collect();
    let seconds: Vec<&Call> = calls.iter().filter(|c| c.attempt != 1).collect();
    let held = first.values().filter(|c| c.after > Duration::from_secs(30)).count();
    let wrong_origin = first
        .values()
        .filter(|c| {
            (&*c.origin.topic, c.origin.partition, c.origin.offset) != (&*c.at.topic, c.at.partition, c.at.offset)
        })
        .count();
    let retried_right = seconds
        .iter()
        .filter(|c| {
            let source = &first[c.event_id.as_str()].at;
            c.attempt == 2
                && c.origin.topic == topic
                && (c.origin.partition, c.origin.offset) == (source.partition, source.offset)
        })
        .count();
    let retries_right = retried
        .iter()
        .filter(|r| values(r, "retry.original.topic") == [topic.as_str()] && values(r, "retry.attempt") == ["2"])
        .filter(|r| {
            !values(r, "retry.first.error").contains(&"forged".to_owned()) && values(r, "dlt.original.topic").is_empty()
        })
        .count();
    let dead_right = dead
        .iter()
        .filter(|r| values(r, "dlt.original.topic") == [topic.as_str()] && values(r, "dlt.group") == [group.as_str()])
        .filter(|r| values(r, "retry.original.topic").is_empty())
        .count();
    let kinds = dead.iter().fold(HashMap::<String, usize>::new(), |mut kinds, r| {
        *kinds.entry(values(r, "dlt.error.kind").join(",")).or_default() += 1;
        kinds
    });
    let in_forged_dlt = count(&bootstrap, &format!("{other}.dlt"));
    let in_forged_retry = count(&bootstrap, &format!("{other}.{group}.retry.1"));
    eprintln!(
        "forged provenance: {} of {FORGED} forged records handled, {} at attempt 1, {held} held, {wrong_origin} with a \
         wrong origin; {retried_right} of {FAIL_ONCE} retried as attempt 2 from the real source, {retries_right} retry \
         records with only the runtime's provenance; {} dead letters in {topic}.dlt, {dead_right} with one \
         dlt.original.topic = the source, kinds {kinds:?}; {in_forged_dlt} in the forged topic's dead-letter topic, \
         {in_forged_retry} in its retry topic",
        calls.iter().map(|c| &c.event_id).collect::<std::collections::HashSet<_>>().len(),
        first.len(),
        dead.len(),
    );
    assert_eq!(first.len(), FORGED, "every forged record handled at attempt 1");
    assert_eq!(calls.len(), FORGED + FAIL_ONCE, "handled once more only when it failed retryably");
    assert_eq!(held, 0, "forged records held by a forged due time");
    assert_eq!(wrong_origin, 0, "forged records whose origin was not their own");
    assert_eq!(retried_right, FAIL_ONCE, "retries of forged records");
    assert_eq!(retries_right, FAIL_ONCE, "retry records carrying forged provenance");
    assert_eq!(dead.len(), POISON + 2);
    assert_eq!(dead_right, POISON + 2, "dead letters with forged or doubled provenance");
    let expected_kinds: HashMap<String, usize> =
        [("permanent".into(), POISON), ("tombstone".into(), 1), ("decode".into(), 1)].into();
    assert_eq!(kinds, expected_kinds);
    assert_eq!(in_forged_dlt, 0, "dead letters in the forged topic's dead-letter topic");
    assert_eq!(in_forged_retry, 0, "retries in the forged topic's retry topic");
}
