//! The Redis dedup store, on a standalone Redis or a Redis Cluster.
//!
//! One key per (group, event id), holding either the claim's owner, with the
//! lease as its TTL, or a done mark, with the retention as its TTL:
//! `<prefix><group length>:<group>:<event id>`, e.g.
//! `kh:dedup:7:billing:evt-42`. The length (in bytes, of the escaped group)
//! makes the pair unambiguous even when the group or the id holds a `:`; `%`, `{` and `}` are written as
//! `%25`, `%7B` and `%7D`, so that no key carries a cluster hash tag: the
//! keys of a group spread over all slots of a cluster.
//!
//! Needs Redis 7.0 or later (`SET .. NX GET`).

use std::borrow::Cow;
use std::time::Duration;

use futures::future::{BoxFuture, try_join_all};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind};

use super::{Claim, DedupStore, Lease, StoreError};

/// The value of an event handled.
const DONE: &[u8] = b"done";
/// Before the owner in the value of a claim, so that no owner reads as [`DONE`].
const OWNER: &str = "owner:";
/// Connecting and each answer time out after this long: a call fails fast
/// while Redis is away, and the dedup layer retries it with backoff.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Deletes the key if it still holds the claim of this owner.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// A [`DedupStore`] in Redis: a standalone server or a Redis Cluster.
///
/// Every call sends its whole batch at once: as one pipeline to a standalone
/// server; to a cluster, as one command per key, all in flight together, each
/// routed to its key's node (the cluster client multiplexes them over one
/// connection per node), so a batch costs about one round trip either way.
///
/// ```no_run
/// use kafka_handler::dedup::redis::RedisStore;
/// use kafka_handler::middleware::DedupLayer;
///
/// # async fn example() -> Result<(), kafka_handler::dedup::StoreError> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?.key_prefix("orders:dedup:");
/// let dedup = DedupLayer::new(store);
/// # Ok(()) }
/// ```
pub struct RedisStore {
    connection: Connection,
    prefix: String,
    release: Script,
}

#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.connection {
            Connection::Standalone(_) => "standalone",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore").field("mode", &mode).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on a standalone Redis, through `manager` as configured by the
    /// caller; [`connect`](Self::connect) sets timeouts that fail fast.
    pub fn new(manager: ConnectionManager) -> Self {
        Self::with(Connection::Standalone(manager))
    }

    /// A store on a Redis Cluster, through `connection` as configured by the
    /// caller; [`connect_cluster`](Self::connect_cluster) sets timeouts that
    /// fail fast.
    pub fn cluster(connection: ClusterConnection) -> Self {
        Self::with(Connection::Cluster(connection))
    }

    /// Connects to the standalone Redis at `url` (`redis://host:port/db`).
    ///
    /// Connecting and each call time out after 2 s, so that calls fail fast
    /// while Redis is away; the connection is made again by itself once
    /// Redis is back.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::new)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_with_config(client, config).await.map_err(StoreError::new)?;
        Ok(Self::new(manager))
    }

    /// Connects to the Redis Cluster that the nodes at `urls` belong to (any
    /// of them is enough; the others are found). Timeouts as in
    /// [`connect`](Self::connect).
    pub async fn connect_cluster<I>(urls: I) -> Result<Self, StoreError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let client = ClusterClient::builder(urls)
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(1000)
            .build()
            .map_err(StoreError::new)?;
        let connection = client.get_async_connection().await.map_err(StoreError::new)?;
        Ok(Self::cluster(connection))
    }

    /// The start of every key (default `kh:dedup:`). Keep `{` out of it: a
    /// hash tag would put every key into one cluster slot.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn with(connection: Connection) -> Self {
        Self { connection, prefix: "kh:dedup:".to_owned(), release: Script::new(RELEASE) }
    }

    fn key(&self, lease: &Lease) -> String {
        key(&self.prefix, &lease.group, &lease.event_id)
    }

    async fn claim_all(&self, leases: &[Lease], ttl: Duration) -> RedisResult<Vec<Claim>> {
        let ttl = millis(ttl);
        let commands = leases
            .iter()
            .map(|l| redis::cmd("SET").arg(self.key(l)).arg(value(l)).arg("NX").arg("PX").arg(ttl).arg("GET").take());
        let previous: Vec<Option<Vec<u8>>> = self.connection.run(commands.collect(), None).await?;
        Ok(leases
            .iter()
            .zip(previous)
            .map(|(lease, previous)| match previous {
                None => Claim::Acquired,
                Some(v) if v == DONE => Claim::Done,
                // Ours already: a batch sent again after an error that came too late.
                Some(v) if v == value(lease).as_bytes() => Claim::Acquired,
                Some(_) => Claim::InProgress,
            })
            .collect())
    }

    async fn complete_all(&self, leases: &[Lease], retention: Duration) -> RedisResult<()> {
        let retention = millis(retention);
        let commands =
            leases.iter().map(|l| redis::cmd("SET").arg(self.key(l)).arg(DONE).arg("PX").arg(retention).take());
        self.connection.run::<()>(commands.collect(), None).await.map(drop)
    }

    async fn release_all(&self, leases: &[Lease]) -> RedisResult<()> {
        let hash = self.release.get_hash();
        let commands =
            leases.iter().map(|l| redis::cmd("EVALSHA").arg(hash).arg(1).arg(self.key(l)).arg(value(l)).take());
        self.connection.run::<i64>(commands.collect(), Some(&self.release)).await.map(drop)
    }
}

