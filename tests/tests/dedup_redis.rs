//! The Redis dedup store against a real Redis and a real 3-node Redis
//! Cluster: claims, done marks, releases and expiry as the `DedupStore` docs
//! promise; batches of 1000 in one call; keys spread over the cluster; calls
//! that fail fast while Redis is away and work again once it is back.
//!
//! Every test uses its own random group (or key prefix), so tests never
//! share state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_handler::dedup::redis::RedisStore;
use kafka_handler::dedup::{Claim, DedupStore, Lease};
use kafka_handler_tests::{init_tracing, random_name, redis_cluster_urls, redis_url};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(600);

async fn standalone() -> RedisStore {
    init_tracing();
    RedisStore::connect(&redis_url()).await.expect("connect to REDIS_URL")
}

async fn cluster() -> RedisStore {
    init_tracing();
    RedisStore::connect_cluster(redis_cluster_urls()).await.expect("connect to REDIS_CLUSTER_URLS")
}

/// Runs a scenario against the standalone Redis and against the cluster.
macro_rules! standalone_and_cluster {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn standalone() {
                super::$scenario(&super::standalone().await).await;
            }

            #[tokio::test]
            async fn cluster() {
                super::$scenario(&super::cluster().await).await;
            }
        }
    )*};
}

standalone_and_cluster!(
    claim_done_and_release,
    leases_and_done_marks_expire,
    a_batch_of_1000_in_one_call,
    groups_and_ids_never_collide,
    release_works_after_redis_lost_its_scripts,
);

fn lease(group: &str, event_id: &str, owner: &str) -> Lease {
    Lease { group: Arc::from(group), event_id: Arc::from(event_id), owner: Arc::from(owner) }
}

async fn claim(store: &RedisStore, lease: &Lease, ttl: Duration) -> Claim {
    let claims = store.claim(std::slice::from_ref(lease), ttl).await.expect("claim");
    assert_eq!(claims.len(), 1, "one answer per lease");
    claims[0]
}

async fn claim_done_and_release(store: &RedisStore) {
    let group = random_name("dedup");
    let a = lease(&group, "evt-1", "a");
    let b = lease(&group, "evt-1", "b");

    assert_eq!(claim(store, &a, LEASE).await, Claim::Acquired, "the first claim takes the event");
    assert_eq!(claim(store, &b, LEASE).await, Claim::InProgress, "another owner's live claim holds the event");
    assert_eq!(claim(store, &a, LEASE).await, Claim::Acquired, "the owner claiming again still holds it");

    store.release(std::slice::from_ref(&b)).await.expect("release");
    assert_eq!(claim(store, &b, LEASE).await, Claim::InProgress, "a release by a non-owner leaves the claim alone");

    store.release(std::slice::from_ref(&a)).await.expect("release");
    assert_eq!(claim(store, &b, LEASE).await, Claim::Acquired, "once its owner released it, the event can run again");

    store.complete(std::slice::from_ref(&b), RETENTION).await.expect("complete");
    assert_eq!(claim(store, &a, LEASE).await, Claim::Done, "a done event is not claimed again");
    store.release(std::slice::from_ref(&b)).await.expect("release");
    assert_eq!(claim(store, &a, LEASE).await, Claim::Done, "a release does not undo a done mark");
}

async fn leases_and_done_marks_expire(store: &RedisStore) {
    let group = random_name("dedup-ttl");
    let a = lease(&group, "evt-1", "a");
    let b = lease(&group, "evt-1", "b");
    let short = Duration::from_millis(300);

    assert_eq!(claim(store, &a, short).await, Claim::Acquired);
    assert_eq!(claim(store, &b, LEASE).await, Claim::InProgress);
    tokio::time::sleep(short * 2).await;
    assert_eq!(claim(store, &b, LEASE).await, Claim::Acquired, "an expired lease frees the event for another owner");

    store.complete(std::slice::from_ref(&b), short).await.expect("complete");
    assert_eq!(claim(store, &a, LEASE).await, Claim::Done);
    tokio::time::sleep(short * 2).await;
    assert_eq!(claim(store, &a, LEASE).await, Claim::Acquired, "a done mark is forgotten after its retention");
}

async fn a_batch_of_1000_in_one_call(store: &RedisStore) {
    let group = random_name("dedup-batch");
    let owned_by =
        |owner: &str| -> Vec<Lease> { (0..1000).map(|i| lease(&group, &format!("evt-{i}"), owner)).collect() };
    let (a, b) = (owned_by("a"), owned_by("b"));

    let started = Instant::now();
    let claims = store.claim(&a, LEASE).await.expect("claim 1000");
    eprintln!("{store:?}: 1000 claims in one call took {:?}", started.elapsed());
    assert!(claims.iter().all(|c| *c == Claim::Acquired), "every fresh event of a batch is acquired: {claims:?}");
    let claims = store.claim(&b, LEASE).await.expect("claim 1000");
    assert!(claims.iter().all(|c| *c == Claim::InProgress), "every event claimed by `a` is in progress for `b`");

    store.complete(&a[..500], RETENTION).await.expect("complete 500");
    store.release(&a[500..]).await.expect("release 500");
    let claims = store.claim(&b, LEASE).await.expect("claim 1000");
    assert_eq!(claims.len(), 1000, "one answer per lease, in order");
    assert!(claims[..500].iter().all(|c| *c == Claim::Done), "the completed half is done");
    assert!(claims[500..].iter().all(|c| *c == Claim::Acquired), "the released half is acquired by `b`");

    // Two owners of one event in the same batch: the claim is atomic per lease.
    let twice = [lease(&group, "evt-twice", "p"), lease(&group, "evt-twice", "q")];
    let mut claims = store.claim(&twice, LEASE).await.expect("claim");
    claims.sort_by_key(|c| *c as u8);
    assert_eq!(claims, [Claim::Acquired, Claim::InProgress], "exactly one owner gets an event");
}

