//! One run: build the network, start the seed, start the pupils, wait for
//! them (bounded), stop everyone, count and verify, tear down.
//!
//! ```text
//! build topology ─ setup (seed ns) ─ seed ─ ready? ─ t0 ─┬─ pupil 1 ─ done ─ seeding ─┐
//!                                                        ├─ pupil 2 ─ done ─ seeding ─┤ stop all when the
//!                                                        └─ ...  (churn: stop some at t)┘ last one is done
//!                                  ─ counters, stats files, verify outputs, destroy
//! ```
//!
//! A pupil is a task that owns its process: it waits for its start time,
//! spawns, reports `Done` (first stdout line or exit 0, as the scenario
//! says), keeps the process alive while it seeds, and stops it when told.
//! The run loop only listens to events and a clock, so the run ends at its
//! deadline whatever the processes do.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{atomic::AtomicUsize, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use classe_bundle::{ProviderInfo, Ticket};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use crate::{
    lesson::Lesson,
    metrics::{self, Bounds},
    net::{self, Probe, Shape, Topology},
    proc::{self, Proc, Spec},
    scenario::{Accounting, PupilDone, Scenario, SeedReady, HTTP_PORT},
};

/// Version tag of a results line.
pub const SCHEMA: &str = "classe-lab/1";

/// How long a process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
/// How long setup and seed start may take.
const SEED_START: Duration = Duration::from_secs(120);

/// Pupils that leave early.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    /// Fraction of the pupils that stop (spread evenly over the pupils).
    pub fraction: f64,
    /// Seconds after the start when they stop.
    pub at_secs: f64,
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The contender.
    pub scenario: Scenario,
    /// Seed upload and download (bits/s; download `None` = unshaped).
    pub seed_up: u64,
    /// Seed download.
    pub seed_down: Option<u64>,
    /// Each pupil's upload, one per pupil.
    pub pupil_up: Vec<u64>,
    /// Each pupil's download, one per pupil.
    pub pupil_down: Vec<Option<u64>>,
    /// One-way delay at every host's egress, if netem exists.
    pub delay_ms: Option<f64>,
    /// Seconds between consecutive pupil starts (0: together).
    pub stagger_secs: f64,
    /// Pupils that leave early.
    pub churn: Option<Churn>,
    /// The run is cut at this time after the pupils start.
    pub timeout: Duration,
    /// The classe binary, for scenarios that use `$CLASSE`.
    pub classe_bin: Option<PathBuf>,
    /// What that binary is, for the record.
    pub classe_info: Option<crate::contender::ClasseInfo>,
    /// Where the run's temporary folder goes.
    pub work_root: PathBuf,
    /// Keep the run's folder (homes, outputs, logs) after a normal end.
    pub keep: bool,
    /// Details of the emulated network (leaf queues, offloads, IPv6).
    pub net: net::NetOptions,
    /// Niceness of the seed's processes. Every host shares this machine's
    /// cores; a school's seed node has its own. With hundreds of pupils
    /// a seed at the pupils' priority gets 1/N of the CPU (its handshakes
    /// then time out), which measures the emulation, not the seed.
    pub seed_nice: i32,
}

impl RunConfig {
    /// Number of pupils.
    pub fn pupils(&self) -> usize {
        self.pupil_up.len()
    }
}

/// The machine the run was on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// CPU model name.
    pub cpu: String,
    /// Memory in GiB.
    pub mem_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads it from /proc.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            mem_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// The parameters of a run, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Number of pupils.
    pub n: usize,
    /// Lesson size in bytes.
    pub file_bytes: u64,
    /// Number of files it is split into.
    pub files: usize,
    /// Seed upload, bits/s.
    pub seed_up_bps: u64,
    /// Seed download, bits/s (`null`: unshaped).
    pub seed_down_bps: Option<u64>,
    /// Each pupil's upload, bits/s.
    pub pupil_up_bps: Vec<u64>,
    /// Each pupil's download, bits/s.
    pub pupil_down_bps: Vec<Option<u64>>,
    /// Requested one-way delay.
    pub delay_ms: Option<f64>,
    /// Whether that delay was emulated (netem present).
    pub delay_emulated: bool,
    /// Seconds between pupil starts.
    pub stagger_secs: f64,
    /// Early leavers.
    pub churn: Option<Churn>,
    /// The run's time limit.
    pub timeout_secs: f64,
    /// Whether pupils got tickets extended with finished pupils.
    pub extend_ticket: bool,
    /// The classe binary used, if the scenario uses one.
    #[serde(default)]
    pub classe: Option<crate::contender::ClasseInfo>,
    /// Details of the emulated network.
    #[serde(default)]
    pub net: net::NetOptions,
    /// Niceness of the seed's processes.
    #[serde(default)]
    pub seed_nice: i32,
}

/// What happened to one pupil.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PupilResult {
    /// 1-based.
    pub index: usize,
    /// Its address.
    pub ip: String,
    /// Upload, bits/s.
    pub up_bps: u64,
    /// Download, bits/s.
    pub down_bps: Option<u64>,
    /// When it started, seconds after t0.
    pub start_secs: Option<f64>,
    /// When it was done, seconds after t0 (its completion time).
    pub done_secs: Option<f64>,
    /// Done minus start.
    pub elapsed_secs: Option<f64>,
    /// Done with the lesson written.
    pub completed: bool,
    /// Stopped by churn.
    pub churned: bool,
    /// Its output matched the source (`None`: not checked, not completed).
    pub verified: Option<bool>,
    /// How its process ended (`exit 0`, `signal 15`, ...).
    pub exit: Option<String>,
    /// The fetch's own `seconds` (classe `--json`).
    pub reported_secs: Option<f64>,
    /// Payload bytes received (classe `--json`).
    pub received_bytes: Option<u64>,
    /// Of which from the seed.
    pub from_seed_bytes: Option<u64>,
    /// Of which from other pupils.
    pub from_pupils_bytes: Option<u64>,
    /// Payload bytes it sent (classe `--stats`).
    pub sent_app_bytes: Option<u64>,
    /// Interface bytes sent (all layers).
    pub tx_if_bytes: u64,
    /// Interface bytes received (all layers).
    pub rx_if_bytes: u64,
    /// Interface packets sent.
    #[serde(default)]
    pub tx_if_packets: u64,
    /// Interface packets received.
    #[serde(default)]
    pub rx_if_packets: u64,
    /// What went wrong.
    pub error: Option<String>,
    /// Its processes' CPU, context switches and memory, read just before
    /// it was stopped (`None` when none was left to read: a pupil that is
    /// done by exiting).
    #[serde(default)]
    pub proc: Option<proc::GroupStats>,
}

