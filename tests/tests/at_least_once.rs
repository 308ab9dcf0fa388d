//! The at-least-once runtime against a real Kafka broker, with consumer
//! processes that are killed, stopped and scaled.
//!
//! Invariants, counted on the log of handled events:
//! * 0 missing after SIGKILL and restart;
//! * 0 duplicated after a clean shutdown and restart;
//! * 0 missing and 0 per-key order violations while scaling 1 → 3 → 1
//!   consumers, in every ordering mode that promises order, with the classic
//!   (cooperative-sticky) and the KIP-848 group protocols.
//!
//! Each test also asserts that its scenario happened (the process was
//! stopped mid-stream, producing went on while the group scaled), so that
//! "0 missing" cannot hold because nothing was put to the test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use kafka_handler::Producer;
use kafka_handler_tests::events::{Handled, distinct, expected, produce, read_log, tally, wait_for};
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

/// Log lines written by the process `pid`.
fn handled_by(log: &[Handled], pid: u32) -> usize {
    log.iter().filter(|h| h.pid == pid).count()
}

/// 20,000 events, the consumer SIGKILLed after about 5,000 and restarted:
/// 0 missing, 0 per-partition order violations (duplicates are allowed:
/// at-least-once). The kill was mid-stream: the first process handled some
/// events but not all, the restart handled events too.
#[tokio::test]
async fn sigkill_mid_stream_then_restart_misses_nothing() {
    let _serial = SERIAL.lock().await;
    let (keys, n) = (50, 20_000);
    let s = setup("kill", 6, "partition", "classic", 1).await;
    produce(&s.producer, &s.args.topic, keys, 0, n).await;

    let mut first = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "first");
    wait_for(&s.args.log, Duration::from_secs(90), |log| log.len() >= 5_000).await;
    first.kill();
    let at_kill = distinct(&read_log(&s.args.log));

    let mut second = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "second");
    let log = wait_for(&s.args.log, Duration::from_secs(120), |log| distinct(log) >= n as usize).await;
    second.assert_running();
    let t = tally(&expected(keys, n), &log);
    let (by_first, by_second) = (handled_by(&log, first.pid()), handled_by(&log, second.pid()));
    eprintln!(
        "sigkill: produced {n}, handled before kill {at_kill}, lines by first {by_first}, by restart {by_second}, {t:?}"
    );
    assert!(at_kill > 0 && at_kill < n as usize, "not killed mid-stream: {at_kill} of {n} handled before the kill");
    assert!(by_second > 0, "the restarted process handled nothing");
    assert_eq!(by_first + by_second, log.len(), "log lines from another process");
    assert_eq!(t.missing, 0, "events lost across SIGKILL");
    assert_eq!(t.unexpected, 0);
    assert_eq!(t.order_violations, 0, "per-partition order broken across restart");
    second.terminate(Duration::from_secs(30));
}

/// 20,000 events; SIGTERM to the consumer once it has handled 2,000 (it
/// still finishes the records it has taken), then a restart: 0 missing,
/// 0 duplicated, 0 per-key order violations. The stop was mid-stream: the
/// first process handled some events but not all, and the restart handled
/// exactly the others.
#[tokio::test]
async fn clean_shutdown_then_restart_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let (keys, n) = (50, 20_000);
    let s = setup("clean", 6, "key", "classic", 5).await;
    produce(&s.producer, &s.args.topic, keys, 0, n).await;

    let mut first = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "first");
    // The stop finishes every record already taken, up to 10,000 buffered
    // ones: signal early, and slowly enough to leave events for the restart.
    wait_for(&s.args.log, Duration::from_secs(90), |log| log.len() >= 2_000).await;
    first.terminate(Duration::from_secs(30));
    let at_stop = distinct(&read_log(&s.args.log));

    let mut second = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "second");
    let log = wait_for(&s.args.log, Duration::from_secs(120), |log| distinct(log) >= n as usize).await;
    // Give a wrongly replayed tail time to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.terminate(Duration::from_secs(30));
    let log = if read_log(&s.args.log).len() > log.len() { read_log(&s.args.log) } else { log };
    let t = tally(&expected(keys, n), &log);
    let (by_first, by_second) = (handled_by(&log, first.pid()), handled_by(&log, second.pid()));
    eprintln!(
        "clean restart: produced {n}, handled before stop {at_stop}, lines by first {by_first}, by restart {by_second}, {t:?}"
    );
    assert!(at_stop > 0 && at_stop < n as usize, "not stopped mid-stream: {at_stop} of {n} handled before the stop");
    assert_eq!(by_second, n as usize - at_stop, "the restart did not handle exactly the events left");
    assert_eq!(t.missing, 0);
    assert_eq!(t.duplicated, 0, "a clean shutdown must commit everything it finished");
    assert_eq!(t.order_violations, 0);
}

