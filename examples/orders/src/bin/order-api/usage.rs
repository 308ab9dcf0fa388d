//! CPU time of every process of the system, from `/proc`: the roles, and the
//! test bed's Kafka broker, Redis and PostgreSQL (the server with all its
//! backends, those that have exited included).

use std::time::Duration;

/// Clock ticks per second: 100 on every Linux this runs on.
const TICK: Duration = Duration::from_millis(10);

/// The processes whose CPU time counts, by name.
#[derive(Debug)]
pub(crate) struct Processes {
    named: Vec<(&'static str, u32)>,
    /// The PostgreSQL server's main process, if the test bed names it.
    postmaster: Option<u32>,
}

impl Processes {
    /// `roles` and the test bed's Kafka, Redis and PostgreSQL.
    pub(crate) fn new(roles: &[(&'static str, u32)]) -> Self {
        let mut named = roles.to_vec();
        named.extend(super::roles::testbed_pids(&["kafka"]).into_iter().map(|p| ("kafka", p)));
        named.extend(super::roles::testbed_pids(&["redis"]).into_iter().map(|p| ("redis", p)));
        let postmaster = super::roles::testbed_pids(&["postgres"]).first().copied();
        Self { named, postmaster }
    }

    /// CPU time used so far per name, in the order of [`Self::names`].
    pub(crate) fn cpu(&self) -> Vec<Duration> {
        let mut used: Vec<Duration> = self.named.iter().map(|(_, pid)| ticks(*pid, false)).collect();
        if let Some(pm) = self.postmaster {
            // Exited backends' time is in the server's children's fields.
            let mut total = ticks(pm, true);
            if let Ok(dir) = std::fs::read_dir("/proc") {
                for entry in dir.filter_map(Result::ok) {
                    let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
                    if parent(pid) == Some(pm) {
                        total += ticks(pid, false);
                    }
                }
            }
            used.push(total);
        }
        used
    }

    /// The names, in the order of [`Self::cpu`].
    pub(crate) fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.named.iter().map(|(n, _)| *n).collect();
        if self.postmaster.is_some() {
            names.push("postgres");
        }
        names
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces): state first, the parent second, utime the 12th, stime the 13th,
/// the reaped children's the 14th and 15th.
fn stat(pid: u32) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    Some(rest.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect())
}

fn parent(pid: u32) -> Option<u32> {
    stat(pid).and_then(|f| f.first().map(|p| *p as u32))
}

fn ticks(pid: u32, children: bool) -> Duration {
    let Some(f) = stat(pid) else { return Duration::ZERO };
    let own = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    let reaped = if children { f.get(12).copied().unwrap_or(0) + f.get(13).copied().unwrap_or(0) } else { 0 };
    TICK * (own + reaped) as u32
}
