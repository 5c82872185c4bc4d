//! The home-network lab: a class at home on the morning of 16 March 2020.
//!
//! ```text
//!   school (public 198.18.0.1): classe seed --relay-server  (relay + QAD only:
//!                               it follows nobody, so it serves no lesson bytes)
//!   teacher at home  (NAT, HTB up u_s)       classe share
//!   pupil i at home  (NAT of a given kind, HTB up u_i, down d_i)
//!                                             classe fetch --relay, all at once,
//!                                             then keep sharing
//! ```
//!
//! Every pupil's `--json` summary says, per provider, how many payload
//! bytes came from it and how many transport bytes went direct or through
//! the relay; the lab adds them up by NAT kind of the sender: a direct
//! path from a classmate behind a UPnP router is counted as port-mapped,
//! one from behind a port-preserving or symmetric router as hole-punched.
//! The school seed's `--stats` gives what the relay carried in total. The
//! teacher's copies are its interface's bytes sent over F, so QUIC and IP
//! overhead count against us. T_min is the flat lab's (the school sends
//! no lesson bytes). Delay is not emulated (no `sch_netem` here).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{
    homenet::{HomeNet, HomeSpec, Nat},
    lesson::Lesson,
    metrics::{self, Bounds},
    net::Shape,
    proc::{Proc, Spec},
};

/// One home-lab run.
#[derive(Debug, Clone)]
pub struct HomeLabConfig {
    /// The classe binary (release for measurements).
    pub classe: PathBuf,
    /// Pupils.
    pub pupils: usize,
    /// Lesson size, bytes, split over `files` files.
    pub lesson_bytes: u64,
    /// Files in the lesson.
    pub files: usize,
    /// Teacher's upload, bits per second.
    pub teacher_up: u64,
    /// Pupils' upload and download, bits per second.
    pub pupil_up: u64,
    /// Pupils' download (None: unshaped).
    pub pupil_down: Option<u64>,
    /// The school's upload and download (it carries relayed bytes).
    pub school_bps: Option<u64>,
    /// Share of pupils behind UPnP routers and behind symmetric NATs; the
    /// rest are port-preserving.
    pub upnp: f64,
    /// See `upnp`.
    pub symmetric: f64,
    /// The teacher's NAT.
    pub teacher_nat: Nat,
    /// Give up after this.
    pub timeout: Duration,
    /// Seed of the lesson bytes and of the NAT assignment.
    pub seed: u64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct HomeLabResult {
    /// Pupils.
    pub n: usize,
    /// Lesson bytes.
    pub f: u64,
    /// Pupils per NAT kind.
    pub nats: BTreeMap<String, usize>,
    /// Pupils that finished (verified byte for byte).
    pub finished: usize,
    /// Seconds until the last pupil had the lesson.
    pub makespan: f64,
    /// The Kumar–Ross bound and the central server's time.
    pub bounds: Bounds,
    /// makespan / T_min.
    pub ratio: f64,
    /// Teacher interface bytes sent / F.
    pub teacher_copies: f64,
    /// Payload bytes pupils received from the teacher, from classmates.
    pub from_teacher: u64,
    /// See `from_teacher`.
    pub from_classmates: u64,
    /// Transport bytes pupils received from classmates, by the way they
    /// came: "hole-punched", "port-mapped", "relayed".
    pub classmate_paths: BTreeMap<String, u64>,
    /// Share of classmate transport bytes that came direct.
    pub direct_share: f64,
    /// Transport bytes each pupil received through the relay (all
    /// providers), by pupil index.
    pub relayed_per_pupil: Vec<u64>,
    /// What the school relay carried (its own count), bytes it sent.
    pub relay_carried: Option<u64>,
    /// The teacher's own counts: payload bytes sent, and QUIC datagram
    /// bytes sent over direct paths and through the relay.
    pub teacher_sent: Option<TeacherSent>,
    /// Seconds from `fetch` to the first byte from a classmate: median
    /// and largest over pupils that got one.
    pub first_classmate_byte: (f64, f64),
    /// CPU seconds of all classe processes during the run, and the wall
    /// time they had.
    pub cpu_secs: f64,
    /// Seconds from the first fetch to the last summary.
    pub wall_secs: f64,
}

/// The NAT of each pupil: `upnp` and `symmetric` shares spread over the
/// class (not bunched at one end), the rest port-preserving.
pub fn nat_mix(n: usize, upnp: f64, symmetric: f64) -> Vec<Nat> {
    let up = metrics::spread_subset(n, upnp);
    let rest = up.iter().filter(|u| !**u).count();
    // Symmetric routers spread over the homes that are not UPnP.
    let want = (symmetric.clamp(0.0, 1.0) * n as f64).round() as usize;
    let mut sy = metrics::spread_subset(rest, want as f64 / rest.max(1) as f64).into_iter();
    up.iter()
        .map(|&u| {
            if u {
                Nat::Upnp
            } else if sy.next().unwrap_or(false) {
                Nat::Symmetric
            } else {
                Nat::PortPreserving
            }
        })
        .collect()
}

fn nat_name(n: Nat) -> &'static str {
    match n {
        Nat::PortPreserving => "port-preserving",
        Nat::Symmetric => "symmetric",
        Nat::Upnp => "upnp",
    }
}

