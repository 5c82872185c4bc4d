//! Processes the lab starts inside namespaces, and their cleanup.
//!
//! Every command runs as `ip netns exec NS sh -c SCRIPT` in a process group
//! of its own, so that it, and anything it forks (nginx's workers), can be
//! signalled by that group's id without touching anything else; Ctrl-C at
//! the terminal reaches the lab only, which then stops its groups itself.
//! Live groups are kept in a registry so that an interrupted lab can sweep
//! them all ([`kill_all_registered`]) even when the owning future was not
//! dropped in order.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{ExitStatus, Stdio},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, Result};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

static LIVE_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn registry() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    LIVE_GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends SIGKILL to every process group the lab started and has not
/// reaped yet. For the Ctrl-C path.
pub fn kill_all_registered() {
    let groups: Vec<i32> = registry().iter().copied().collect();
    for pgid in groups {
        nix::sys::signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL).ok();
    }
}

/// A process running inside a namespace.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages ("seed", "pupil 3").
    pub name: String,
    child: Child,
    pid: i32,
    lines: Option<Lines<BufReader<ChildStdout>>>,
    exited: Option<ExitStatus>,
}

/// Environment and files of a process.
#[derive(Debug, Clone, Default)]
pub struct Spec<'a> {
    /// Its namespace.
    pub ns: &'a str,
    /// The `sh -c` script.
    pub script: &'a str,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Where its stderr goes.
    pub log: Option<&'a Path>,
    /// Its working folder.
    pub cwd: Option<&'a Path>,
    /// Its scheduling niceness (0: the lab's own; negative: more CPU).
    pub nice: i32,
}

impl Proc {
    /// Starts `spec.script` in `spec.ns`. Stdout is piped (read it with
    /// [`Proc::next_line`]); stderr goes to the log file.
    pub fn spawn(name: impl Into<String>, spec: Spec<'_>) -> Result<Self> {
        let name = name.into();
        // `nice` execs `ip`, which execs the shell: one process, one pid,
        // every thread it starts at that priority.
        let mut cmd = Command::new("nice");
        let nice = spec.nice.clamp(-20, 19).to_string();
        cmd.args([
            "-n",
            &nice,
            "ip",
            "netns",
            "exec",
            spec.ns,
            "sh",
            "-c",
            spec.script,
        ])
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
        if let Some(cwd) = spec.cwd {
            cmd.current_dir(cwd);
        }
        match spec.log {
            Some(log) => {
                let f = std::fs::File::create(log)
                    .with_context(|| format!("cannot create {}", log.display()))?;
                cmd.stderr(Stdio::from(f));
            }
            None => {
                cmd.stderr(Stdio::null());
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} (ip netns exec)"))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .context("started process has no pid")?;
        registry().insert(pid);
        let lines = child.stdout.take().map(|s| BufReader::new(s).lines());
        Ok(Proc {
            name,
            child,
            pid,
            lines,
            exited: None,
        })
    }

    /// The process (and group) id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The next line on its stdout; `None` at end of output.
    pub async fn next_line(&mut self) -> Result<Option<String>> {
        match &mut self.lines {
            Some(lines) => Ok(lines.next_line().await?),
            None => Ok(None),
        }
    }

    /// Waits for it to exit.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.exited {
            return Ok(s);
        }
        let s = self.child.wait().await?;
        self.reaped(s);
        Ok(s)
    }

    fn reaped(&mut self, s: ExitStatus) {
        self.exited = Some(s);
        registry().remove(&self.pid);
    }

    /// Whether it has exited (without waiting).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.reaped(s);
            }
        }
        self.exited
    }

    /// CPU seconds (user + system) used so far by the live processes of
    /// its group, from /proc. Children already reaped by group members are
    /// included through their parents' counters.
    pub fn group_cpu_secs(&self) -> f64 {
        group_cpu_secs(self.pid)
    }

    /// SIGTERM to the group, then SIGKILL after `grace`. Returns the exit
    /// status of the group leader.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_exited() {
            // The leader is gone; make sure its group is too.
            nix::sys::signal::killpg(Pid::from_raw(self.pid), Signal::SIGKILL).ok();
            return Some(s);
        }
        nix::sys::signal::killpg(Pid::from_raw(self.pid), Signal::SIGTERM).ok();
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                nix::sys::signal::killpg(Pid::from_raw(self.pid), Signal::SIGKILL).ok();
                tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        };
        // Stragglers of the group (forked children) go too.
        nix::sys::signal::killpg(Pid::from_raw(self.pid), Signal::SIGKILL).ok();
        if let Some(s) = status {
            self.reaped(s);
        }
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The group id stays reserved while any member lives, so this can
        // only reach processes the lab started.
        if self.exited.is_none() {
            nix::sys::signal::killpg(Pid::from_raw(self.pid), Signal::SIGKILL).ok();
        }
        registry().remove(&self.pid);
    }
}

