//! The system under test as separate processes: the `orders` binary next to
//! this one, one role per process, as in a deployment.
//!
//! The machine the benchmark runs on stands in for several hosts. While the
//! load runs, the API process and PostgreSQL keep the normal CPU priority;
//! what would run on other hosts — relay, workers, provider simulator, the
//! Kafka broker, Redis, and the PostgreSQL sessions of the relay and the
//! workers — runs at a lower one, so it gets the CPU the API leaves over
//! instead of taking the API's. Each role runs in a session of its own
//! (`setsid`), as a service does; where the kernel shares the CPU out by
//! session (autogroup), the session's nice level is set too, since a
//! thread's own level then only counts within its session.
//!
//! Where the benchmark may make a CPU cgroup (Linux 5.15 or later, as root),
//! those processes also go into one marked `cpu.idle` ([`IdleGroup`]): a
//! niced thread keeps the CPU until its time slice ends when the API or
//! PostgreSQL wakes, an idle group's thread gives it up at once. A host of
//! its own would not make the API wait at all.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running role; killed when dropped.
#[derive(Debug)]
pub(crate) struct Role(Child);

impl Role {
    /// Starts `orders <args>` with `env` in a session of its own and waits
    /// until it announces its address (`… http://ADDR`), if `announces`.
    pub(crate) fn start(
        name: &'static str,
        args: &[&str],
        env: &[(&str, String)],
        announces: bool,
    ) -> anyhow::Result<(Self, Option<String>)> {
        let binary = orders_binary()?;
        let mut command = Command::new("setsid");
        command.arg(&binary);
        command.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdout(Stdio::piped()).stdin(Stdio::null());
        // `setsid` execs the binary: the child's pid is the role's.
        let mut child = command.spawn().map_err(|e| anyhow::anyhow!("starting {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(at) = line.find("http://") {
                    let _ = tx.send(line[at..].trim().to_owned());
                }
            }
        });
        let role = Role(child);
        if !announces {
            return Ok((role, None));
        }
        let url = rx.recv_timeout(Duration::from_secs(120)).map_err(|_| anyhow::anyhow!("{name} did not start"))?;
        Ok((role, Some(url)))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `orders` binary of the same build.
fn orders_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("orders");
    anyhow::ensure!(path.exists(), "{} not found: build the orders package's binaries", path.display());
    Ok(path)
}

/// Sets every thread of each process in `pids` (priority is per thread on
/// Linux) to nice level `nice`, and with `sessions` the CPU group of its
/// session too (not for a PostgreSQL backend: its session is the server's).
pub(crate) fn set_nice(pids: &[u32], nice: i32, sessions: bool) {
    let mut threads = Vec::new();
    for pid in pids {
        if sessions {
            // Absent without autogroup.
            let _ = std::fs::write(format!("/proc/{pid}/autogroup"), nice.to_string());
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            threads.extend(tasks.filter_map(Result::ok).map(|t| t.file_name().to_string_lossy().into_owned()));
        }
    }
    if threads.is_empty() {
        return;
    }
    let _ = Command::new("renice")
        .args(["-n", &nice.to_string(), "-p"])
        .args(&threads)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A CPU cgroup whose processes get only CPU time nothing else wants
/// (`cpu.idle`); removed, its processes moved back, when dropped.
#[derive(Debug)]
pub(crate) struct IdleGroup {
    dir: PathBuf,
    parent: PathBuf,
}

impl IdleGroup {
    /// Makes one in the cgroup v1 `cpu` hierarchy or in cgroup v2, if this
    /// process may; `None` otherwise.
    pub(crate) fn create() -> Option<Self> {
        for parent in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup"] {
            let parent = PathBuf::from(parent);
            if !parent.join("cgroup.procs").exists() {
                continue;
            }
            let dir = parent.join(format!("orders-bench-{}", std::process::id()));
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            if std::fs::write(dir.join("cpu.idle"), "1").is_ok() {
                return Some(IdleGroup { dir, parent });
            }
            let _ = std::fs::remove_dir(&dir);
        }
        None
    }

    /// Moves `pids` (each with all its threads) into the group, or with
    /// `idle` false back out of it.
    pub(crate) fn set(&self, pids: &[u32], idle: bool) {
        let procs = if idle { self.dir.join("cgroup.procs") } else { self.parent.join("cgroup.procs") };
        for pid in pids {
            // A process that has exited meanwhile is no error.
            let _ = std::fs::write(&procs, pid.to_string());
        }
    }
}

impl Drop for IdleGroup {
    fn drop(&mut self) {
        let pids: Vec<u32> = std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        self.set(&pids, false);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The processes of the test bed (`$KH_TESTBED`) of the given kinds
/// (`kafka`, `redis`, `postgres`).
pub(crate) fn testbed_pids(kinds: &[&str]) -> Vec<u32> {
    let Ok(dir) = std::env::var("KH_TESTBED") else { return Vec::new() };
    let Ok(text) = std::fs::read_to_string(format!("{dir}/state.json")) else { return Vec::new() };
    let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
    let Some(components) = state["components"].as_object() else { return Vec::new() };
    components
        .values()
        .filter(|c| c["kind"].as_str().is_some_and(|k| kinds.contains(&k)))
        .filter_map(|c| c["pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

/// CPU time (user + system) each process of `pids` has used so far.
pub(crate) fn cpu_times(pids: &[u32]) -> std::collections::HashMap<u32, Duration> {
    // Clock ticks per second: 100 on every Linux this runs on.
    const TICK: Duration = Duration::from_millis(10);
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name, which may hold spaces: state is
            // the first, utime the 12th, stime the 13th.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: u32 = fields.get(11)?.parse::<u32>().ok()? + fields.get(12)?.parse::<u32>().ok()?;
            Some((*pid, TICK * ticks))
        })
        .collect()
}
