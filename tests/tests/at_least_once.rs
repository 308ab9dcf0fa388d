//! The at-least-once runtime against a real Kafka broker, with consumer
//! processes that are killed, stopped and scaled.
//!
//! Invariants, counted on the log of handled events:
//! * 0 missing after SIGKILL and restart;
//! * 0 duplicated after a clean shutdown and restart;
//! * 0 missing and 0 per-key order violations while scaling 1 → 3 → 1
//!   consumers, in every ordering mode that promises order, with the classic
//!   (cooperative-sticky) and the KIP-848 group protocols.

use std::time::Duration;

use kafka_handler::Producer;
use kafka_handler_tests::events::{distinct, expected, produce, read_log, tally, wait_for};
use kafka_handler_tests::process::{ConsumerArgs, ConsumerProcess};
use kafka_handler_tests::{TestDir, bootstrap, create_topic, init_tracing, random_name};

const BIN: &str = env!("CARGO_BIN_EXE_kh-test-consumer");

/// These tests run processes against one broker on a 2-core machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) struct Setup {
    args: ConsumerArgs,
    dir: TestDir,
    producer: Producer,
}

async fn setup(name: &str, partitions: i32, ordering: &'static str, protocol: &'static str, delay_ms: u64) -> Setup {
    init_tracing();
    let bootstrap = bootstrap();
    let topic = random_name(name);
    create_topic(&bootstrap, &topic, partitions, 1).await;
    let dir = TestDir::new(&topic);
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    let args = ConsumerArgs {
        bootstrap,
        group: random_name("group"),
        log: dir.0.join("handled.log"),
        topic,
        ordering,
        group_protocol: protocol,
        delay_ms,
        max_in_flight: 64,
        ..ConsumerArgs::default()
    };
    Setup { args, dir, producer }
}

#[tokio::test]
async fn sigkill_mid_stream_then_restart_misses_nothing() {
    let _serial = SERIAL.lock().await;
    let (keys, n) = (50, 20_000);
    let s = setup("kill", 6, "partition", "classic", 1).await;
    produce(&s.producer, &s.args.topic, keys, 0, n).await;

    let mut first = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "first");
    wait_for(&s.args.log, Duration::from_secs(90), |log| log.len() >= 5_000).await;
    first.kill();
    let at_kill = read_log(&s.args.log).len();

    let mut second = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "second");
    let log = wait_for(&s.args.log, Duration::from_secs(120), |log| distinct(log) >= n as usize).await;
    second.assert_running();
    let t = tally(&expected(keys, n), &log);
    eprintln!("sigkill: produced {n}, handled before kill {at_kill}, {t:?}");
    assert_eq!(t.missing, 0, "events lost across SIGKILL");
    assert_eq!(t.unexpected, 0);
    assert_eq!(t.order_violations, 0, "per-partition order broken across restart");
    second.terminate(Duration::from_secs(30));
}

#[tokio::test]
async fn clean_shutdown_then_restart_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let (keys, n) = (50, 20_000);
    let s = setup("clean", 6, "key", "classic", 1).await;
    produce(&s.producer, &s.args.topic, keys, 0, n).await;

    let mut first = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "first");
    wait_for(&s.args.log, Duration::from_secs(90), |log| log.len() >= 5_000).await;
    first.terminate(Duration::from_secs(30));
    let at_stop = read_log(&s.args.log).len();

    let mut second = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "second");
    let log = wait_for(&s.args.log, Duration::from_secs(120), |log| distinct(log) >= n as usize).await;
    // Give a wrongly replayed tail time to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.terminate(Duration::from_secs(30));
    let log = if read_log(&s.args.log).len() > log.len() { read_log(&s.args.log) } else { log };
    let t = tally(&expected(keys, n), &log);
    eprintln!("clean restart: produced {n}, handled before stop {at_stop}, {t:?}");
    assert_eq!(t.missing, 0);
    assert_eq!(t.duplicated, 0, "a clean shutdown must commit everything it finished");
    assert_eq!(t.order_violations, 0);
}

