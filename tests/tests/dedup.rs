//! Idempotent handlers against real Kafka, Redis, Redis Cluster, PostgreSQL
//! and SQLite.
//!
//! Invariants, counted per event id:
//! * an event produced 3 times has its effect once, in every store and in
//!   both transactional modes (0 missing, 0 duplicated, 0 concurrent runs);
//! * a consumer SIGKILLed after its effects but before committing offsets
//!   does not repeat them after a restart (0 duplicated);
//! * two consumers that receive the same event during a rebalance never run
//!   the handler for it at the same time, and the effect happens once;
//! * a transactional event whose handler fails after writing rolls back its
//!   own effect and dedup row only, and its retry runs (0 missing, 0
//!   duplicated, 0 dedup hits);
//! * transactional mode under repeated SIGKILL of consumer processes while
//!   50,000 events stream through: every effect row exists exactly once;
//! * Redis stopped for 20 s mid-stream: nothing skipped, nothing doubled, the
//!   consumer catches up by itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_handler::dedup::transactional::{Backend, Transactional, TxHandler};
use kafka_handler::extract::{FromRecord, Json};
use kafka_handler::middleware::DedupLayer;
use kafka_handler::{Consumer, HandlerError, Ordering, Outgoing, Producer, Record};
use kafka_handler_tests::events::{TestEvent, distinct, expected, produce, read_log, tally};
use kafka_handler_tests::process::{ConsumerArgs, ConsumerProcess, read_stats};
use kafka_handler_tests::stores::{self, Mode, RecordEffect};
use kafka_handler_tests::{TestDir, bootstrap, create_topic, init_tracing, random_name, testbed_node};

const BIN: &str = env!("CARGO_BIN_EXE_kh-test-consumer");

/// One test at a time: they share one broker and two cores, and one of them
/// stops Redis.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the handler did, per event id: its runs (in every mode) and its
/// effects (in the store modes; the transactional modes count effect rows).
#[derive(Default)]
struct Effects {
    count: Mutex<HashMap<String, u32>>,
    running: Mutex<HashSet<String>>,
    /// Handler runs started.
    runs: Mutex<u32>,
    /// Times the handler started for an event whose handler was running.
    concurrent: Mutex<u32>,
}

/// One handler run of an event, in flight until dropped.
struct Run<'a> {
    effects: &'a Effects,
    event_id: String,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.effects.running.lock().unwrap().remove(&self.event_id);
    }
}

impl Effects {
    /// Counts a run of `event_id` starting, and whether another run of it
    /// is in flight.
    fn start(&self, event_id: &str) -> Run<'_> {
        *self.runs.lock().unwrap() += 1;
        if !self.running.lock().unwrap().insert(event_id.to_owned()) {
            *self.concurrent.lock().unwrap() += 1;
        }
        Run { effects: self, event_id: event_id.to_owned() }
    }

    /// The handler: marks the event running, waits `delay(event)`, counts
    /// the effect.
    fn handler(
        self: &Arc<Self>,
        delay: impl Fn(&TestEvent) -> Duration + Clone + Send + Sync + 'static,
    ) -> impl Fn(Json<TestEvent>) -> futures::future::BoxFuture<'static, ()> + Clone + Send + Sync + 'static {
        let effects = self.clone();
        move |Json(event): Json<TestEvent>| {
            let effects = effects.clone();
            let delay = delay(&event);
            Box::pin(async move {
                let _run = effects.start(&event.event_id);
                tokio::time::sleep(delay).await;
                *effects.count.lock().unwrap().entry(event.event_id.clone()).or_default() += 1;
            })
        }
    }

    fn total(&self) -> u32 {
        self.count.lock().unwrap().values().sum()
    }
}

/// The transactional effect (a row per event), its runs counted in
/// [`Effects`].
#[derive(Clone)]
struct CountedEffect(Arc<Effects>);

impl<DB: Backend> TxHandler<DB> for CountedEffect
where
    RecordEffect: TxHandler<DB>,
{
    async fn handle(&self, conn: &mut DB::Connection, record: Record) -> Result<(), HandlerError> {
        let Json(event) = Json::<TestEvent>::from_record(&mut record.clone())?;
        let _run = self.0.start(&event.event_id);
        RecordEffect.handle(conn, record).await
    }
}

