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

use std::time::Duration;

use futures::future::{BoxFuture, try_join_all};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo, RedisResult, Script, ServerErrorKind};

use super::{Claim, DedupStore, Lease, StoreError};

/// The value of an event handled.
const DONE: &[u8] = b"done";
/// Before the owner in the value of a claim, so that no owner reads as [`DONE`].
const OWNER: &[u8] = b"owner:";
/// Connecting and each answer time out after this long: a call fails fast
/// while Redis is away, and the dedup layer retries it with backoff.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Deletes each key that still holds the claim `ARGV[i]`.
const RELEASE: &str = r"
local released = 0
for i, key in ipairs(KEYS) do
    if redis.call('GET', key) == ARGV[i] then
        released = released + redis.call('DEL', key)
    end
end
return released
";

/// A [`DedupStore`] in Redis: a standalone server or a Redis Cluster.
///
/// Every call sends its whole batch at once: as one pipeline to a standalone
/// server (a release: one script call over all of its keys); to a cluster, as
/// one command per key, all in flight together, each routed to its key's node
/// (the cluster client multiplexes them over one connection per node), so a
/// batch costs about one round trip either way.
///
/// Claims and done marks are plain commands, not a script over the batch: a
/// script's `redis.call` per key costs the server about a third more than the
/// same command in a pipeline.
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
        let info = url.into_connection_info().map_err(StoreError::new)?.set_tcp_settings(tcp_settings());
        let client = redis::Client::open(info).map_err(StoreError::new)?;
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
            .tcp_settings(tcp_settings())
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

    async fn claim_all(&self, leases: &[Lease], ttl: Duration) -> RedisResult<Vec<Claim>> {
        let ttl = millis(ttl);
        let mut buf = Buffers::default();
        let commands = leases.iter().map(|l| {
            let (key, value) = buf.key_and_value(&self.prefix, l);
            redis::cmd("SET").arg(key).arg(value).arg("NX").arg("PX").arg(ttl).arg("GET").take()
        });
        let previous: Vec<Option<Vec<u8>>> = match &self.connection {
            Connection::Standalone(manager) => {
                let mut pipe = redis::Pipeline::with_capacity(leases.len());
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query_async(&mut manager.clone()).await?
            }
            Connection::Cluster(cluster) => per_key(cluster, commands.collect(), None).await?,
        };
        Ok(leases
            .iter()
            .zip(previous)
            .map(|(lease, previous)| match previous {
                None => Claim::Acquired,
                Some(v) if v == DONE => Claim::Done,
                // Ours already: a batch sent again after an error that came too late.
                Some(v) if v.strip_prefix(OWNER) == Some(lease.owner.as_bytes()) => Claim::Acquired,
                Some(_) => Claim::InProgress,
            })
            .collect())
    }

    async fn complete_all(&self, leases: &[Lease], retention: Duration) -> RedisResult<()> {
        let retention = millis(retention);
        let mut buf = Buffers::default();
        let commands = leases
            .iter()
            .map(|l| redis::cmd("SET").arg(buf.key(&self.prefix, l)).arg(DONE).arg("PX").arg(retention).take());
        match &self.connection {
            Connection::Standalone(manager) => {
                let mut pipe = redis::Pipeline::with_capacity(leases.len());
                for command in commands {
                    pipe.add_command(command).ignore();
                }
                pipe.query_async(&mut manager.clone()).await
            }
            Connection::Cluster(cluster) => per_key::<()>(cluster, commands.collect(), None).await.map(drop),
        }
    }

    async fn release_all(&self, leases: &[Lease]) -> RedisResult<()> {
        let mut buf = Buffers::default();
        match &self.connection {
            Connection::Standalone(manager) => {
                // One call over the whole batch: `KEYS[i]`, `ARGV[i]`.
                let mut call = Cmd::new();
                call.arg("EVALSHA").arg(self.release.get_hash()).arg(leases.len());
                for lease in leases {
                    call.arg(buf.key(&self.prefix, lease));
                }
                for lease in leases {
                    call.arg(buf.value(lease));
                }
                eval::<i64>(manager, &call, &self.release).await.map(drop)
            }
            Connection::Cluster(cluster) => {
                let commands = leases.iter().map(|l| {
                    let (key, value) = buf.key_and_value(&self.prefix, l);
                    redis::cmd("EVALSHA").arg(self.release.get_hash()).arg(1).arg(key).arg(value).take()
                });
                per_key::<i64>(cluster, commands.collect(), Some(&self.release)).await.map(drop)
            }
        }
    }
}