/// classe's QUIC counters (`--stats` "quic"), summed over the seed and
/// every pupil that wrote its stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuicTotals {
    /// Processes whose counters are in the sums.
    pub processes: usize,
    /// UDP datagrams sent.
    pub datagrams_sent: u64,
    /// QUIC packets lost.
    pub packets_lost: u64,
    /// Congestion events.
    pub congestion_events: u64,
    /// ACK frames sent.
    pub acks_sent: u64,
    /// STREAM frames sent.
    pub stream_frames_sent: u64,
    /// MAX_DATA / MAX_STREAM_DATA frames sent.
    pub flow_updates_sent: u64,
    /// PING frames sent.
    pub pings_sent: u64,
    /// Largest path MTU seen.
    pub max_mtu: u64,
}

impl QuicTotals {
    fn add(&mut self, stats: &serde_json::Value) {
        let Some(q) = stats.get("quic") else { return };
        let get = |k: &str| q.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        self.processes += 1;
        self.datagrams_sent += get("datagrams_sent");
        self.packets_lost += get("packets_lost");
        self.congestion_events += get("congestion_events");
        self.acks_sent += get("acks_sent");
        self.stream_frames_sent += get("stream_frames_sent");
        self.flow_updates_sent += get("flow_updates_sent");
        self.pings_sent += get("pings_sent");
        self.max_mtu = self.max_mtu.max(get("max_mtu"));
    }
}

/// CPU use during a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuUse {
    /// Machine-wide busy share of all cores from t0 to the last pupil
    /// done, percent (100 = every core busy).
    pub machine_mean_pct: f64,
    /// Highest one-second machine-wide busy share, percent.
    pub machine_max_pct: f64,
    /// CPU seconds used by every process the run started (seed, pupils,
    /// helpers), from getrusage after they were reaped.
    pub lab_cpu_secs: f64,
    /// CPU seconds of the seed's process group.
    pub seed_cpu_secs: f64,
    /// The seed's CPU seconds per second of the run, percent of one core.
    pub seed_core_pct: f64,
    /// The lab's processes' CPU seconds per second of the run, percent of
    /// the whole machine (100 = every core).
    pub lab_pct: f64,
    /// Machine-wide busy share not explained by the lab's processes:
    /// other work on the machine that disturbed the run.
    pub other_pct: f64,
    /// The run was limited by CPU rather than by the emulated network:
    /// the machine was ≥ 90 % busy on average (whoever used it), or the
    /// seed used ≥ 90 % of one core.
    pub cpu_bound: bool,
    /// `lab_cpu_secs` per GB (10⁹ bytes) of lesson delivered (completed
    /// pupils × F): what each delivered byte cost the processes.
    pub cpu_secs_per_gb: f64,
    /// Busy CPU-seconds of the whole machine from t0 to the last pupil
    /// done: the processes, and the kernel's softirq work for the
    /// emulated network (bridge, HTB, veth), which this kernel accounts
    /// apart from any process.
    pub machine_cpu_secs: f64,
    /// `machine_cpu_secs` per delivered GB.
    pub machine_cpu_secs_per_gb: f64,
    /// The seed's processes, read just before it was stopped.
    pub seed_proc: Option<proc::GroupStats>,
}

/// The result of one run: one JSON line in the results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// [`SCHEMA`].
    pub schema: String,
    /// UTC start time, RFC 3339.
    pub date: String,
    /// The scenario's name.
    pub scenario: String,
    /// Everyone who was not churned completed with verified bytes, and
    /// nothing failed.
    pub ok: bool,
    /// What failed.
    pub failures: Vec<String>,
    /// The machine.
    pub machine: Machine,
    /// The parameters.
    pub params: Params,
    /// The bounds for these parameters.
    pub bounds: Bounds,
    /// Pupils that completed.
    pub completed: usize,
    /// Pupils stopped by churn.
    pub churned: usize,
    /// Time until the last completing pupil was done, seconds.
    pub makespan_secs: f64,
    /// Mean completion time of those that completed.
    pub mean_secs: f64,
    /// Median completion time of those that completed.
    pub median_secs: f64,
    /// `makespan / T_min`.
    pub ratio_t_min: f64,
    /// Time from starting the seed to its being ready (import, bind).
    pub seed_ready_secs: f64,
    /// Bytes the seed sent: classe's accounting where it exists, else the
    /// interface counter.
    pub seed_sent_bytes: u64,
    /// Where `seed_sent_bytes` comes from: `classe_stats` or `interface`.
    pub seed_sent_source: String,
    /// `seed_sent_bytes / F`: copies of the lesson that left the seed.
    pub seed_copies: f64,
    /// The seed's interface counter (all layers).
    pub seed_tx_if_bytes: u64,
    /// The seed's interface packets sent and received.
    #[serde(default)]
    pub seed_if_packets: (u64, u64),
    /// Bytes all pupils sent: classe's accounting when every pupil wrote
    /// its `--stats`, else interface counters (see `pupils_sent_source`).
    pub pupils_sent_bytes: u64,
    /// Where `pupils_sent_bytes` comes from: `classe_stats` or `interface`.
    #[serde(default)]
    pub pupils_sent_source: String,
    /// Payload bytes the completed pupils received in all (classe
    /// `--json`), and how much that exceeds one copy each, as a fraction
    /// (bytes fetched twice: endgame duplicates, retried requests).
    #[serde(default)]
    pub received_excess: Option<f64>,
    /// Observations that do not fail the run (a pupil killed after the
    /// grace period, a figure taken from another source).
    #[serde(default)]
    pub notes: Vec<String>,
    /// `pupils_sent_bytes / F`.
    pub pupils_copies: f64,
    /// All pupils' interface counters (all layers, ACKs included).
    pub pupils_tx_if_bytes: u64,
    /// CPU use.
    pub cpu: CpuUse,
    /// classe's QUIC counters, when its processes wrote them.
    #[serde(default)]
    pub quic: Option<QuicTotals>,
    /// Wall time of the whole run (build to teardown).
    pub wall_secs: f64,
    /// Per pupil.
    pub pupils: Vec<PupilResult>,
}

static RUN_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name prefix unique on this machine: the pid and a counter.
fn next_tag() -> String {
    let k = RUN_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}{}x{k}", net::NS_PREFIX, std::process::id())
}

/// Current UTC time as RFC 3339.
pub fn utc_now() -> String {
    rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// Seconds since the Unix epoch as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = all.len().saturating_sub(lines);
    let tail = all[from..].join(" | ");
    // The first panic says what went wrong; a second one (a panic while
    // unwinding) is often all the tail shows.
    let first_panic = all[..from]
        .iter()
        .position(|l| l.contains("panicked at"))
        .map(|i| all[i..(i + 2).min(from)].join(" | "));
    match (first_panic, tail.is_empty()) {
        (Some(panic), _) => format!("{panic} | … | {tail}"),
        (None, true) => "(no output)".into(),
        (None, false) => tail,
    }
}

fn exit_text(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown".into(),
    }
}

enum Event {
    Started {
        index: usize,
        at: Instant,
    },
    Done {
        index: usize,
        at: Instant,
        line: String,
    },
    Failed {
        index: usize,
        reason: String,
    },
}