/// Produces in the background while consumers go 1 → 3 → 1.
async fn scale_out_and_in(ordering: &'static str, protocol: &'static str) {
    let _serial = SERIAL.lock().await;
    let (keys, batches, per_batch) = (40u64, 24u64, 500u64);
    let n = batches * per_batch;
    let s = setup(&format!("scale-{ordering}-{protocol}"), 6, ordering, protocol, 2).await;
    let producing = {
        let producer = s.producer.clone();
        let topic = s.args.topic.clone();
        tokio::spawn(async move {
            for b in 0..batches {
                produce(&producer, &topic, keys, b * per_batch, per_batch).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut c1 = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "c1");
    wait_for(&s.args.log, Duration::from_secs(60), |log| log.len() >= 1_000).await;
    let mut c2 = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "c2");
    let mut c3 = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "c3");
    // Let the group spread out and every member handle something.
    let pids = |log: &[kafka_handler_tests::events::Handled]| {
        log.iter().map(|h| h.pid).collect::<std::collections::HashSet<_>>().len()
    };
    wait_for(&s.args.log, Duration::from_secs(60), |log| pids(log) >= 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    c2.terminate(Duration::from_secs(40));
    c3.terminate(Duration::from_secs(40));
    producing.await.unwrap();
    let log = wait_for(&s.args.log, Duration::from_secs(120), |log| distinct(log) >= n as usize).await;
    c1.assert_running();
    let t = tally(&expected(keys, n), &log);
    eprintln!("scale {ordering}/{protocol}: produced {n}, consumers seen {}, {t:?}", pids(&log));
    assert_eq!(t.missing, 0, "events lost while scaling");
    assert_eq!(t.unexpected, 0);
    assert_eq!(t.order_violations, 0, "per-key order broken while scaling");
    c1.terminate(Duration::from_secs(30));
}

#[tokio::test]
async fn scale_partition_ordered_classic() {
    scale_out_and_in("partition", "classic").await;
}

#[tokio::test]
async fn scale_key_ordered_classic() {
    scale_out_and_in("key", "classic").await;
}

#[tokio::test]
async fn scale_partition_ordered_kip848() {
    scale_out_and_in("partition", "consumer").await;
}

#[tokio::test]
async fn scale_key_ordered_kip848() {
    scale_out_and_in("key", "consumer").await;
}

/// SIGKILL while records are being dead-lettered: the dead letter is
/// acknowledged before the source offset is stored, so after a restart every
/// rejected event is in the dead-letter topic (duplicates allowed, 0 lost).
#[tokio::test]
async fn sigkill_while_dead_lettering_loses_no_dead_letter() {
    let _serial = SERIAL.lock().await;
    let (keys, n, every) = (50u64, 10_000u64, 4u64);
    let mut s = setup("dlt-kill", 6, "partition", "classic", 1).await;
    s.args.fail_every = every;
    create_topic(&s.args.bootstrap, &format!("{}.dlt", s.args.topic), 6, 1).await;
    produce(&s.producer, &s.args.topic, keys, 0, n).await;
    let rejected: std::collections::HashSet<(String, u64)> =
        expected(keys, n).into_iter().filter(|(_, seq)| seq % every == 0).collect();

    let mut first = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "first");
    wait_for(&s.args.log, Duration::from_secs(90), |log| log.len() >= 2_000).await;
    first.kill();
    let mut second = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "second");
    let accepted = n as usize - rejected.len();
    wait_for(&s.args.log, Duration::from_secs(120), |log| distinct(log) >= accepted).await;
    second.terminate(Duration::from_secs(30));

    let dead = kafka_handler_tests::events::read_topic(&s.args.bootstrap, &format!("{}.dlt", s.args.topic)).await;
    let in_dlt: std::collections::HashSet<(String, u64)> = dead.iter().map(|e| (e.key.clone(), e.seq)).collect();
    let lost = rejected.difference(&in_dlt).count();
    eprintln!(
        "dead letters: {} rejected, {} written, {} distinct, {lost} lost",
        rejected.len(),
        dead.len(),
        in_dlt.len()
    );
    assert_eq!(lost, 0, "a dead letter was lost across SIGKILL");
}