/// Produces each of `n` events `copies` times, each copy under another key
/// (so copies land on different partitions and race).
async fn produce_copies(producer: &Producer, topic: &str, n: u64, copies: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let event = TestEvent { event_id: uuid::Uuid::new_v4().to_string(), key: format!("k{i}"), seq: 0 };
        for c in 0..copies {
            let record = Outgoing::json(topic, &event).unwrap().key(format!("k{i}-copy{c}"));
            producer.send(record).await.expect("produce");
        }
        ids.push(event.event_id);
    }
    ids
}

fn consumer_builder(topic: &str, group: &str) -> kafka_handler::ConsumerBuilder {
    Consumer::builder().bootstrap_servers(bootstrap()).group_id(group).topic(topic).ordering(Ordering::Key)
}

/// 200 events, each produced 3 times under different keys (so the copies
/// race on different partitions), in every store mode and both
/// transactional modes: 0 missing, 0 duplicated effects, 0 concurrent
/// runs (a handler run for an event starting while another run of it is
/// in flight). The handler ran for every event, and every extra copy was
/// answered as a dedup hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_three_times_has_one_effect_in_every_store() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let (n, copies) = (200u64, 3u64);
    let bootstrap = bootstrap();
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    let dir = TestDir::new(&random_name("dedup-copies"));
    let modes = match std::env::var("KH_TEST_MODES") {
        Ok(m) => m.split(',').map(|s| <Mode as clap::ValueEnum>::from_str(s, true).unwrap()).collect(),
        Err(_) => vec![Mode::Redis, Mode::RedisCluster, Mode::Postgres, Mode::Sqlite, Mode::TxPostgres, Mode::TxSqlite],
    };
    for mode in modes {
        let topic = random_name("copies");
        let group = random_name("group");
        create_topic(&bootstrap, &topic, 3, 1).await;
        let ids = produce_copies(&producer, &topic, n, copies).await;
        let sqlite = dir.0.join(format!("{mode:?}.sqlite"));
        let effects = Arc::new(Effects::default());
        let builder = consumer_builder(&topic, &group);
        let (builder, counters) = match mode {
            Mode::TxPostgres => {
                let service = Transactional::new(stores::pg_pool().await, CountedEffect(effects.clone()));
                let counters = service.counters();
                (builder.service(service), counters)
            }
            Mode::TxSqlite => {
                let service = Transactional::new(stores::sqlite_pool(&sqlite).await, CountedEffect(effects.clone()));
                let counters = service.counters();
                (builder.service(service), counters)
            }
            _ => {
                let layer = stores::layer(mode, &sqlite).await.expect("a store mode");
                let counters = layer.counters();
                (builder.handler(effects.handler(|_| Duration::from_millis(5))).dedup(layer), counters)
            }
        };
        let c = counters.clone();
        let records = n * copies;
        kafka_handler_tests::run_until(builder.build().unwrap(), Duration::from_secs(120), move || {
            c.claimed() + c.hits() >= records
        })
        .await;

        let per_event: HashMap<String, u32> = if mode.is_transactional() {
            let mut m = HashMap::new();
            for h in stores::effects(mode, &sqlite, &group).await {
                *m.entry(format!("{}:{}", h.key, h.seq)).or_default() += 1;
            }
            m
        } else {
            effects.count.lock().unwrap().clone()
        };
        let missing = n as usize - per_event.len();
        let duplicated: u32 = per_event.values().map(|c| c - 1).sum();
        let (runs, concurrent) = (*effects.runs.lock().unwrap(), *effects.concurrent.lock().unwrap());
        eprintln!(
            "{mode:?}: {n} events × {copies}: {} effects, {missing} missing, {duplicated} duplicated, \
             {runs} handler runs, {concurrent} concurrent runs, {} claimed, {} dedup hits, {} waits",
            per_event.values().sum::<u32>(),
            counters.claimed(),
            counters.hits(),
            counters.waits()
        );
        assert_eq!(ids.len(), n as usize);
        assert_eq!(missing, 0, "{mode:?}: events without effect");
        assert_eq!(duplicated, 0, "{mode:?}: effects repeated");
        assert!(runs >= n as u32, "{mode:?}: only {runs} handler runs counted for {n} events");
        assert_eq!(concurrent, 0, "{mode:?}: the handler ran twice at once for one event");
        assert_eq!(counters.hits(), n * (copies - 1), "{mode:?}: every extra copy is a dedup hit");
    }
}

/// Writes the effect row of every event, then fails each event of every
/// fourth sequence number once, retryably.
#[derive(Clone, Default)]
struct FailOnceAfterWriting {
    failed: Arc<Mutex<HashSet<String>>>,
}