struct PupilCtx {
    index: usize,
    ns: String,
    script: String,
    env: Vec<(String, String)>,
    dir: PathBuf,
    start_at: tokio::time::Instant,
    deadline: Instant,
    done_mode: PupilDone,
    ticket: String,
    extend: bool,
    providers: Arc<Mutex<Vec<ProviderInfo>>>,
    events: mpsc::Sender<Event>,
    stop: watch::Receiver<bool>,
}

struct PupilEnd {
    index: usize,
    exit: Option<String>,
    proc: Option<proc::GroupStats>,
}

/// A ticket with finished pupils added as providers, pupils first, at most
/// [`classe_bundle::ticket::MAX_PROVIDERS`] in all. Pupil `index` starts
/// its pick at a different finished pupil than its neighbours, so the load
/// spreads. Anything that is not a classe ticket is returned unchanged.
pub fn extend_ticket(ticket: &str, done: &[ProviderInfo], index: usize) -> String {
    let Ok(mut t) = ticket.parse::<Ticket>() else {
        return ticket.to_string();
    };
    let room = classe_bundle::ticket::MAX_PROVIDERS.saturating_sub(t.providers.len());
    if done.is_empty() || room == 0 {
        return ticket.to_string();
    }
    let k = room.min(done.len());
    let picked: Vec<ProviderInfo> = (0..k)
        .map(|j| done[(index + j) % done.len()].clone())
        .filter(|p| !t.providers.iter().any(|q| q.node_id == p.node_id))
        .collect();
    t.providers = picked.into_iter().chain(t.providers).collect();
    t.to_string()
}

/// A provider entry from a pupil's `classe fetch --json` summary.
fn provider_from_summary(v: &serde_json::Value) -> Option<ProviderInfo> {
    let id = data_encoding::HEXLOWER
        .decode(v.get("node_id")?.as_str()?.as_bytes())
        .ok()?;
    let node_id: [u8; 32] = id.try_into().ok()?;
    let addrs: Vec<SocketAddr> = v
        .get("addrs")?
        .as_array()?
        .iter()
        .filter_map(|a| a.as_str()?.parse().ok())
        .take(classe_bundle::ticket::MAX_ADDRS)
        .collect();
    if addrs.is_empty() {
        return None;
    }
    Some(ProviderInfo {
        node_id,
        addrs,
        relay_url: None,
        control_port: None,
    })
}

async fn pupil_task(mut ctx: PupilCtx) -> PupilEnd {
    let index = ctx.index;
    let ended = |exit: Option<String>| PupilEnd {
        index,
        exit,
        proc: None,
    };
    tokio::select! {
        biased;
        _ = ctx.stop.changed() => return ended(None),
        _ = tokio::time::sleep_until(ctx.start_at) => {}
    }
    let ticket = if ctx.extend {
        let done = ctx
            .providers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        extend_ticket(&ctx.ticket, &done, index)
    } else {
        ctx.ticket.clone()
    };
    let left = ctx.deadline.saturating_duration_since(Instant::now());
    let mut env = ctx.env.clone();
    env.push(("LAB_TICKET".into(), ticket));
    env.push((
        "LAB_DEADLINE_SECS".into(),
        left.as_secs().max(1).to_string(),
    ));
    let log = ctx.dir.join("log.txt");
    let spec = Spec {
        ns: &ctx.ns,
        script: &ctx.script,
        env,
        log: Some(&log),
        cwd: Some(&ctx.dir),
        nice: 0,
    };
    let name = format!("pupil {index}");
    ctx.events
        .send(Event::Started {
            index,
            at: Instant::now(),
        })
        .await
        .ok();
    let mut p = match Proc::spawn(&name, spec) {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("{e:#}");
            ctx.events.send(Event::Failed { index, reason }).await.ok();
            return ended(None);
        }
    };
    // Until done (or told to stop).
    let done = match ctx.done_mode {
        PupilDone::FirstLine => tokio::select! {
            biased;
            _ = ctx.stop.changed() => None,
            line = p.next_line() => Some(match line {
                Ok(Some(line)) => Ok(line),
                _ => {
                    let status = tokio::time::timeout(GRACE, p.wait()).await;
                    let how = match status {
                        Ok(Ok(s)) => exit_text(&s),
                        _ => "closed its output".into(),
                    };
                    Err(format!("{how} before reporting done: {}", log_tail(&log, 3)))
                }
            }),
        },
        PupilDone::Exit => tokio::select! {
            biased;
            _ = ctx.stop.changed() => None,
            status = p.wait() => Some(match status {
                Ok(s) if s.success() => Ok(String::new()),
                Ok(s) => Err(format!("{}: {}", exit_text(&s), log_tail(&log, 3))),
                Err(e) => Err(format!("cannot wait: {e}")),
            }),
        },
    };
    match done {
        None => {}
        Some(Ok(line)) => {
            let at = Instant::now();
            ctx.events.send(Event::Done { index, at, line }).await.ok();
            if ctx.done_mode == PupilDone::FirstLine {
                // Seeding: it must stay up until told to stop.
                tokio::select! {
                    biased;
                    _ = ctx.stop.changed() => {}
                    status = p.wait() => {
                        let how = status.map(|s| exit_text(&s)).unwrap_or_else(|e| e.to_string());
                        let reason = format!("stopped seeding on its own ({how}): {}", log_tail(&log, 3));
                        ctx.events.send(Event::Failed { index, reason }).await.ok();
                    }
                }
            }
        }
        Some(Err(reason)) => {
            ctx.events.send(Event::Failed { index, reason }).await.ok();
        }
    }
    // Only a live process can be read: a pupil done by exiting (curl) has
    // none left, and no figures are better than zeros.
    let stats = Some(p.group_stats()).filter(|g| g.threads > 0);
    let status = p.stop(GRACE).await;
    PupilEnd {
        proc: stats,
        ..ended(status.as_ref().map(exit_text))
    }
}

/// Per-pupil bookkeeping in the run loop.
#[derive(Default)]
struct Slot {
    start: Option<Instant>,
    done: Option<Instant>,
    summary: Option<serde_json::Value>,
    churned: bool,
    failed: Option<String>,
}

impl Slot {
    fn settled(&self) -> bool {
        self.done.is_some() || self.churned || self.failed.is_some()
    }
}