/// Clock ticks per second for /proc/*/stat times. Linux has reported 100
/// on every mainstream architecture for decades.
pub(crate) const CLK_TCK: f64 = 100.0;

/// CPU seconds of the live processes whose process group is `pgid`.
pub fn group_cpu_secs(pgid: i32) -> f64 {
    group_stats(pgid).cpu_secs
}

/// What the live processes of one group have used so far, from /proc:
/// read just before a process is stopped, so it covers its whole life.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GroupStats {
    /// User + system CPU seconds (reaped children included).
    pub cpu_secs: f64,
    /// Voluntary context switches of every thread (a thread that blocked:
    /// waiting for a packet, a timer, a lock).
    pub voluntary_switches: u64,
    /// Involuntary context switches of every thread (preempted: more
    /// runnable threads than cores).
    pub involuntary_switches: u64,
    /// Threads alive.
    pub threads: u64,
    /// Peak resident memory (VmHWM), summed over the group's processes, KiB.
    pub peak_rss_kib: u64,
}

impl Proc {
    /// [`GroupStats`] of its group.
    pub fn group_stats(&self) -> GroupStats {
        group_stats(self.pid)
    }
}

/// [`GroupStats`] of the live processes whose process group is `pgid`.
pub fn group_stats(pgid: i32) -> GroupStats {
    let mut g = GroupStats::default();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return g;
    };
    let mut ticks = 0u64;
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((group, t)) = parse_stat(&stat) else {
            continue;
        };
        if group != pgid {
            continue;
        }
        ticks += t;
        if let Ok(status) = std::fs::read_to_string(entry.path().join("status")) {
            g.peak_rss_kib += status_field(&status, "VmHWM:").unwrap_or(0);
        }
        let Ok(tasks) = std::fs::read_dir(entry.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            g.threads += 1;
            g.voluntary_switches += status_field(&status, "voluntary_ctxt_switches:").unwrap_or(0);
            g.involuntary_switches +=
                status_field(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
        }
    }
    g.cpu_secs = ticks as f64 / CLK_TCK;
    g
}

/// The first number after `key` on its line of a /proc status file.
fn status_field(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// (pgrp, utime + stime + cutime + cstime) from a /proc/PID/stat line.
fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12)
    // cutime(13) cstime(14).
    let pgrp = fields.get(2)?.parse().ok()?;
    let mut t = 0u64;
    for i in 11..=14 {
        t += fields.get(i)?.parse::<i64>().ok()?.max(0) as u64;
    }
    Some((pgrp, t))
}

/// CPU seconds used by the lab's reaped children so far (getrusage).
pub fn children_cpu_secs() -> f64 {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => 0.0,
    }
}

/// Machine-wide CPU time counters from /proc/stat: (busy, total) ticks.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&stat)
}

fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already counted in user.
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines_parse() {
        let line =
            "1234 (nginx: worker (x)) S 1 1234 1234 0 -1 4194560 1 0 0 0 7 3 2 1 20 0 1 0 1 1 1";
        assert_eq!(parse_stat(line), Some((1234, 13)));
        let machine = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_proc_stat(machine), Some((150, 1000)));
    }

    #[test]
    fn status_fields_parse() {
        let status = "Name:\tclasse\nVmHWM:\t   20480 kB\nvoluntary_ctxt_switches:\t17\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(status_field(status, "VmHWM:"), Some(20480));
        assert_eq!(status_field(status, "voluntary_ctxt_switches:"), Some(17));
        assert_eq!(status_field(status, "nonvoluntary_ctxt_switches:"), Some(3));
        assert_eq!(status_field(status, "VmRSS:"), None);
    }

    #[test]
    fn our_own_group_has_threads_and_memory() {
        let me = nix::unistd::getpgrp().as_raw();
        let g = group_stats(me);
        assert!(g.threads >= 1, "{g:?}");
        assert!(g.peak_rss_kib > 0, "{g:?}");
    }
}