impl<DB: Backend> TxHandler<DB> for FailOnceAfterWriting
where
    RecordEffect: TxHandler<DB>,
{
    async fn handle(&self, conn: &mut DB::Connection, record: Record) -> Result<(), HandlerError> {
        let Json(event) = Json::<TestEvent>::from_record(&mut record.clone())?;
        RecordEffect.handle(conn, record).await?;
        if event.seq % 4 == 0 && self.failed.lock().unwrap().insert(event.event_id) {
            return Err(HandlerError::retryable("fails once, after its write"));
        }
        Ok(())
    }
}

/// 400 events in each transactional mode, every fourth failing once after
/// its write: the failed event's write and dedup row roll back alone and
/// its retry runs (100 failed once, 0 missing, 0 duplicated, 0 dedup hits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transactional_event_rolls_back_alone_and_runs_again() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let (keys, n) = (50u64, 400u64);
    let bootstrap = bootstrap();
    let producer = Producer::builder().bootstrap_servers(&bootstrap).build().unwrap();
    let dir = TestDir::new(&random_name("tx-fail"));
    for mode in [Mode::TxPostgres, Mode::TxSqlite] {
        let (topic, group) = (random_name("tx-fail"), random_name("group"));
        create_topic(&bootstrap, &topic, 3, 1).await;
        produce(&producer, &topic, keys, 0, n).await;
        let sqlite = dir.0.join(format!("{mode:?}.sqlite"));
        let handler = FailOnceAfterWriting::default();
        let builder =
            consumer_builder(&topic, &group).retry_backoff(Duration::from_millis(10), Duration::from_millis(50));
        let (builder, counters) = if mode == Mode::TxPostgres {
            let service = Transactional::new(stores::pg_pool().await, handler.clone());
            let counters = service.counters();
            (builder.service(service), counters)
        } else {
            let service = Transactional::new(stores::sqlite_pool(&sqlite).await, handler.clone());
            let counters = service.counters();
            (builder.service(service), counters)
        };
        let c = counters.clone();
        kafka_handler_tests::run_until(builder.build().unwrap(), Duration::from_secs(120), move || {
            c.claimed() + c.hits() >= n
        })
        .await;

        let t = tally(&expected(keys, n), &stores::effects(mode, &sqlite, &group).await);
        let failed = handler.failed.lock().unwrap().len();
        eprintln!(
            "{mode:?}: {n} events, {failed} failed once: {} missing, {} duplicated, {} claimed, {} dedup hits",
            t.missing,
            t.duplicated,
            counters.claimed(),
            counters.hits()
        );
        assert_eq!(failed, 100, "events of seq 0 and 4 fail once");
        assert_eq!(t.missing, 0, "{mode:?}: a failed event's retry was skipped");
        assert_eq!(t.duplicated, 0, "{mode:?}: a failed event's write was not rolled back");
        assert_eq!(counters.hits(), 0, "{mode:?}: a failed event's dedup row outlived its failure");
        assert_eq!(counters.claimed(), n);
    }
}

fn process_args(s: &'static str, mode: Mode, dir: &TestDir, topic: &str) -> ConsumerArgs {
    ConsumerArgs {
        bootstrap: bootstrap(),
        topic: topic.to_owned(),
        group: random_name("group"),
        log: dir.0.join("handled.log"),
        ordering: "key",
        group_protocol: "classic",
        max_in_flight: 256,
        dedup: s,
        sqlite: (mode == Mode::TxSqlite).then(|| dir.0.join("dedup.sqlite")),
        ..ConsumerArgs::default()
    }
}

/// What the processes did: the log, or the effect rows in transactional mode.
async fn handled(mode: Mode, args: &ConsumerArgs) -> Vec<kafka_handler_tests::events::Handled> {
    if mode.is_transactional() {
        stores::effects(mode, args.sqlite.as_deref().unwrap_or(std::path::Path::new("")), &args.group).await
    } else {
        read_log(&args.log)
    }
}