fn read_stats(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn stats_sent(v: &serde_json::Value) -> Option<u64> {
    v.get("traffic")?.get("sent")?.as_u64()
}

/// Runs one scenario once. Errors are for runs that could not start
/// (network, seed); a run whose pupils fail returns a result with `ok:
/// false` and the reasons.
pub async fn run_scenario(cfg: &RunConfig, lesson: &Lesson, probe: &Probe) -> Result<RunResult> {
    let wall = Instant::now();
    let date = utc_now();
    let n = cfg.pupils();
    if n == 0 || cfg.pupil_down.len() != n {
        bail!("a run needs at least one pupil and one download rate per pupil");
    }
    let scenario = &cfg.scenario;
    if uses_classe(scenario) && cfg.classe_bin.as_ref().is_none_or(|b| !b.is_file()) {
        bail!(
            "scenario {} needs the classe binary; none found at {:?}",
            scenario.name,
            cfg.classe_bin
        );
    }
    let f = lesson.total();
    let delay = if probe.netem { cfg.delay_ms } else { None };
    let tag = next_tag();
    let work = tempfile::Builder::new()
        .prefix(&format!("classe-lab-{tag}-"))
        .tempdir_in(&cfg.work_root)
        .with_context(|| format!("cannot create a folder in {}", cfg.work_root.display()))?;
    crate::register_path(work.path());
    let mut ctx = RunCtx {
        cfg,
        lesson,
        work: work.path(),
        delay,
        f,
        n,
        date,
        wall,
        base_env: Vec::new(),
    };
    let result = run_in(&mut ctx, &tag).await;
    if cfg.keep {
        let kept = work.keep();
        crate::unregister_path(&kept);
        eprintln!("classe-lab: kept {}", kept.display());
    } else {
        crate::unregister_path(work.path());
        drop(work);
    }
    result
}

/// What every phase of one run reads: the configuration, the lesson, the
/// run's folder and the environment common to all hosts.
struct RunCtx<'a> {
    cfg: &'a RunConfig,
    lesson: &'a Lesson,
    work: &'a Path,
    /// Link delay actually emulated (None when netem is missing).
    delay: Option<f64>,
    /// The lesson's size in bytes.
    f: u64,
    /// Pupils.
    n: usize,
    /// When the run started (UTC, RFC 3339) and its wall clock.
    date: String,
    wall: Instant,
    /// `LAB_*` variables every host gets (and `CLASSE`); set once the
    /// topology exists.
    base_env: Vec<(String, String)>,
}

impl RunCtx<'_> {
    fn scenario(&self) -> &Scenario {
        &self.cfg.scenario
    }

    /// `base_env` plus the host's own address, home and stats file (the
    /// home is created).
    fn host_env(&self, dir: &Path, addr: std::net::Ipv4Addr) -> Result<Vec<(String, String)>> {
        let home = dir.join("home");
        std::fs::create_dir_all(&home)?;
        let mut env = self.base_env.clone();
        env.push(("LAB_ADDR".into(), addr.to_string()));
        env.push(("LAB_HOME".into(), home.display().to_string()));
        env.push((
            "LAB_STATS".into(),
            dir.join("stats.json").display().to_string(),
        ));
        Ok(env)
    }
}

/// The seed host: its process and what its start told.
struct SeedHost {
    proc: Proc,
    dir: PathBuf,
    log: PathBuf,
    /// The setup script's first line (`LAB_SETUP`), or empty.
    setup_line: String,
    /// The seed's first line (a ticket), or empty.
    ticket: String,
    ready_secs: f64,
    /// The node id in the ticket, if it is a classe ticket.
    node: Option<[u8; 32]>,
}

/// Counters taken just before the pupils start, and the CPU sampler.
struct Baseline {
    counters: Vec<net::LinkCounters>,
    children_cpu0: f64,
    seed_cpu0: f64,
    samples: Arc<Mutex<Vec<f64>>>,
    sampler: tokio::task::JoinHandle<()>,
    machine0: Option<(u64, u64)>,
}

/// The running pupils' tasks and how the run talks to them.
struct Pupils {
    t0: Instant,
    tokio_t0: tokio::time::Instant,
    events: mpsc::Receiver<Event>,
    providers: Arc<Mutex<Vec<ProviderInfo>>>,
    stops: Vec<watch::Sender<bool>>,
    tasks: JoinSet<PupilEnd>,
}

/// What the run loop saw.
struct Collected {
    t0: Instant,
    slots: Vec<Slot>,
    failures: Vec<String>,
    timed_out: bool,
    t_end: Instant,
    machine1: Option<(u64, u64)>,
    seed_cpu_secs: f64,
}

/// What stopping everyone left.
struct Stopped {
    ends: BTreeMap<usize, PupilEnd>,
    seed_proc: Option<proc::GroupStats>,
    lab_cpu_secs: f64,
    /// Per host (seed first), since the baseline.
    counters: Vec<net::LinkCounters>,
}

/// The network, then each phase in turn (see the module's picture).
async fn run_in(ctx: &mut RunCtx<'_>, tag: &str) -> Result<RunResult> {
    let mut topo = build_topology(ctx.cfg, tag, ctx.delay)?;
    ctx.base_env = base_env(ctx, topo.seed().ip);
    let ctx = &*ctx;
    let mut seed = start_seed(ctx, &topo).await?;
    let hosts = topo.hosts().to_vec();
    let baseline = take_baseline(&topo, &hosts, &seed.proc);
    let mut pupils = start_pupils(ctx, &hosts, &seed)?;
    let mut run = collect(ctx, &mut pupils, &mut seed, &baseline).await;
    let stopped = stop_all(
        ctx, pupils, &mut seed, &mut topo, &hosts, &baseline, &mut run,
    )
    .await;
    let (pupils, pupil_stats) = pupil_results(ctx, &mut run, &hosts, &stopped, seed.node);
    Ok(figures(
        ctx,
        &seed,
        &baseline,
        run,
        &stopped,
        pupils,
        &pupil_stats,
    ))
}

/// The seed (host 0) and the pupils, each link shaped as configured.
fn build_topology(cfg: &RunConfig, tag: &str, delay: Option<f64>) -> Result<Topology> {
    let mut shapes = vec![Shape {
        up_bps: Some(cfg.seed_up),
        down_bps: cfg.seed_down,
    }];
    shapes.extend(
        cfg.pupil_up
            .iter()
            .zip(&cfg.pupil_down)
            .map(|(&u, &d)| Shape {
                up_bps: Some(u),
                down_bps: d,
            }),
    );
    Topology::build_with(tag, &shapes, delay, &cfg.net)
}

fn base_env(ctx: &RunCtx<'_>, seed_ip: std::net::Ipv4Addr) -> Vec<(String, String)> {
    let files: Vec<&str> = ctx.lesson.files().iter().map(|(n, _)| n.as_str()).collect();
    let urls: Vec<String> = files
        .iter()
        .map(|name| format!("http://{seed_ip}:{HTTP_PORT}/{name}"))
        .collect();
    let mut env: Vec<(String, String)> = vec![
        ("LAB_SRC".into(), ctx.lesson.dir().display().to_string()),
        ("LAB_FILES".into(), files.join(" ")),
        ("LAB_URLS".into(), urls.join(" ")),
        ("LAB_SEED_IP".into(), seed_ip.to_string()),
        ("LAB_PORT".into(), HTTP_PORT.to_string()),
        ("LAB_N".into(), ctx.n.to_string()),
    ];
    if let Some(bin) = &ctx.cfg.classe_bin {
        env.push(("CLASSE".into(), bin.display().to_string()));
    }
    env
}