/// Calls a script on a standalone server, loading it first if the server
/// does not have it (after a restart or `SCRIPT FLUSH`). A script that is
/// missing did not run, so calling again is safe.
async fn eval<T: FromRedisValue>(manager: &ConnectionManager, call: &Cmd, script: &Script) -> RedisResult<T> {
    let mut manager = manager.clone();
    match call.query_async(&mut manager).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(&mut manager).await?;
            call.query_async(&mut manager).await
        }
        result => result,
    }
}

/// Sends `commands` to a cluster at once, each to its key's node, and returns
/// their replies in order. `script`, if the commands call it, is loaded where
/// it is missing.
async fn per_key<T: FromRedisValue + Send>(
    cluster: &ClusterConnection,
    commands: Vec<Cmd>,
    script: Option<&Script>,
) -> RedisResult<Vec<T>> {
    // Async cluster pipelines must stay within one slot, and the keys of a
    // batch spread over all of them.
    let all = || try_join_all(commands.iter().map(|c| async { c.query_async(&mut cluster.clone()).await }));
    match (all().await, script) {
        (Err(e), Some(script)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(&mut cluster.clone()).await?;
            all().await
        }
        (result, _) => result,
    }
}

/// Where keys and values are written, reused from lease to lease.
#[derive(Default)]
struct Buffers {
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Buffers {
    /// `<prefix><group length>:<group>:<event id>`, escaped.
    fn key(&mut self, prefix: &str, lease: &Lease) -> &[u8] {
        write_key(&mut self.key, prefix, &lease.group, &lease.event_id);
        &self.key
    }

    /// The value of a claim held by the lease's owner.
    fn value(&mut self, lease: &Lease) -> &[u8] {
        self.value.clear();
        self.value.extend_from_slice(OWNER);
        self.value.extend_from_slice(lease.owner.as_bytes());
        &self.value
    }

    fn key_and_value(&mut self, prefix: &str, lease: &Lease) -> (&[u8], &[u8]) {
        self.value(lease);
        write_key(&mut self.key, prefix, &lease.group, &lease.event_id);
        (&self.key, &self.value)
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

/// Writes `<prefix><group length>:<group>:<event id>`, escaped, into `out`.
fn write_key(out: &mut Vec<u8>, prefix: &str, group: &str, event_id: &str) {
    use std::io::Write as _;
    out.clear();
    out.extend_from_slice(prefix.as_bytes());
    let _ = write!(out, "{}:", escaped_len(group));
    escape_into(out, group);
    out.push(b':');
    escape_into(out, event_id);
}

/// `TCP_NODELAY`: a batch goes out at once instead of waiting for the
/// acknowledgement of the one before it (Nagle's algorithm), which would
/// serialize the batches in flight.
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// Redis refuses an expiry of 0 ms.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `s` with `%`, `{` and `}` percent-encoded, appended to `out`: no hash tag,
/// and still one to one.
fn escape_into(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'{' => out.extend_from_slice(b"%7B"),
            b'}' => out.extend_from_slice(b"%7D"),
            b => out.push(b),
        }
    }
}

/// The length of `s` escaped.
fn escaped_len(s: &str) -> usize {
    s.len() + 2 * s.bytes().filter(|b| matches!(b, b'%' | b'{' | b'}')).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(group: &str, event_id: &str) -> String {
        let mut out = Vec::new();
        write_key(&mut out, "kh:dedup:", group, event_id);
        String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
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