impl Connection {
    /// Sends `commands` at once and returns their replies in order. `script`,
    /// if the commands call it, is loaded first where it is missing.
    async fn run<T: FromRedisValue + Send>(&self, commands: Vec<Cmd>, script: Option<&Script>) -> RedisResult<Vec<T>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Self::Standalone(manager) => {
                let mut pipe = redis::pipe();
                if let Some(script) = script {
                    // In one transaction, so that nothing can flush the
                    // script between its load and its use.
                    pipe.atomic().load_script(script).ignore();
                }
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query_async(&mut manager.clone()).await
            }
            Self::Cluster(cluster) => {
                // Async cluster pipelines must stay within one slot, and the
                // keys of a batch spread over all of them.
                let all = || try_join_all(commands.iter().map(|c| async { c.query_async(&mut cluster.clone()).await }));
                match (all().await, script) {
                    (Err(e), Some(script)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        script.load_async(&mut cluster.clone()).await?;
                        all().await
                    }
                    (result, _) => result,
                }
            }
        }
    }
}

impl DedupStore for RedisStore {
    fn claim<'a>(&'a self, leases: &'a [Lease], ttl: Duration) -> BoxFuture<'a, Result<Vec<Claim>, StoreError>> {
        Box::pin(async move { self.claim_all(leases, ttl).await.map_err(StoreError::new) })
    }

    fn complete<'a>(&'a self, leases: &'a [Lease], retention: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.complete_all(leases, retention).await.map_err(StoreError::new) })
    }

    fn release<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.release_all(leases).await.map_err(StoreError::new) })
    }
}

/// `<prefix><group length>:<group>:<event id>`, escaped.
fn key(prefix: &str, group: &str, event_id: &str) -> String {
    let group = escape(group);
    format!("{prefix}{}:{group}:{}", group.len(), escape(event_id))
}

/// The value of a claim held by the lease's owner.
fn value(lease: &Lease) -> String {
    format!("{OWNER}{}", lease.owner)
}

/// Redis refuses an expiry of 0 ms.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `s` with `%`, `{` and `}` percent-encoded: no hash tag, and still one to one.
fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '{', '}']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(group: &str, event_id: &str) -> String {
        super::key("kh:dedup:", group, event_id)
    }

    #[test]
    fn the_key_names_group_and_event() {
        assert_eq!(key("billing", "evt-42"), "kh:dedup:7:billing:evt-42");
    }

    #[test]
    fn a_colon_cannot_make_two_pairs_one_key() {
        assert_ne!(key("a:b", "c"), key("a", "b:c"));
        assert_ne!(key("a", ""), key("", "a"));
    }

    #[test]
    fn braces_make_no_hash_tag_and_stay_distinct() {
        let k = key("g{1}", "{x}");
        assert!(!k.contains(['{', '}']), "a hash tag would pin every key of the group to one slot: {k}");
        assert_ne!(key("g", "{x}"), key("g", "%7Bx%7D"), "escaping must stay one to one");
    }

    #[test]
    fn expiries_are_at_least_one_millisecond() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
    }
}
