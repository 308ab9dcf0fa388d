//! Consumer processes that tests start, stop, kill and count.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a test consumer process is configured.
#[derive(Clone, Debug, Default)]
pub struct ConsumerArgs {
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
    pub log: PathBuf,
    pub ordering: &'static str,
    pub group_protocol: &'static str,
    pub delay_ms: u64,
    pub max_in_flight: usize,
    /// Sequence numbers divisible by this fail permanently (0: none).
    pub fail_every: u64,
    /// Dedup: `none`, `redis`, `redis-cluster`, `postgres`, `sqlite`,
    /// `tx-postgres` or `tx-sqlite` (empty: none).
    pub dedup: &'static str,
    /// The SQLite file of the SQLite modes.
    pub sqlite: Option<PathBuf>,
    /// `auto.commit.interval.ms` (0: the default).
    pub commit_interval_ms: u64,
    /// Where the process writes its dedup counters (`claimed hits waits
    /// store_errors`), rewritten every 100 ms.
    pub stats: Option<PathBuf>,
}

/// A running `kh-test-consumer`; killed when dropped.
#[derive(Debug)]
pub struct ConsumerProcess {
    child: Child,
    pub stderr_path: PathBuf,
}

/// Reads a process's dedup counters: (claimed, hits, waits, store errors).
pub fn read_stats(path: &Path) -> (u64, u64, u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let n: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    match n[..] {
        [a, b, c, d] => (a, b, c, d),
        _ => (0, 0, 0, 0),
    }
}

impl ConsumerProcess {
    /// Starts the consumer binary `bin` (from `env!("CARGO_BIN_EXE_kh-test-consumer")`).
    pub fn spawn(bin: &str, args: &ConsumerArgs, dir: &Path, name: &str) -> Self {
        let stderr_path = dir.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = Command::new(bin)
            .args(["--bootstrap", &args.bootstrap, "--topic", &args.topic, "--group", &args.group])
            .arg("--log")
            .arg(&args.log)
            .args(["--ordering", args.ordering, "--group-protocol", args.group_protocol])
            .args(["--delay-ms", &args.delay_ms.to_string()])
            .args(["--max-in-flight", &args.max_in_flight.to_string()])
            .args(["--fail-every", &args.fail_every.to_string()])
            .args(["--dedup", if args.dedup.is_empty() { "none" } else { args.dedup }])
            .args(["--commit-interval-ms", &args.commit_interval_ms.to_string()])
            .args(args.sqlite.iter().flat_map(|p| [std::ffi::OsStr::new("--sqlite"), p.as_os_str()]))
            .args(args.stats.iter().flat_map(|p| [std::ffi::OsStr::new("--stats"), p.as_os_str()]))
            .env("RUST_LOG", std::env::var("KH_TEST_CONSUMER_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start kh-test-consumer");
        ConsumerProcess { child, stderr_path }
    }

    /// The process id, as the handled-event log records it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to finish or commit anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a graceful exit (fails after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "consumer exited with {status}; see {}", self.stderr_path.display());
                return;
            }
            assert!(Instant::now() < deadline, "consumer did not stop within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails the test if the process died on its own.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            let log = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!("consumer exited with {status}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
