//! `kafka-handler dlt` on dead letters it cannot simply replay or print,
//! against the real broker.
//!
//! Invariants: a dead letter whose payload was dropped is skipped with the
//! reason and where the payload is, on stderr, while every other matching
//! dead letter is replayed, and the command exits non-zero (a dry run says
//! the same and sends nothing); `show` prints bytes that are not UTF-8
//! escaped (`\xff\xfe`) and valid UTF-8 as it is.

use std::process::ExitCode;
use std::time::Duration;

use kafka_handler_tests::{bootstrap, create_topic, init_tracing, random_name, read_records};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Runs the tool; its exit code, stdout and stderr.
async fn cli(args: &[&str]) -> (ExitCode, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = std::iter::once("kafka-handler").chain(args.iter().copied());
    let code = kafka_handler::cli::main_with(args, &mut out, &mut err).await;
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

/// Records in partition 0 of `topic` so far.
fn count(bootstrap: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap();
    high - low
}

/// A dead letter as the dead-letter layer writes it, for `topic[0]@offset`.
fn provenance(topic: &str, group: &str, offset: i64) -> OwnedHeaders {
    let offset = offset.to_string();
    [
        ("dlt.original.topic", topic.as_bytes()),
        ("dlt.original.partition", b"0"),
        ("dlt.original.offset", offset.as_bytes()),
        ("dlt.group", group.as_bytes()),
        ("dlt.error.kind", b"permanent"),
        ("dlt.error.message", b"payment gateway rejected the card"),
        ("dlt.attempts", b"1"),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: Some(value) }))
}

async fn send(producer: &FutureProducer, record: FutureRecord<'_, [u8], [u8]>) {
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_names_what_it_skips_and_show_escapes_bytes() {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name("orders");
    let group = random_name("payment");
    let dlt = format!("{topic}.dlt");
    let redrive = format!("{topic}.{group}.redrive");
    create_topic(&bootstrap, &dlt, 1, 1).await;
    create_topic(&bootstrap, &redrive, 1, 1).await;

    let raw: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    let send = |record| send(&raw, record);
    // 0 and 2: whole dead letters; 1: its payload was dropped; 3: binary key and header.
    let payload = |n: u32| format!(r#"{{"eventId":"e-{n}"}}"#).into_bytes();
    let (p0, p2, p3) = (payload(0), payload(2), payload(3));
    send(FutureRecord::to(&dlt).key(&b"k"[..]).payload(&p0[..]).headers(provenance(&topic, &group, 10))).await;
    let dropped = provenance(&topic, &group, 11).insert(Header { key: "dlt.payload.dropped", value: Some("2000000") });
    send(FutureRecord::to(&dlt).key(&b"k"[..]).headers(dropped)).await;
    send(FutureRecord::to(&dlt).key(&b"k"[..]).payload(&p2[..]).headers(provenance(&topic, &group, 12))).await;
    let binary = provenance(&topic, &group, 13)
        .insert(Header { key: "binary", value: Some(&b"\xff\xfe"[..]) })
        .insert(Header { key: "text", value: Some("d\u{e9}j\u{e0} vu") });
    send(FutureRecord::to(&dlt).key(&b"k\x80"[..]).payload(&p3[..]).headers(binary)).await;

    let replay = ["--bootstrap-servers", &bootstrap, "dlt", "replay", "--topic", &dlt, "--group", &group];
    let dry: Vec<&str> = replay.iter().copied().chain(["--dry-run"]).collect();
    let (dry_code, dry_out, dry_err) = cli(&dry).await;
    let after_dry_run = count(&bootstrap, &redrive);
    let (code, _, err) = cli(&replay).await;
    let after_replay = count(&bootstrap, &redrive);
    let replayed = read_records(&bootstrap, &redrive, 3).await;
    let show = ["--bootstrap-servers", &bootstrap, "dlt", "show", "--topic", &dlt, "--partition", "0", "--offset", "3"];
    let (show_code, shown, _) = cli(&show).await;

    eprintln!("dry run ({dry_code:?}):\n{dry_out}{dry_err}replay ({code:?}):\n{err}show ({show_code:?}):\n{shown}");
    let skip = format!("skipping dead letter {dlt}[0]@1: its payload (2000000 bytes) was too large");
    let reproduce = format!("the payload is at {topic}[0]@11: re-produce it from there");
    let would = dry_out.lines().filter(|l| l.starts_with("would replay")).count();
    let offsets: Vec<String> = replayed
        .iter()
        .map(|r| String::from_utf8_lossy(r.header("retry.original.offset").unwrap_or_default()).into_owned())
        .collect();
    eprintln!(
        "dlt cli: dry run would replay {would} of 4 and sent {after_dry_run}; replay sent {after_replay} of 4 to \
         {redrive} (original offsets {offsets:?}); 1 skipped with its reason: {}",
        err.contains(&skip) && err.contains(&reproduce),
    );
    assert_ne!(dry_code, ExitCode::SUCCESS, "a dry run that would skip a dead letter fails");
    assert_eq!(would, 3);
    assert_eq!(after_dry_run, 0, "a dry run sends nothing");
    assert!(dry_err.contains(&skip) && dry_err.contains(&reproduce), "{dry_err}");
    assert!(dry_err.contains("3 of 4 dead letters would be replayed"), "{dry_err}");

    assert_ne!(code, ExitCode::SUCCESS, "a replay that skipped a dead letter fails");
    assert!(err.contains(&skip) && err.contains(&reproduce), "{err}");
    assert!(err.contains("replayed 3 of 4 dead letters"), "{err}");
    assert!(err.contains("1 of 4 dead letters could not be replayed"), "{err}");
    assert_eq!(after_replay, 3, "the others were replayed, once each");
    assert_eq!(offsets, ["10", "12", "13"]);

    assert_eq!(show_code, ExitCode::SUCCESS);
    assert!(shown.contains(r"  binary: \xff\xfe"), "{shown}");
    assert!(shown.contains("  text: d\u{e9}j\u{e0} vu"), "{shown}");
    assert!(shown.contains(r"key=k\x80"), "{shown}");
    assert!(shown.contains(r#"{"eventId":"e-3"}"#), "{shown}");
}
