//! Consumer processes that tests start, stop, kill and count.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a test consumer process is configured.
#[derive(Clone, Debug)]
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
}

/// A running `kh-test-consumer`; killed when dropped.
#[derive(Debug)]
pub struct ConsumerProcess {
    child: Child,
    pub stderr_path: PathBuf,
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
            .env("RUST_LOG", std::env::var("KH_TEST_CONSUMER_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start kh-test-consumer");
        ConsumerProcess { child, stderr_path }
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