/// Produces in the background while consumers go 1 → 3 → 1: 0 missing,
/// 0 per-key order violations. The scenario is checked too: each of the 3
/// processes handled events, producing went on while the group scaled in,
/// and what was produced after the scale-in the remaining process handled.
///
/// Runs on a multi-threaded runtime: `terminate` blocks its thread, and the
/// producer must go on meanwhile.
async fn scale_out_and_in(ordering: &'static str, protocol: &'static str) {
    let _serial = SERIAL.lock().await;
    let (keys, per_batch) = (40u64, 20u64);
    let s = setup(&format!("scale-{ordering}-{protocol}"), 6, ordering, protocol, 2).await;
    // Events acknowledged so far, up to 1,000 a second in small batches, so
    // that even a short scale-in sees some produced.
    let produced = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producing = {
        let (producer, topic) = (s.producer.clone(), s.args.topic.clone());
        let (produced, stop) = (produced.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(SeqCst) {
                let start = produced.load(SeqCst);
                produce(&producer, &topic, keys, start, per_batch).await;
                produced.store(start + per_batch, SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut c1 = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "c1");
    wait_for(&s.args.log, Duration::from_secs(60), |log| log.len() >= 1_000).await;
    let mut c2 = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "c2");
    let mut c3 = ConsumerProcess::spawn(BIN, &s.args, &s.dir.0, "c3");
    let pids = [c1.pid(), c2.pid(), c3.pid()];
    // Let the group spread out and every member handle something.
    wait_for(&s.args.log, Duration::from_secs(60), |log| pids.iter().all(|&p| handled_by(log, p) > 0)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (at_scale_in, scale_in) = (produced.load(SeqCst), std::time::Instant::now());
    c2.terminate(Duration::from_secs(40));
    c3.terminate(Duration::from_secs(40));
    let (after_scale_in, scale_in) = (produced.load(SeqCst), scale_in.elapsed());
    // The remaining process alone, while producing goes on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, SeqCst);
    producing.await.unwrap();
    let n = produced.load(SeqCst);
    let log = wait_for(&s.args.log, Duration::from_secs(120), |log| distinct(log) >= n as usize).await;
    c1.assert_running();
    let t = tally(&expected(keys, n), &log);
    let per_process = pids.map(|p| handled_by(&log, p));
    // Distinct events that c1 handled of those produced from the `from`-th
    // on (event i is key i % keys, seq i / keys).
    let c1_handled_from = |from: u64| {
        let late = log.iter().filter(|h| h.pid == pids[0] && h.key[1..].parse::<u64>().unwrap() + h.seq * keys >= from);
        distinct(&late.cloned().collect::<Vec<_>>()) as u64
    };
    let (during, after) = (after_scale_in - at_scale_in, n - after_scale_in);
    eprintln!(
        "scale {ordering}/{protocol}: produced {n}, {during} of them while scaling in ({scale_in:.1?}) and {after} after; \
         lines by c1/c2/c3 {per_process:?}; c1 handled {} of the {} produced since the scale-in began; {t:?}",
        c1_handled_from(at_scale_in),
        n - at_scale_in,
    );
    assert!(per_process.iter().all(|&c| c > 0), "not all 3 processes consumed at the peak: {per_process:?}");
    assert!(during > 0, "nothing was produced while the group scaled in");
    assert!(after > 0, "nothing was produced after the scale-in");
    assert_eq!(
        c1_handled_from(after_scale_in),
        after,
        "the remaining process missed events produced after the scale-in"
    );
    assert_eq!(t.missing, 0, "events lost while scaling");
    assert_eq!(t.unexpected, 0);
    assert_eq!(t.order_violations, 0, "per-key order broken while scaling");
    c1.terminate(Duration::from_secs(30));
}

/// [`scale_out_and_in`] with partition ordering and the classic protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_partition_ordered_classic() {
    scale_out_and_in("partition", "classic").await;
}

/// [`scale_out_and_in`] with key ordering and the classic protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_key_ordered_classic() {
    scale_out_and_in("key", "classic").await;
}

/// [`scale_out_and_in`] with partition ordering and the KIP-848 protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_partition_ordered_kip848() {
    scale_out_and_in("partition", "consumer").await;
}

/// [`scale_out_and_in`] with key ordering and the KIP-848 protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