/// The scenario's setup (if any), then the seed, until it is ready.
async fn start_seed(ctx: &RunCtx<'_>, topo: &Topology) -> Result<SeedHost> {
    let cfg = ctx.cfg;
    let seed_ip = topo.seed().ip;
    let dir = ctx.work.join("seed");
    std::fs::create_dir_all(&dir)?;
    let mut env = ctx.host_env(&dir, seed_ip)?;
    let seed_deadline = (cfg.timeout + SEED_START * 2).as_secs().to_string();
    env.push(("LAB_DEADLINE_SECS".into(), seed_deadline));
    let setup_line = match &ctx.scenario().setup {
        Some(setup) => run_setup(ctx, topo, &dir, &env, setup).await?,
        None => String::new(),
    };
    env.push(("LAB_SETUP".into(), setup_line.clone()));
    let log = dir.join("log.txt");
    let started = Instant::now();
    let mut proc = Proc::spawn(
        "seed",
        Spec {
            ns: &topo.seed().ns,
            script: &ctx.scenario().seed,
            env: env.clone(),
            log: Some(&log),
            cwd: Some(&dir),
            nice: cfg.seed_nice,
        },
    )?;
    let ticket = match &ctx.scenario().seed_ready {
        SeedReady::FirstLine => match tokio::time::timeout(SEED_START, proc.next_line()).await {
            Ok(Ok(Some(line))) => line.trim().to_string(),
            _ => {
                proc.stop(GRACE).await;
                bail!(
                    "the seed of {} did not start: {}",
                    ctx.scenario().name,
                    log_tail(&log, 5)
                );
            }
        },
        SeedReady::Command(check) => {
            let spec = Spec {
                ns: &topo.seed().ns,
                script: check,
                env,
                log: None,
                cwd: Some(&dir),
                nice: 0,
            };
            wait_ready(ctx, &mut proc, spec, &log).await?;
            String::new()
        }
    };
    let ready_secs = started.elapsed().as_secs_f64();
    let node = ticket
        .parse::<Ticket>()
        .ok()
        .and_then(|t| t.providers.first().map(|p| p.node_id));
    Ok(SeedHost {
        proc,
        dir,
        log,
        setup_line,
        ticket,
        ready_secs,
        node,
    })
}

/// Runs the setup script in the seed's namespace: it must print a line
/// (kept as `LAB_SETUP`) and exit 0 within [`SEED_START`].
async fn run_setup(
    ctx: &RunCtx<'_>,
    topo: &Topology,
    dir: &Path,
    env: &[(String, String)],
    setup: &str,
) -> Result<String> {
    let log = dir.join("setup.log");
    let mut p = Proc::spawn(
        "setup",
        Spec {
            ns: &topo.seed().ns,
            script: setup,
            env: env.to_vec(),
            log: Some(&log),
            cwd: Some(dir),
            nice: 0,
        },
    )?;
    let line = tokio::time::timeout(SEED_START, p.next_line()).await;
    let status = tokio::time::timeout(SEED_START, p.wait()).await;
    match (line, status) {
        (Ok(Ok(line)), Ok(Ok(s))) if s.success() => Ok(line.unwrap_or_default()),
        _ => {
            p.stop(GRACE).await;
            bail!(
                "setup of {} failed: {}",
                ctx.scenario().name,
                log_tail(&log, 5)
            );
        }
    }
}

/// Runs the scenario's ready check (`check`, its log in the seed's
/// folder) every 200 ms until it exits 0, for at most [`SEED_START`].
async fn wait_ready(
    ctx: &RunCtx<'_>,
    seed: &mut Proc,
    check: Spec<'_>,
    seed_log: &Path,
) -> Result<()> {
    let ready_log = check.cwd.unwrap_or(ctx.work).join("ready.log");
    // Bounded: at most SEED_START in 200 ms steps.
    for _ in 0..(SEED_START.as_millis() / 200) {
        if seed.try_exited().is_some() {
            break;
        }
        let spec = Spec {
            log: Some(&ready_log),
            ..check.clone()
        };
        let mut c = Proc::spawn("ready check", spec)?;
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), c.wait()).await {
            if s.success() {
                return Ok(());
            }
        }
        c.stop(GRACE).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seed.stop(GRACE).await;
    bail!(
        "the seed of {} did not become ready: {}",
        ctx.scenario().name,
        log_tail(seed_log, 5)
    );
}

/// Interface counters and CPU times before the pupils start, and a task
/// that samples the machine's CPU use every second.
fn take_baseline(topo: &Topology, hosts: &[net::Host], seed: &Proc) -> Baseline {
    let counters = hosts
        .iter()
        .map(|h| topo.counters(h).unwrap_or_default())
        .collect();
    let children_cpu0 = proc::children_cpu_secs();
    let seed_cpu0 = seed.group_cpu_secs();
    let samples = Arc::new(Mutex::new(Vec::<f64>::new()));
    let sampler = spawn_cpu_sampler(samples.clone());
    let machine0 = proc::machine_cpu_ticks();
    Baseline {
        counters,
        children_cpu0,
        seed_cpu0,
        samples,
        sampler,
        machine0,
    }
}

fn spawn_cpu_sampler(samples: Arc<Mutex<Vec<f64>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut prev = proc::machine_cpu_ticks();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = proc::machine_cpu_ticks();
            if let (Some((b0, t0)), Some((b1, t1))) = (prev, now) {
                if t1 > t0 {
                    let pct = 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64;
                    samples.lock().unwrap_or_else(|p| p.into_inner()).push(pct);
                }
            }
            prev = now;
        }
    })
}

/// One task per pupil (hosts 1..), each starting at its stagger time.
fn start_pupils(ctx: &RunCtx<'_>, hosts: &[net::Host], seed: &SeedHost) -> Result<Pupils> {
    let (cfg, n, scenario) = (ctx.cfg, ctx.n, ctx.scenario());
    let t0 = Instant::now();
    let tokio_t0 = tokio::time::Instant::now();
    let deadline = t0 + cfg.timeout;
    let (ev_tx, events) = mpsc::channel::<Event>(4 * n + 16);
    let providers = Arc::new(Mutex::new(Vec::<ProviderInfo>::new()));
    let mut stops = Vec::with_capacity(n);
    let mut tasks = JoinSet::new();
    for (i, host) in hosts.iter().enumerate().skip(1) {
        let dir = ctx.work.join(format!("pupil-{i}"));
        let out = dir.join("out");
        std::fs::create_dir_all(&out)?;
        let mut env = ctx.host_env(&dir, host.ip)?;
        env.push(("LAB_OUT".into(), out.display().to_string()));
        env.push(("LAB_PUPIL".into(), i.to_string()));
        env.push(("LAB_SETUP".into(), seed.setup_line.clone()));
        let (stop_tx, stop_rx) = watch::channel(false);
        stops.push(stop_tx);
        let pupil = PupilCtx {
            index: i,
            ns: host.ns.clone(),
            script: scenario.pupil.clone(),
            env,
            dir,
            start_at: tokio_t0 + Duration::from_secs_f64(cfg.stagger_secs * (i - 1) as f64),
            deadline,
            done_mode: scenario.pupil_done,
            ticket: seed.ticket.clone(),
            extend: scenario.extend_ticket,
            providers: providers.clone(),
            events: ev_tx.clone(),
            stop: stop_rx,
        };
        tasks.spawn(pupil_task(pupil));
    }
    Ok(Pupils {
        t0,
        tokio_t0,
        events,
        providers,
        stops,
        tasks,
    })
}