async fn groups_and_ids_never_collide(store: &RedisStore) {
    let group = random_name("dedup-keys");
    let other_group = random_name("dedup-keys");
    assert_eq!(claim(store, &lease(&group, "evt-1", "a"), LEASE).await, Claim::Acquired);
    assert_eq!(
        claim(store, &lease(&other_group, "evt-1", "b"), LEASE).await,
        Claim::Acquired,
        "each group handles an event once, independently of other groups"
    );

    let pairs =
        [(format!("{group}:x"), "y"), (group.clone(), "x:y"), (group.clone(), "{x}"), (group.clone(), "%7Bx%7D")];
    for (i, (g, id)) in pairs.iter().enumerate() {
        assert_eq!(
            claim(store, &lease(g, id, &format!("owner-{i}")), LEASE).await,
            Claim::Acquired,
            "({g}, {id}) has a key of its own: `:`, braces and escapes cannot make two pairs one key"
        );
    }
}

async fn release_works_after_redis_lost_its_scripts(store: &RedisStore) {
    // A restarted or failed-over node has no scripts; other stores still
    // working on these servers load theirs again the same way. The
    // standalone and cluster variants flush every server: one at a time.
    static FLUSHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = FLUSHING.lock().await;
    for url in std::iter::once(redis_url()).chain(redis_cluster_urls()) {
        let mut node = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        redis::cmd("SCRIPT").arg("FLUSH").exec_async(&mut node).await.unwrap();
    }
    let group = random_name("dedup-noscript");
    let leases: Vec<Lease> = (0..20).map(|i| lease(&group, &format!("evt-{i}"), "a")).collect();
    store.claim(&leases, LEASE).await.expect("claim");
    store.release(&leases).await.expect("a release loads its script where it is missing");
    let others: Vec<Lease> = (0..20).map(|i| lease(&group, &format!("evt-{i}"), "b")).collect();
    let claims = store.claim(&others, LEASE).await.expect("claim");
    assert!(claims.iter().all(|c| *c == Claim::Acquired), "the release took effect: {claims:?}");
}

#[tokio::test]
async fn keys_of_one_group_spread_over_every_cluster_node() {
    let prefix = format!("{}:", random_name("kh-spread"));
    let store = cluster().await.key_prefix(&prefix);
    let group = random_name("dedup-spread");
    let leases: Vec<Lease> = (0..300).map(|i| lease(&group, &format!("evt-{i}"), "a")).collect();
    store.claim(&leases, LEASE).await.expect("claim 300");

    let mut per_node = Vec::new();
    for url in redis_cluster_urls() {
        let mut node = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut node).await.unwrap();
        per_node.push(keys.len());
    }
    assert_eq!(per_node.iter().sum::<usize>(), 300, "every claim is one key: {per_node:?}");
    assert!(
        per_node.iter().all(|&n| n > 0),
        "the keys of one group spread over the cluster, not into one slot: {per_node:?}"
    );
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_fast() {
    let url = format!("redis://{}", closed_port_address().await);
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), RedisStore::connect(&url)).await;
    assert!(matches!(result, Ok(Err(_))), "no Redis: an error, not a hang");
    assert!(started.elapsed() < Duration::from_secs(5), "the error comes within seconds: {:?}", started.elapsed());

    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), RedisStore::connect_cluster([&url])).await;
    assert!(matches!(result, Ok(Err(_))), "no cluster: an error, not a hang");
    assert!(started.elapsed() < Duration::from_secs(5), "the error comes within seconds: {:?}", started.elapsed());
}

#[tokio::test]
async fn calls_fail_fast_while_redis_is_away_and_work_again_once_it_is_back() {
    init_tracing();
    let mut proxy = Proxy::start(redis_url().trim_start_matches("redis://").trim_end_matches('/')).await;
    let store =
        RedisStore::connect(&format!("redis://127.0.0.1:{}", proxy.port)).await.expect("connect through the proxy");
    let group = random_name("dedup-outage");
    assert_eq!(claim(&store, &lease(&group, "evt-1", "a"), LEASE).await, Claim::Acquired);

    proxy.stop().await;
    for i in 2..5 {
        let l = lease(&group, &format!("evt-{i}"), "a");
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), store.claim(std::slice::from_ref(&l), LEASE)).await;
        assert!(matches!(result, Ok(Err(_))), "while Redis is away a call is an error, never a hang or a guess");
        eprintln!("a call while Redis is away failed after {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(5), "the error comes within seconds: {:?}", started.elapsed());
    }

    proxy.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let l = lease(&group, "evt-5", "a");
    loop {
        match store.claim(std::slice::from_ref(&l), LEASE).await {
            Ok(claims) => {
                assert_eq!(claims, [Claim::Acquired]);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "the store did not reconnect by itself: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An address nothing listens on.
async fn closed_port_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A TCP proxy in front of the shared Redis, to take "Redis" away and bring
/// it back on the same port without touching the real one.
struct Proxy {
    port: u16,
    target: String,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = Some(tokio::spawn(serve(listener, target.to_owned())));
        Self { port, target: target.to_owned(), task }
    }

    /// Closes the port and every connection through it.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("bind the proxy port again");
        self.task = Some(tokio::spawn(serve(listener, self.target.clone())));
    }
}

async fn serve(listener: TcpListener, target: String) {
    // Dropped with the task: aborts every connection.
    let mut connections = JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        let target = target.clone();
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
