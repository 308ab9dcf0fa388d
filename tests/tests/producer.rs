//! The producer helper against a real broker: typed JSON, key, headers,
//! delivery awaited; and what the consumer hands the handler.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_handler::extract::{Headers, Json, Key, Metadata};
use kafka_handler::{Consumer, Outgoing, Producer};
use kafka_handler_tests::events::TestEvent;
use kafka_handler_tests::{bootstrap, create_topic, init_tracing, random_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_key_headers_and_payload_reach_the_handler() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("producer");
    create_topic(&bootstrap, &topic, 3, 1).await;
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    let event = TestEvent { event_id: "e-1".into(), key: "user-7".into(), seq: 3 };
    let delivered = producer
        .send(Outgoing::json(&topic, &event).unwrap().key("user-7").header("eventType", "TestEvent"))
        .await
        .unwrap();
    // Same key, same partition.
    let again = producer.send(Outgoing::json(&topic, &event).unwrap().key("user-7")).await.unwrap();
    assert_eq!(delivered.partition, again.partition);
    assert_eq!(again.offset, delivered.offset + 1);

    type Seen = (Metadata, Option<Vec<u8>>, Option<Vec<u8>>, TestEvent);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s = seen.clone();
    let consumer = Consumer::builder()
        .bootstrap_servers(&bootstrap)
        .group_id(random_name("producer"))
        .topic(&topic)
        .handler(move |meta: Metadata, Key(key): Key, headers: Headers, Json(ev): Json<TestEvent>| {
            let s = s.clone();
            async move {
                let event_type = headers.get("eventType").map(<[u8]>::to_vec);
                s.lock().unwrap().push((meta, key.map(|k| k.to_vec()), event_type, ev));
            }
        })
        .build()
        .unwrap();
    let s = seen.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run_until(async move {
            while s.lock().unwrap().len() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }),
    )
    .await
    .expect("both records handled")
    .unwrap();

    let seen = seen.lock().unwrap();
    let (meta, key, event_type, ev) = &seen[0];
    assert_eq!((meta.partition, meta.offset), (delivered.partition, delivered.offset));
    assert_eq!(meta.topic, topic);
    assert!(meta.timestamp.is_some());
    assert_eq!(key.as_deref(), Some(&b"user-7"[..]));
    assert_eq!(event_type.as_deref(), Some(&b"TestEvent"[..]));
    assert_eq!(ev, &event);
    assert_eq!(seen[1].2, None, "the second record had no header");
}