/// Listens to the pupils' events, stops the churned ones at their time,
/// until every pupil is settled or the run's limit passes.
async fn collect(
    ctx: &RunCtx<'_>,
    pupils: &mut Pupils,
    seed: &mut SeedHost,
    baseline: &Baseline,
) -> Collected {
    let (cfg, n) = (ctx.cfg, ctx.n);
    let mut slots: Vec<Slot> = (0..n).map(|_| Slot::default()).collect();
    let churn_set = cfg
        .churn
        .map(|c| metrics::spread_subset(n, c.fraction))
        .unwrap_or_else(|| vec![false; n]);
    let mut churn_at = cfg
        .churn
        .map(|c| pupils.tokio_t0 + Duration::from_secs_f64(c.at_secs.max(0.0)));
    let tokio_deadline = pupils.tokio_t0 + cfg.timeout;
    let mut failures = Vec::new();
    let mut timed_out = false;
    while !slots.iter().all(Slot::settled) {
        tokio::select! {
            ev = pupils.events.recv() => match ev {
                None => break,
                Some(ev) => on_event(ctx, &mut slots, &mut failures, &pupils.providers, ev),
            },
            _ = async { if let Some(at) = churn_at { tokio::time::sleep_until(at).await } else { std::future::pending::<()>().await } } => {
                churn_at = None;
                for (i, leave) in churn_set.iter().enumerate() {
                    if *leave && slots[i].failed.is_none() {
                        slots[i].churned = true;
                        pupils.stops[i].send(true).ok();
                    }
                }
            }
            _ = tokio::time::sleep_until(tokio_deadline) => {
                timed_out = true;
                break;
            }
        }
    }
    let t_end = Instant::now();
    let machine1 = proc::machine_cpu_ticks();
    baseline.sampler.abort();
    let seed_cpu_secs = (seed.proc.group_cpu_secs() - baseline.seed_cpu0).max(0.0);
    if timed_out {
        for (i, s) in slots.iter().enumerate() {
            if !s.settled() {
                failures.push(format!(
                    "pupil {}: not done within the run's limit of {:.0} s",
                    i + 1,
                    cfg.timeout.as_secs_f64()
                ));
            }
        }
    }
    if seed.proc.try_exited().is_some() {
        failures.push(format!(
            "the seed exited during the run: {}",
            log_tail(&seed.log, 3)
        ));
    }
    Collected {
        t0: pupils.t0,
        slots,
        failures,
        timed_out,
        t_end,
        machine1,
        seed_cpu_secs,
    }
}

/// One pupil event into its slot (a churned pupil's events no longer count).
fn on_event(
    ctx: &RunCtx<'_>,
    slots: &mut [Slot],
    failures: &mut Vec<String>,
    providers: &Mutex<Vec<ProviderInfo>>,
    ev: Event,
) {
    let scenario = ctx.scenario();
    match ev {
        Event::Started { index, at } => slots[index - 1].start = Some(at),
        Event::Done { index, at, line } => {
            let slot = &mut slots[index - 1];
            if slot.churned {
                return;
            }
            slot.done = Some(at);
            if scenario.pupil_done == PupilDone::FirstLine {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if scenario.extend_ticket {
                        if let Some(p) = provider_from_summary(&v) {
                            providers.lock().unwrap_or_else(|p| p.into_inner()).push(p);
                        }
                    }
                    slot.summary = Some(v);
                }
            }
        }
        Event::Failed { index, reason } => {
            let slot = &mut slots[index - 1];
            if !slot.churned {
                failures.push(format!("pupil {index}: {reason}"));
                slot.failed = Some(reason);
            }
        }
    }
}

/// Stops the pupils first (they write their stats), then the seed; reads
/// the interface counters and tears the network down.
async fn stop_all(
    ctx: &RunCtx<'_>,
    pupils: Pupils,
    seed: &mut SeedHost,
    topo: &mut Topology,
    hosts: &[net::Host],
    baseline: &Baseline,
    run: &mut Collected,
) -> Stopped {
    for s in &pupils.stops {
        s.send(true).ok();
    }
    let mut tasks = pupils.tasks;
    let mut ends: BTreeMap<usize, PupilEnd> = BTreeMap::new();
    let stop_all = async {
        while let Some(end) = tasks.join_next().await {
            if let Ok(end) = end {
                ends.insert(end.index, end);
            }
        }
    };
    if tokio::time::timeout(GRACE * 3, stop_all).await.is_err() {
        run.failures
            .push("some pupils did not stop in time (killed)".into());
        tasks.abort_all();
    }
    let seed_proc = Some(seed.proc.group_stats()).filter(|g| g.threads > 0);
    let seed_exit = seed.proc.stop(GRACE).await;
    if ctx.scenario().accounting == Accounting::ClasseStats
        && seed_exit.as_ref().is_some_and(|s| !s.success())
    {
        run.failures.push(format!(
            "the seed did not exit cleanly ({}): {}",
            seed_exit.as_ref().map(exit_text).unwrap_or_default(),
            log_tail(&seed.log, 3)
        ));
    }
    let lab_cpu_secs = (proc::children_cpu_secs() - baseline.children_cpu0).max(0.0);
    let counters: Vec<net::LinkCounters> = hosts
        .iter()
        .zip(&baseline.counters)
        .map(|(h, b)| {
            let c = topo.counters(h).unwrap_or_default();
            net::LinkCounters {
                rx: c.rx.saturating_sub(b.rx),
                tx: c.tx.saturating_sub(b.tx),
                rx_packets: c.rx_packets.saturating_sub(b.rx_packets),
                tx_packets: c.tx_packets.saturating_sub(b.tx_packets),
            }
        })
        .collect();
    topo.destroy();
    Stopped {
        ends,
        seed_proc,
        lab_cpu_secs,
        counters,
    }
}