/// Runs the class once. Needs root, iptables and miniupnpd.
pub async fn run(tag: &str, cfg: &HomeLabConfig) -> Result<HomeLabResult> {
    let nats = nat_mix(cfg.pupils, cfg.upnp, cfg.symmetric);
    let mut specs = vec![
        HomeSpec {
            nat: None,
            shape: Shape {
                up_bps: cfg.school_bps,
                down_bps: cfg.school_bps,
            },
        },
        HomeSpec {
            nat: Some(cfg.teacher_nat),
            shape: Shape {
                up_bps: Some(cfg.teacher_up),
                down_bps: None,
            },
        },
    ];
    specs.extend(nats.iter().map(|nat| HomeSpec {
        nat: Some(*nat),
        shape: Shape {
            up_bps: Some(cfg.pupil_up),
            down_bps: cfg.pupil_down,
        },
    }));
    let net = HomeNet::build(tag, &specs)?;
    let dir = tempfile::tempdir()?;
    let lesson = Lesson::create(dir.path(), cfg.lesson_bytes, cfg.files, cfg.seed)?;
    let bin = cfg.classe.display().to_string();
    let home = |name: &str| dir.path().join(name).display().to_string();
    let log = |name: &str| dir.path().join(format!("{name}.log"));

    // The school: relay and address discovery, nothing to serve.
    let school = net.hosts()[0].clone();
    let seed_script = format!(
        "exec {bin} --home {} seed --listen {}:4100 --no-mdns --relay-server {}:3340 --stats {}",
        home("school"),
        school.ip,
        school.ip,
        dir.path().join("school.json").display()
    );
    let seed_log = log("school");
    let mut seed = Proc::spawn(
        "school",
        Spec {
            ns: &school.ns,
            script: &seed_script,
            log: Some(&seed_log),
            ..Spec::default()
        },
    )?;
    let relay_url = loop {
        let Some(line) = tokio::time::timeout(Duration::from_secs(30), seed.next_line())
            .await
            .context("the school's seed printed no relay URL")??
        else {
            bail!("the school's seed exited: see {}", seed_log.display());
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["event"] == "relay" {
                break v["url"].as_str().unwrap_or_default().to_string();
            }
        }
    };

    // The teacher at home.
    let teacher = net.hosts()[1].clone();
    let key_out = tokio::process::Command::new(&cfg.classe)
        .args(["--home", &home("teacher"), "id"])
        .output()
        .await?;
    let key = String::from_utf8_lossy(&key_out.stdout).trim().to_string();
    let teacher_stats = dir.path().join("teacher.json");
    let share_script = format!(
        "exec {bin} --home {} share {} --relay {relay_url} --no-discovery --stats {}",
        home("teacher"),
        lesson.dir().display(),
        teacher_stats.display()
    );
    let teacher_log = log("teacher");
    let mut sharer = Proc::spawn(
        "teacher",
        Spec {
            ns: &teacher.ns,
            script: &share_script,
            log: Some(&teacher_log),
            ..Spec::default()
        },
    )?;
    let ticket = tokio::time::timeout(Duration::from_secs(30), sharer.next_line())
        .await
        .context("the teacher printed no ticket")??
        .context("the teacher exited before printing a ticket")?;
    let teacher_id = ticket
        .parse::<classe_bundle::Ticket>()
        .ok()
        .and_then(|t| {
            t.providers
                .first()
                .map(|p| data_encoding::HEXLOWER.encode(&p.node_id))
        })
        .context("the teacher's ticket does not parse")?;
    let teacher_tx0 = net.counters(&teacher)?.tx;

    // Every pupil at once.
    let started = Instant::now();
    let mut pupils = Vec::new();
    for (i, host) in net.hosts()[2..].iter().enumerate() {
        let name = format!("pupil{}", i + 1);
        let script = format!(
            "exec {bin} --home {} fetch {ticket} --trust {key} --relay {relay_url} --no-discovery --json --out {}",
            home(&name),
            dir.path().join(format!("out{}", i + 1)).display()
        );
        let plog = log(&name);
        pupils.push(Proc::spawn(
            name.clone(),
            Spec {
                ns: &host.ns,
                script: &script,
                log: Some(&plog),
                ..Spec::default()
            },
        )?);
    }
    let mut summaries: Vec<Option<(f64, serde_json::Value)>> = vec![None; pupils.len()];
    let mut reads = tokio::task::JoinSet::new();
    for (i, mut p) in pupils.into_iter().enumerate() {
        reads.spawn(async move {
            let line = p.next_line().await.ok().flatten();
            let at = started.elapsed().as_secs_f64();
            (
                i,
                p,
                line.and_then(|l| serde_json::from_str(&l).ok())
                    .map(|v| (at, v)),
            )
        });
    }
    let mut running = Vec::new();
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    while !reads.is_empty() {
        match tokio::time::timeout_at(deadline, reads.join_next()).await {
            Ok(Some(Ok((i, p, s)))) => {
                summaries[i] = s;
                running.push(p);
            }
            Ok(Some(Err(e))) => bail!("a pupil reader failed: {e}"),
            Ok(None) => break,
            Err(_) => {
                reads.abort_all();
                break;
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu: f64 = running.iter().map(Proc::group_cpu_secs).sum::<f64>()
        + sharer.group_cpu_secs()
        + seed.group_cpu_secs();
    let teacher_tx = net.counters(&teacher)?.tx.saturating_sub(teacher_tx0);
    for p in &mut running {
        p.stop(Duration::from_secs(5)).await;
    }
    sharer.stop(Duration::from_secs(20)).await;
    let teacher_sent = read_sent(&teacher_stats);
    // The seed writes its --stats (what the relay carried) after closing
    // its connections: give it the time that takes with a class attached.
    seed.stop(Duration::from_secs(30)).await;
    let relay_carried = std::fs::read(dir.path().join("school.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["relay"]["sent"].as_u64());

    // Who is who, by node id.
    let mut nat_of: BTreeMap<String, Nat> = BTreeMap::new();
    for (s, nat) in summaries.iter().zip(&nats) {
        if let Some(id) = s.as_ref().and_then(|(_, v)| v["node_id"].as_str()) {
            nat_of.insert(id.to_string(), *nat);
        }
    }
    let mut result = HomeLabResult {
        n: cfg.pupils,
        f: cfg.lesson_bytes,
        nats: BTreeMap::new(),
        finished: 0,
        makespan: 0.0,
        bounds: metrics::bounds(
            cfg.lesson_bytes,
            cfg.teacher_up,
            &vec![cfg.pupil_up; cfg.pupils],
            &vec![cfg.pupil_down; cfg.pupils],
        ),
        ratio: 0.0,
        teacher_copies: teacher_tx as f64 / cfg.lesson_bytes as f64,
        from_teacher: 0,
        from_classmates: 0,
        classmate_paths: BTreeMap::new(),
        direct_share: 0.0,
        relayed_per_pupil: Vec::new(),
        relay_carried,
        teacher_sent,
        first_classmate_byte: (0.0, 0.0),
        cpu_secs: cpu,
        wall_secs: wall,
    };
    for nat in &nats {
        *result.nats.entry(nat_name(*nat).into()).or_default() += 1;
    }
    let mut firsts = Vec::new();
    for (i, s) in summaries.iter().enumerate() {
        let Some((at, v)) = s else {
            result.relayed_per_pupil.push(0);
            continue;
        };
        let out = PathBuf::from(v["out"].as_str().unwrap_or_default());
        if lesson.verify(&out).is_ok() {
            result.finished += 1;
            result.makespan = result.makespan.max(*at);
        } else {
            eprintln!("classe-lab: pupil {} wrote a lesson that differs", i + 1);
        }
        tally(&mut result, &mut firsts, v, &teacher_id, &nat_of);
    }
    let total: u64 = result.classmate_paths.values().sum();
    let direct = total - result.classmate_paths.get("relayed").copied().unwrap_or(0);
    result.direct_share = if total > 0 {
        direct as f64 / total as f64
    } else {
        0.0
    };
    result.first_classmate_byte = (
        metrics::median(&firsts),
        firsts.iter().copied().fold(0.0, f64::max),
    );
    result.ratio = result.makespan / result.bounds.t_min;
    if result.finished < cfg.pupils {
        eprintln!(
            "classe-lab: {} of {} pupils finished; logs in {} (kept)",
            result.finished,
            cfg.pupils,
            dir.path().display()
        );
        let _ = dir.keep();
    }
    Ok(result)
}

/// What the teacher's `--stats` says it sent.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TeacherSent {
    /// Payload bytes.
    pub payload: u64,
    /// QUIC datagram bytes over direct paths.
    pub direct: u64,
    /// QUIC datagram bytes through the relay.
    pub relay: u64,
}

fn read_sent(stats: &Path) -> Option<TeacherSent> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(stats).ok()?).ok()?;
    let t = &v["traffic"];
    let mut out = TeacherSent {
        payload: t["sent"].as_u64()?,
        direct: 0,
        relay: 0,
    };
    for p in t["paths"].as_object()?.values() {
        out.direct += p["direct_sent"].as_u64().unwrap_or(0);
        out.relay += p["relay_sent"].as_u64().unwrap_or(0);
    }
    Some(out)
}

/// Adds one pupil's summary to the totals.
fn tally(
    result: &mut HomeLabResult,
    firsts: &mut Vec<f64>,
    v: &serde_json::Value,
    teacher_id: &str,
    nat_of: &BTreeMap<String, Nat>,
) {
    let mut relayed_here = 0;
    let mut first: Option<f64> = None;
    if let Some(per) = v["per_provider"].as_object() {
        for (peer, bytes) in per {
            let bytes = bytes.as_u64().unwrap_or(0);
            let paths = &v["paths"][peer];
            let direct = paths["direct_received"].as_u64().unwrap_or(0);
            let relayed = paths["relay_received"].as_u64().unwrap_or(0);
            relayed_here += relayed;
            if peer == teacher_id {
                result.from_teacher += bytes;
                continue;
            }
            result.from_classmates += bytes;
            let kind = match nat_of.get(peer) {
                Some(Nat::Upnp) => "port-mapped",
                _ => "hole-punched",
            };
            *result.classmate_paths.entry(kind.into()).or_default() += direct;
            *result.classmate_paths.entry("relayed".into()).or_default() += relayed;
            if let Some(t) = v["first_byte_secs"][peer].as_f64() {
                first = Some(first.map_or(t, |f: f64| f.min(t)));
            }
        }
    }
    result.relayed_per_pupil.push(relayed_here);
    firsts.extend(first);
}

/// A Markdown table of runs.
pub fn table(results: &[HomeLabResult]) -> String {
    let mut s = String::from(
        "| N | F MB | NATs (pp/upnp/sym) | finished | makespan s | T_min s | ratio | teacher copies | from classmates | direct share (hole-punched / port-mapped / relayed MB) | relay carried MB | first classmate byte s (median / max) | CPU s / wall s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let mb = |b: u64| b as f64 / 1e6;
        let get = |k: &str| r.classmate_paths.get(k).copied().unwrap_or(0);
        let share = r.from_classmates as f64 / (r.from_classmates + r.from_teacher).max(1) as f64;
        s.push_str(&format!(
            "| {} | {:.0} | {}/{}/{} | {}/{} | {:.1} | {:.1} | {:.2} | {:.2} | {:.0} % | {:.0} % ({:.0} / {:.0} / {:.0}) | {} | {:.1} / {:.1} | {:.0} / {:.0} |\n",
            r.n,
            mb(r.f),
            r.nats.get("port-preserving").copied().unwrap_or(0),
            r.nats.get("upnp").copied().unwrap_or(0),
            r.nats.get("symmetric").copied().unwrap_or(0),
            r.finished,
            r.n,
            r.makespan,
            r.bounds.t_min,
            r.ratio,
            r.teacher_copies,
            share * 100.0,
            r.direct_share * 100.0,
            mb(get("hole-punched")),
            mb(get("port-mapped")),
            mb(get("relayed")),
            r.relay_carried.map_or("?".to_string(), |b| format!("{:.0}", mb(b))),
            r.first_classmate_byte.0,
            r.first_classmate_byte.1,
            r.cpu_secs,
            r.wall_secs,
        ));
    }
    s
}

/// Appends `result` to `dir/results.jsonl` (the table is printed by the
/// caller with [`table`]).
pub fn record(dir: &Path, result: &HomeLabResult) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("results.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    writeln!(f, "{}", serde_json::to_string(result)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nat_mix_has_the_asked_shares_spread_over_the_class() {
        let mix = nat_mix(20, 0.25, 0.15);
        let count = |n: Nat| mix.iter().filter(|m| **m == n).count();
        assert_eq!(count(Nat::Upnp), 5);
        assert_eq!(count(Nat::Symmetric), 3);
        assert_eq!(count(Nat::PortPreserving), 12);
        // Not bunched at one end.
        for kind in [Nat::Upnp, Nat::Symmetric] {
            assert!(
                mix[..10].contains(&kind) && mix[10..].contains(&kind),
                "{mix:?}"
            );
        }
        let thirty = nat_mix(30, 0.25, 0.15);
        assert_eq!(thirty.iter().filter(|m| **m == Nat::Upnp).count(), 8);
        assert_eq!(thirty.iter().filter(|m| **m == Nat::Symmetric).count(), 5);
    }
}