async fn wait_handled(mode: Mode, args: &ConsumerArgs, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = distinct(&handled(mode, args).await);
        if got >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{mode:?}: only {got} of {n} events handled after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A consumer process SIGKILLed after the effects of 3,000 events but
/// before committing any offset (Redis and transactional PostgreSQL): after
/// the restart every event comes back, is a dedup hit and runs nothing
/// again (0 missing, 0 duplicated, 0 handled again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_effect_before_the_commit_does_not_repeat_it() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    for (name, mode) in [("redis", Mode::Redis), ("tx-postgres", Mode::TxPostgres)] {
        let (keys, n) = (50, 3_000);
        let topic = random_name("kill-dedup");
        create_topic(&bootstrap(), &topic, 3, 1).await;
        let producer = Producer::builder().bootstrap_servers(bootstrap()).build().unwrap();
        produce(&producer, &topic, keys, 0, n).await;
        let dir = TestDir::new(&topic);
        let mut args = process_args(name, mode, &dir, &topic);
        // Nothing is committed before the kill: every event comes back.
        args.commit_interval_ms = 3_600_000;

        let mut first = ConsumerProcess::spawn(BIN, &args, &dir.0, "first");
        wait_handled(mode, &args, n as usize, Duration::from_secs(120)).await;
        // Let the last done marks land: the kill is after the effects.
        tokio::time::sleep(Duration::from_secs(1)).await;
        first.kill();

        args.stats = Some(dir.0.join("second.stats"));
        let mut second = ConsumerProcess::spawn(BIN, &args, &dir.0, "second");
        let deadline = Instant::now() + Duration::from_secs(120);
        while read_stats(args.stats.as_ref().unwrap()).1 < n {
            second.assert_running();
            assert!(Instant::now() < deadline, "{mode:?}: the redelivered events were not all seen as duplicates");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (claimed, hits, _, _) = read_stats(args.stats.as_ref().unwrap());
        let t = tally(&expected(keys, n), &handled(mode, &args).await);
        eprintln!(
            "{mode:?}: SIGKILL before commit: {} missing, {} duplicated; after restart {hits} dedup hits, {claimed} handled again",
            t.missing, t.duplicated
        );
        assert_eq!(t.missing, 0, "{mode:?}: events lost");
        assert_eq!(t.duplicated, 0, "{mode:?}: effects repeated after the restart");
        assert_eq!(claimed, 0, "{mode:?}: the restarted consumer ran the handler again");
        second.terminate(Duration::from_secs(30));
    }
}

/// A second consumer joins while the first is in the middle of slow
/// handlers, and gets their partitions: the handler never runs twice at
/// once for an event and every effect happens once; the new owner did wait
/// on the old owner's claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_with_one_event_in_a_rebalance_run_it_once() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let topic = random_name("rebalance-dedup");
    let group = random_name("group");
    create_topic(&bootstrap(), &topic, 2, 1).await;
    let producer = Producer::builder().bootstrap_servers(bootstrap()).build().unwrap();
    // Two keys on two partitions, two events each.
    let mut ids = Vec::new();
    for (i, key) in ["a", "b", "a", "b"].iter().enumerate() {
        let event = TestEvent { event_id: uuid::Uuid::new_v4().to_string(), key: (*key).into(), seq: i as u64 };
        producer.send(Outgoing::json(&topic, &event).unwrap().key(*key).partition(i as i32 % 2)).await.unwrap();
        ids.push(event.event_id);
    }
    let effects = Arc::new(Effects::default());
    let store = stores::layer(Mode::Redis, std::path::Path::new("")).await.unwrap();
    let consumer = |layer: DedupLayer| {
        consumer_builder(&topic, &group)
            .ordering(Ordering::Partition)
            // The old owner gives the partition up while the handler runs.
            .revoke_timeout(Duration::from_millis(200))
            // The first event of each partition is slow enough to still run
            // when the partition has moved.
            .handler(effects.handler(|e| if e.seq < 2 { Duration::from_secs(12) } else { Duration::ZERO }))
            .dedup(layer)
            .build()
            .unwrap()
    };
    let first_layer = store.clone();
    let second_layer = store.recheck_interval(Duration::from_millis(100));
    let second_counters = second_layer.counters();
    let first = consumer(first_layer);
    let second = consumer(second_layer);
    let e = effects.clone();
    let done = move || e.total() >= 4;
    let first_done = done.clone();
    let first = tokio::spawn(kafka_handler_tests::run_until(first, Duration::from_secs(90), first_done));
    // Join while the first consumer is in the middle of both first events.
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka_handler_tests::run_until(second, Duration::from_secs(90), done).await;
    first.await.unwrap();

    let count = effects.count.lock().unwrap().clone();
    let concurrent = *effects.concurrent.lock().unwrap();
    eprintln!("rebalance: effects {count:?}, {concurrent} concurrent runs, {} waits", second_counters.waits());
    for id in &ids {
        assert_eq!(count.get(id), Some(&1), "event {id}: effect not exactly once");
    }
    assert_eq!(concurrent, 0, "the handler ran twice at once for one event");
    assert!(second_counters.waits() >= 1, "the new owner never met the old owner's claim: the scenario did not happen");
}