/// Per pupil: times, classe's own figures, verification of its output;
/// and each pupil's stats file.
fn pupil_results(
    ctx: &RunCtx<'_>,
    run: &mut Collected,
    hosts: &[net::Host],
    stopped: &Stopped,
    seed_node: Option<[u8; 32]>,
) -> (Vec<PupilResult>, Vec<Option<serde_json::Value>>) {
    let (cfg, t0, counters, ends) = (ctx.cfg, run.t0, &stopped.counters, &stopped.ends);
    let seed_hex = seed_node.map(|id| data_encoding::HEXLOWER.encode(&id));
    let mut pupils = Vec::with_capacity(ctx.n);
    let mut pupil_stats = Vec::with_capacity(ctx.n);
    for (i, slot) in run.slots.iter().enumerate() {
        let index = i + 1;
        let dir = ctx.work.join(format!("pupil-{index}"));
        let stats = read_stats(&dir.join("stats.json"));
        pupil_stats.push(stats.clone());
        let summary = slot.summary.as_ref();
        let received = summary.and_then(|v| v.get("received_bytes")?.as_u64());
        let from_seed = summary.and_then(|v| {
            let per = v.get("per_provider")?.as_object()?;
            Some(
                seed_hex
                    .as_ref()
                    .and_then(|h| per.get(h))
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
            )
        });
        let completed = slot.done.is_some();
        let verified = if completed {
            let out = dir.join("out");
            match ctx.lesson.verify(&out) {
                Ok(()) => Some(true),
                Err(e) => {
                    run.failures.push(format!(
                        "pupil {index}: output does not match the source: {e}"
                    ));
                    Some(false)
                }
            }
        } else {
            None
        };
        let rel = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(t0).as_secs_f64());
        pupils.push(PupilResult {
            index,
            ip: hosts[index].ip.to_string(),
            up_bps: cfg.pupil_up[i],
            down_bps: cfg.pupil_down[i],
            start_secs: rel(slot.start),
            done_secs: rel(slot.done),
            elapsed_secs: match (slot.start, slot.done) {
                (Some(s), Some(d)) => Some(d.saturating_duration_since(s).as_secs_f64()),
                _ => None,
            },
            completed,
            churned: slot.churned,
            verified,
            exit: ends.get(&index).and_then(|e| e.exit.clone()),
            proc: ends.get(&index).and_then(|e| e.proc),
            reported_secs: summary.and_then(|v| v.get("seconds")?.as_f64()),
            received_bytes: received,
            from_seed_bytes: from_seed,
            from_pupils_bytes: match (received, from_seed) {
                (Some(r), Some(s)) => Some(r.saturating_sub(s)),
                _ => None,
            },
            sent_app_bytes: stats.as_ref().and_then(stats_sent),
            tx_if_bytes: counters[index].tx,
            rx_if_bytes: counters[index].rx,
            tx_if_packets: counters[index].tx_packets,
            rx_if_packets: counters[index].rx_packets,
            error: slot.failed.clone(),
        });
    }
    for p in &pupils {
        if !p.churned && !p.completed && p.error.is_none() && !run.timed_out {
            run.failures
                .push(format!("pupil {}: did not complete", p.index));
        }
    }
    (pupils, pupil_stats)
}

/// Where the bytes sent by the seed and by the pupils come from: classe's
/// `--stats` where the scenario has them, else interface counters.
struct Sent {
    seed: u64,
    seed_source: &'static str,
    pupils: u64,
    pupils_source: &'static str,
}

/// [`Sent`], with a note or a failure where a stats file is missing.
fn bytes_sent(
    ctx: &RunCtx<'_>,
    seed_app: Option<u64>,
    pupils: &[PupilResult],
    stopped: &Stopped,
    notes: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> Sent {
    let accounting = ctx.scenario().accounting;
    let pupils_app: Option<u64> = pupils.iter().map(|p| p.sent_app_bytes).sum();
    let pupils_if: u64 = pupils.iter().map(|p| p.tx_if_bytes).sum();
    let (pupils_sent, pupils_source) = match (accounting, pupils_app) {
        (Accounting::ClasseStats, Some(b)) => (b, "classe_stats"),
        (Accounting::ClasseStats, None) => {
            notes.push(
                "not every pupil wrote --stats: the pupils' bytes sent are interface counters (headers included)"
                    .into(),
            );
            (pupils_if, "interface")
        }
        (Accounting::Interface, _) => (pupils_if, "interface"),
    };
    let seed_if = stopped.counters[0].tx;
    let (seed_sent, source) = match (accounting, seed_app) {
        (Accounting::ClasseStats, Some(s)) => (s, "classe_stats"),
        (Accounting::ClasseStats, None) => {
            failures
                .push("the seed wrote no --stats file: its bytes come from the interface".into());
            (seed_if, "interface")
        }
        (Accounting::Interface, _) => (seed_if, "interface"),
    };
    Sent {
        seed: seed_sent,
        seed_source: source,
        pupils: pupils_sent,
        pupils_source,
    }
}

/// A note for each pupil that had to be killed after SIGTERM.
fn kill_notes(ctx: &RunCtx<'_>, pupils: &[PupilResult]) -> Vec<String> {
    let mut notes = Vec::new();
    for p in pupils {
        if p.exit.as_deref() == Some("signal 9") {
            notes.push(format!(
                "pupil {} did not exit within {} s of SIGTERM and was killed{}",
                p.index,
                GRACE.as_secs(),
                if ctx.scenario().accounting == Accounting::ClasseStats {
                    " (so it wrote no --stats)"
                } else {
                    ""
                }
            ));
        }
    }
    notes
}

/// The machine's, the lab's and the seed's CPU use over the run.
fn cpu_use(baseline: &Baseline, run: &Collected, stopped: &Stopped, gb_done: f64) -> CpuUse {
    let (machine0, machine1) = (baseline.machine0, run.machine1);
    let (lab_cpu_secs, seed_cpu_secs) = (stopped.lab_cpu_secs, run.seed_cpu_secs);
    let run_secs = run
        .t_end
        .saturating_duration_since(run.t0)
        .as_secs_f64()
        .max(1e-3);
    let machine_cpu_secs = match (machine0, machine1) {
        (Some((b0, _)), Some((b1, _))) => b1.saturating_sub(b0) as f64 / proc::CLK_TCK,
        _ => 0.0,
    };
    let machine_mean_pct = match (machine0, machine1) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => 0.0,
    };
    let machine_max_pct = baseline
        .samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .copied()
        .fold(machine_mean_pct, f64::max);
    let seed_core_pct = 100.0 * seed_cpu_secs / run_secs;
    let per_gb = |secs: f64| {
        if gb_done > 0.0 {
            secs / gb_done
        } else {
            0.0
        }
    };
    let cores = Machine::detect().cores.max(1) as f64;
    // Only the run's own window counts: the lab's CPU time covers it all
    // (seed import and shutdown too), so this slightly overstates it.
    let lab_pct = (100.0 * lab_cpu_secs / run_secs / cores).min(100.0);
    CpuUse {
        machine_mean_pct,
        machine_max_pct,
        lab_cpu_secs,
        seed_cpu_secs,
        seed_core_pct,
        lab_pct,
        other_pct: (machine_mean_pct - lab_pct).max(0.0),
        cpu_bound: machine_mean_pct >= 90.0 || seed_core_pct >= 90.0,
        cpu_secs_per_gb: per_gb(lab_cpu_secs),
        machine_cpu_secs,
        machine_cpu_secs_per_gb: per_gb(machine_cpu_secs),
        seed_proc: stopped.seed_proc,
    }
}