/// Transactional PostgreSQL while 50,000 events stream through two
/// consumer processes, one of them SIGKILLed and restarted every 3 s, 6
/// times: every effect row exists exactly once (0 missing, 0 duplicated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_mode_under_repeated_sigkill_has_every_effect_once() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let (keys, n) = (100, 50_000);
    let topic = random_name("tx-kill");
    create_topic(&bootstrap(), &topic, 6, 1).await;
    let dir = TestDir::new(&topic);
    let args = process_args("tx-postgres", Mode::TxPostgres, &dir, &topic);
    let producer = Producer::builder().bootstrap_servers(bootstrap()).build().unwrap();
    let stream = {
        let (producer, topic) = (producer.clone(), topic.clone());
        tokio::spawn(async move {
            for batch in 0..10 {
                produce(&producer, &topic, keys, batch * 5_000, 5_000).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut consumers =
        [ConsumerProcess::spawn(BIN, &args, &dir.0, "c0-0"), ConsumerProcess::spawn(BIN, &args, &dir.0, "c1-0")];
    for round in 1..=6 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let victim = round % 2;
        consumers[victim].kill();
        consumers[victim] = ConsumerProcess::spawn(BIN, &args, &dir.0, &format!("c{victim}-{round}"));
    }
    stream.await.unwrap();
    wait_handled(Mode::TxPostgres, &args, n as usize, Duration::from_secs(240)).await;
    let t = tally(&expected(keys, n), &handled(Mode::TxPostgres, &args).await);
    eprintln!("transactional, 6 SIGKILLs over {n} events: {} missing, {} duplicated", t.missing, t.duplicated);
    assert_eq!(t.missing, 0, "events without an effect row");
    assert_eq!(t.duplicated, 0, "effect rows written twice");
    assert_eq!(t.unexpected, 0);
    for c in &mut consumers {
        c.terminate(Duration::from_secs(30));
    }
}

/// Redis stopped for 20 s while 20,000 events stream in: nothing skipped,
/// nothing doubled, at most 256 events (those past their dedup check)
/// handled while it was down, and the outage was noticed (store errors > 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_20_seconds_skips_nothing_and_doubles_nothing() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    let (keys, n) = (50u64, 20_000u64);
    let topic = random_name("redis-down");
    create_topic(&bootstrap(), &topic, 3, 1).await;
    let producer = Producer::builder().bootstrap_servers(bootstrap()).build().unwrap();
    let stream = {
        let (producer, topic) = (producer.clone(), topic.clone());
        tokio::spawn(async move {
            for batch in 0..40 {
                produce(&producer, &topic, keys, batch * 500, 500).await;
                tokio::time::sleep(Duration::from_millis(750)).await;
            }
        })
    };
    let effects = Arc::new(Effects::default());
    let layer = stores::layer(Mode::Redis, std::path::Path::new("")).await.unwrap();
    let counters = layer.counters();
    let consumer = consumer_builder(&topic, &random_name("group"))
        .handler(effects.handler(|_| Duration::ZERO))
        .dedup(layer)
        .build()
        .unwrap();
    let e = effects.clone();
    let run = tokio::spawn(kafka_handler_tests::run_until(consumer, Duration::from_secs(240), move || {
        e.count.lock().unwrap().len() >= n as usize
    }));
    while effects.total() < 3_000 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(|| testbed_node("stop", "redis")).await.unwrap();
    let at_stop = effects.total();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = effects.total() - at_stop;
    tokio::task::spawn_blocking(|| testbed_node("start", "redis")).await.unwrap();
    run.await.unwrap();
    stream.await.unwrap();

    let count = effects.count.lock().unwrap().clone();
    let duplicated: u32 = count.values().map(|c| c - 1).sum();
    eprintln!(
        "Redis down 20 s: {} events, {duplicated} duplicated, {during} handled while down, {} store errors",
        count.len(),
        counters.store_errors()
    );
    assert_eq!(count.len(), n as usize, "events skipped");
    assert_eq!(duplicated, 0, "effects doubled");
    assert!(during <= 256, "handled {during} events without a dedup check while Redis was down");
    assert!(counters.store_errors() > 0, "the outage was not noticed");
}