/// The run's parameters, as recorded with its result.
fn params(ctx: &RunCtx<'_>) -> Params {
    let (cfg, scenario) = (ctx.cfg, ctx.scenario());
    Params {
        n: ctx.n,
        file_bytes: ctx.f,
        files: ctx.lesson.files().len(),
        seed_up_bps: cfg.seed_up,
        seed_down_bps: cfg.seed_down,
        pupil_up_bps: cfg.pupil_up.clone(),
        pupil_down_bps: cfg.pupil_down.clone(),
        delay_ms: cfg.delay_ms,
        delay_emulated: ctx.delay.is_some(),
        stagger_secs: cfg.stagger_secs,
        churn: cfg.churn,
        timeout_secs: cfg.timeout.as_secs_f64(),
        extend_ticket: scenario.extend_ticket,
        classe: if uses_classe(scenario) {
            cfg.classe_info.clone()
        } else {
            None
        },
        net: cfg.net.clone(),
        seed_nice: cfg.seed_nice,
    }
}

/// The run's figures from what each phase left.
fn figures(
    ctx: &RunCtx<'_>,
    seed: &SeedHost,
    baseline: &Baseline,
    mut run: Collected,
    stopped: &Stopped,
    pupils: Vec<PupilResult>,
    pupil_stats: &[Option<serde_json::Value>],
) -> RunResult {
    let (cfg, f) = (ctx.cfg, ctx.f);
    let done_times: Vec<f64> = pupils.iter().filter_map(|p| p.done_secs).collect();
    let makespan = done_times.iter().copied().fold(0.0, f64::max);
    let bounds = metrics::bounds(f, cfg.seed_up, &cfg.pupil_up, &cfg.pupil_down);
    let seed_stats = read_stats(&seed.dir.join("stats.json"));
    let mut quic = QuicTotals::default();
    for stats in seed_stats.iter().chain(pupil_stats.iter().flatten()) {
        quic.add(stats);
    }
    let seed_app = seed_stats.as_ref().and_then(stats_sent);
    let mut notes = kill_notes(ctx, &pupils);
    let sent = bytes_sent(
        ctx,
        seed_app,
        &pupils,
        stopped,
        &mut notes,
        &mut run.failures,
    );
    let received: Option<u64> = pupils
        .iter()
        .filter(|p| p.completed)
        .map(|p| p.received_bytes)
        .sum();
    let n_done = pupils.iter().filter(|p| p.completed).count() as f64;
    let received_excess = received
        .filter(|_| n_done > 0.0)
        .map(|r| r as f64 / (f as f64 * n_done) - 1.0);
    let cpu = cpu_use(baseline, &run, stopped, n_done * f as f64 / 1e9);
    let completed = pupils.iter().filter(|p| p.completed).count();
    let churned = pupils.iter().filter(|p| p.churned).count();
    let all_in = pupils.iter().all(|p| p.churned || p.verified == Some(true));
    let counters = &stopped.counters;
    RunResult {
        schema: SCHEMA.into(),
        date: ctx.date.clone(),
        scenario: ctx.scenario().name.clone(),
        ok: run.failures.is_empty() && all_in,
        failures: run.failures,
        machine: Machine::detect(),
        params: params(ctx),
        bounds,
        completed,
        churned,
        makespan_secs: makespan,
        mean_secs: metrics::mean(&done_times),
        median_secs: metrics::median(&done_times),
        ratio_t_min: makespan / bounds.t_min,
        seed_ready_secs: seed.ready_secs,
        seed_sent_bytes: sent.seed,
        seed_sent_source: sent.seed_source.into(),
        seed_copies: sent.seed as f64 / f as f64,
        seed_tx_if_bytes: counters[0].tx,
        seed_if_packets: (counters[0].tx_packets, counters[0].rx_packets),
        pupils_sent_bytes: sent.pupils,
        pupils_copies: sent.pupils as f64 / f as f64,
        pupils_sent_source: sent.pupils_source.into(),
        received_excess,
        notes,
        pupils_tx_if_bytes: pupils.iter().map(|p| p.tx_if_bytes).sum(),
        cpu,
        quic: (quic.processes > 0).then_some(quic),
        wall_secs: ctx.wall.elapsed().as_secs_f64(),
        pupils,
    }
}

/// Whether a scenario runs `$CLASSE`.
pub fn uses_classe(s: &Scenario) -> bool {
    [s.setup.as_deref().unwrap_or(""), &s.seed, &s.pupil]
        .iter()
        .any(|x| x.contains("$CLASSE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use classe_bundle::AuthorSecret;

    #[test]
    fn a_failure_report_keeps_the_first_panic() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.txt");
        std::fs::write(
            &log,
            "starting\nthread 'w' panicked at src/x.rs:1:2:\nindex out of bounds\nnoise\nmore noise\nthread 'w' panicked at core:\npanic in a destructor during cleanup\naborting\n",
        )
        .unwrap();
        let report = log_tail(&log, 3);
        assert!(
            report.starts_with("thread 'w' panicked at src/x.rs:1:2: | index out of bounds"),
            "{report}"
        );
        assert!(report.ends_with("aborting"), "{report}");
        std::fs::write(&log, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&log, 2), "c | d");
    }

    fn provider(b: u8, port: u16) -> ProviderInfo {
        ProviderInfo {
            node_id: [b; 32],
            addrs: vec![SocketAddr::from(([10, 77, 1, b], port))],
            relay_url: None,
            control_port: None,
        }
    }

    #[test]
    fn tickets_grow_with_finished_pupils_up_to_the_limit() {
        let author = AuthorSecret::generate().public();
        let t = Ticket {
            root: [9; 32],
            author,
            providers: vec![provider(0, 1)],
        };
        let text = t.to_string();
        assert_eq!(extend_ticket(&text, &[], 3), text);
        let done: Vec<_> = (1..=20).map(|b| provider(b, 1000 + u16::from(b))).collect();
        let grown: Ticket = extend_ticket(&text, &done, 5).parse().unwrap();
        assert_eq!(grown.providers.len(), classe_bundle::ticket::MAX_PROVIDERS);
        // The teacher stays, last.
        assert_eq!(grown.providers.last().unwrap().node_id, [0; 32]);
        // Pupil 5 starts its pick at finished pupil index 5 (node 6).
        assert_eq!(grown.providers[0].node_id, [6; 32]);
        // A non-classe ticket is passed through.
        assert_eq!(extend_ticket("not a ticket", &done, 1), "not a ticket");
    }

    #[test]
    fn providers_come_from_fetch_summaries() {
        let v = serde_json::json!({
            "node_id": "ab".repeat(32),
            "addrs": ["10.77.1.3:4444", "garbage"],
        });
        let p = provider_from_summary(&v).unwrap();
        assert_eq!(p.node_id, [0xab; 32]);
        assert_eq!(
            p.addrs,
            vec!["10.77.1.3:4444".parse::<SocketAddr>().unwrap()]
        );
        assert!(provider_from_summary(&serde_json::json!({"node_id": "zz"})).is_none());
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_584_316_800 + 8 * 3600), "2020-03-16T08:00:00Z");
        let d = utc_now();
        assert_eq!(d.len(), 20);
        assert!(d.starts_with("20") && d.ends_with('Z'));
    }
}
