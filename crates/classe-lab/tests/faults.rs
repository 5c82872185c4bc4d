//! Faults in a class, across hosts in network namespaces: the teacher's
//! process killed (`kill -9`) mid-transfer and started again, half the
//! class leaving at the same moment, the school's seed node killed
//! mid-mirror. Every host is a real `classe` process in its own
//! namespace on one bridge, with its own home and address; the teacher
//! shares with `--max-upload` so that transfers last long enough to be
//! interrupted.
//!
//! Needs root and `ip netns` (`.ci/run` installs iproute2); without them
//! every test prints `SKIPPED` and passes. The classe binary is
//! `target/debug/classe`, or `$CLASSE_BIN`. `HOMES_SHOW=1` prints the
//! stderr of every process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use classe_bundle::ticket::Ticket;
use classe_lab::net::{self, Shape, Topology};

mod common;
use classe_testkit::{
    lesson::tagged_lesson,
    process::{run_with_timeout, Running as Proc},
    tree::assert_same_tree,
};
use common::{classe_bin, STEP};

/// Longest a whole scenario may wait for its pupils.
const SCENARIO: Duration = Duration::from_secs(60);

/// The hosts of one test, in namespaces on one bridge. Dropping it
/// removes the namespaces (the topology's own guard) and the folder.
/// Declared after the processes in each test, so they end first.
struct Lab {
    topo: Topology,
    dir: tempfile::TempDir,
    started: AtomicUsize,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// `hosts` hosts on one bridge, or None (printed) when namespaces are
    /// not possible here.
    fn new(hosts: usize) -> Option<Self> {
        // One probe for all tests: probes running at once would collide
        // on the probe namespace's name.
        static PROBE: std::sync::OnceLock<net::Probe> = std::sync::OnceLock::new();
        let probe = PROBE.get_or_init(net::probe);
        if !probe.usable() {
            println!(
                "SKIPPED: needs root and ip netns ({})",
                probe.notes.join("; ")
            );
            return None;
        }
        let k = LABS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{}f{k}", net::NS_PREFIX, std::process::id());
        let shapes = vec![
            Shape {
                up_bps: None,
                down_bps: None,
            };
            hosts
        ];
        let topo = Topology::build(&tag, &shapes, None).unwrap();
        Some(Lab {
            topo,
            dir: tempfile::tempdir().unwrap(),
            started: AtomicUsize::new(0),
        })
    }

    fn ip(&self, host: usize) -> Ipv4Addr {
        self.topo.hosts()[host].ip
    }

    fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, host: usize, home: &str, args: &[&str]) -> Command {
        self.wrapped(host, &[], home, args)
    }

    /// `ip netns exec NS WRAPPER... classe --home HOME ARGS...`.
    fn wrapped(&self, host: usize, wrapper: &[&str], home: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.topo.hosts()[host].ns])
            .args(wrapper)
            .arg(classe_bin())
            .arg("--home")
            .arg(self.home(home))
            .args(args);
        c
    }

    /// Runs to completion (bounded by `STEP`, then SIGKILL).
    fn run(&self, host: usize, home: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = self.command(host, home, args);
        cmd.stdin(Stdio::null());
        run_with_timeout(cmd, STEP)
    }

    fn spawn(&self, host: usize, home: &str, args: &[&str]) -> Proc {
        self.spawn_cmd(self.command(host, home, args), home, args)
    }

    /// Its stderr goes to a file in the lab folder, so that a killed
    /// process leaves it readable and every read of it is complete.
    fn spawn_cmd(&self, cmd: Command, home: &str, args: &[&str]) -> Proc {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        let stderr = self.dir.path().join(format!("stderr-{n}-{home}"));
        let name = format!("{home} {}", args.first().copied().unwrap_or(""));
        Proc::spawn_logged(cmd, name, stderr)
    }

    fn author_key(&self, host: usize, home: &str) -> String {
        let out = self.run(host, home, &["id"]);
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A pupil on `host` fetching `ticket` into `<dir>/out-<host>`, mDNS
    /// off, seeding to classmates after (so they pass pieces on).
    fn pupil(&self, host: usize, ticket: &str, key: &str) -> Proc {
        let bind = format!("{}:0", self.ip(host));
        let out = self.home(&format!("out-{host}"));
        let args = [
            "fetch",
            ticket,
            "--trust",
            key,
            "--bind",
            &bind,
            "--json",
            "--out",
            out.to_str().unwrap(),
            "--no-mdns",
        ];
        self.spawn(host, &format!("pupil-{host}"), &args)
    }
}

/// A lesson of `mb` MB: a small text file and one random-looking file.
fn make_lesson(dir: &Path, mb: usize, tag: &str) {
    tagged_lesson(dir, mb * 1_000_000, tag);
}

/// Waits (bounded by `SCENARIO` from `since`) for the `--json` summary of
/// each pupil; fails with the stderr of one that gave none.
fn summaries(pupils: &[(usize, Proc)], since: Instant) -> Vec<serde_json::Value> {
    pupils
        .iter()
        .map(|(host, p)| {
            let left = (since + SCENARIO).saturating_duration_since(Instant::now());
            let line = p.line_within(left).unwrap_or_else(|| {
                panic!(
                    "pupil {host}: no summary (it exited, or {SCENARIO:?} passed); stderr:\n{}",
                    p.stderr()
                )
            });
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("pupil {host}: {e}: {line}"))
        })
        .collect()
}

/// How many pupils received bytes from another pupil of `got` (their
/// node ids are in the summaries).
fn classmate_pieces(got: &[serde_json::Value]) -> usize {
    let pupils: BTreeSet<&str> = got.iter().map(|s| s["node_id"].as_str().unwrap()).collect();
    got.iter()
        .filter(|s| {
            s["per_provider"]
                .as_object()
                .unwrap()
                .iter()
                .any(|(id, bytes)| pupils.contains(id.as_str()) && bytes.as_u64() > Some(0))
        })
        .count()
}

/// Test 1: the teacher's process is killed (-9) while six pupils fetch
/// (mDNS off), and started again on the same home and folder and the
/// same address: the same bundle from the same node. Every pupil ends
/// with the exact lesson, the restarted teacher served some of it, and
/// pieces went from pupil to pupil.
///
/// On another port (binding any free port) the pupils find the teacher
/// again only by mDNS, and a pupil that had not received the manifest
/// when the teacher died gives up (exit 5) instead: not tested here.
#[test]
fn teacher_killed_mid_transfer_and_restarted() {
    let Some(lab) = Lab::new(7) else { return };
    let lesson = lab.home("lesson");
    make_lesson(&lesson, 4, "prof");
    let key = lab.author_key(0, "teacher");
    // A fixed port: the ticket pupils hold names it.
    let bind = format!("{}:47000", lab.ip(0));
    let stats = lab.home("teacher-stats.json");
    let share = |lab: &Lab, extra: &[&str]| {
        let mut args = vec![
            "share",
            lesson.to_str().unwrap(),
            "--bind",
            &bind,
            "--max-upload",
            "1MB/s",
            "--no-mdns",
        ];
        args.extend_from_slice(extra);
        lab.spawn(0, "teacher", &args)
    };
    let teacher = share(&lab, &[]);
    let ticket = teacher.line();
    let since = Instant::now();
    let pupils: Vec<(usize, Proc)> = (1..=6).map(|h| (h, lab.pupil(h, &ticket, &key))).collect();
    // At 1 MB/s for 24 MB asked, nobody is done after 2 s.
    std::thread::sleep(Duration::from_secs(2));
    for (h, p) in &pupils {
        assert!(
            p.line_within(Duration::ZERO).is_none(),
            "pupil {h} finished before the teacher was killed: the test proves nothing"
        );
    }
    teacher.kill9();
    std::thread::sleep(Duration::from_secs(1));
    let teacher = share(&lab, &["--stats", stats.to_str().unwrap()]);
    // The same bundle from the same node; the discovery (libp2p TCP)
    // port, picked at random, may differ.
    let again: Ticket = teacher.line().parse().unwrap();
    let first: Ticket = ticket.parse().unwrap();
    assert_eq!(
        again.root, first.root,
        "sharing the same folder again gave another bundle"
    );
    assert_eq!(again.author, first.author);
    let (a, b) = (&first.providers[0], &again.providers[0]);
    assert_eq!(
        a.node_id, b.node_id,
        "the teacher came back as another node"
    );
    assert_eq!(a.addrs, b.addrs, "the teacher came back on another address");

    let got = summaries(&pupils, since);
    let from_classmates = classmate_pieces(&got);
    for ((h, _), s) in pupils.iter().zip(&got) {
        assert_same_tree(
            &lesson,
            Path::new(s["out"].as_str().unwrap()),
            &format!("pupil {h}"),
        );
    }
    drop(pupils);
    teacher.stop();
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let sent = stats["traffic"]["sent"].as_u64().unwrap();
    println!(
        "teacher restart: the restarted teacher sent {sent} bytes; {from_classmates} of 6 pupils got pieces from a classmate; all done {:.1} s after the start",
        since.elapsed().as_secs_f64()
    );
    assert!(sent > 0, "no pupil came back to the restarted teacher");
    assert!(
        from_classmates > 0,
        "no pupil got pieces from a classmate: {got:?}"
    );
}

/// SIGKILL to every process first, then reap them: they die together.
fn kill_all_at_once(procs: Vec<(usize, Proc)>) {
    for (_, p) in &procs {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for (_, p) in procs {
        p.kill9();
    }
}

/// Test 2: eight pupils fetch; four of them are killed (-9) at the same
/// moment mid-transfer; the other four end with the exact lesson.
#[test]
fn half_the_class_leaves_at_once() {
    let Some(lab) = Lab::new(9) else { return };
    let lesson = lab.home("lesson");
    make_lesson(&lesson, 3, "moitié");
    let key = lab.author_key(0, "teacher");
    let bind = format!("{}:0", lab.ip(0));
    let teacher = lab.spawn(
        0,
        "teacher",
        &[
            "share",
            lesson.to_str().unwrap(),
            "--bind",
            &bind,
            "--no-mdns",
            "--max-upload",
            "1MB/s",
        ],
    );
    let ticket = teacher.line();
    let since = Instant::now();
    let mut stay: Vec<(usize, Proc)> = (1..=8).map(|h| (h, lab.pupil(h, &ticket, &key))).collect();
    let leave = stay.split_off(4);
    std::thread::sleep(Duration::from_secs(2));
    for (h, p) in stay.iter().chain(&leave) {
        assert!(
            p.line_within(Duration::ZERO).is_none(),
            "pupil {h} finished before half the class left: the test proves nothing"
        );
    }
    kill_all_at_once(leave);
    let got = summaries(&stay, since);
    for ((h, _), s) in stay.iter().zip(&got) {
        assert_same_tree(
            &lesson,
            Path::new(s["out"].as_str().unwrap()),
            &format!("pupil {h}"),
        );
    }
    println!(
        "half the class left: the 4 others done {:.1} s after the start, {} of them got pieces from a classmate",
        since.elapsed().as_secs_f64(),
        classmate_pieces(&got)
    );
    drop(stay);
    teacher.stop();
}

/// Test 3: the school's seed node follows the teacher and is killed (-9)
/// while it mirrors; started again on the same home, it completes the
/// mirror: `ls --json` lists the bundle complete, `verify` passes.
#[test]
fn seed_killed_mid_mirror_completes_after_restart() {
    let Some(lab) = Lab::new(2) else { return };
    let lesson = lab.home("lesson");
    make_lesson(&lesson, 4, "graine");
    let key = lab.author_key(1, "teacher");
    let listen = format!("{}:4100", lab.ip(0));
    let seed_args = [
        "seed",
        "--listen",
        &listen,
        "--no-mdns",
        "--follow",
        &key,
        "--max-download",
        "500KB/s",
    ];
    let seed = lab.spawn(0, "seed", &seed_args);
    let bootstrap = seed.line();
    let bind = format!("{}:0", lab.ip(1));
    let teacher = lab.spawn(
        1,
        "teacher",
        &[
            "share",
            lesson.to_str().unwrap(),
            "--bind",
            &bind,
            "--bootstrap",
            &bootstrap,
            "--no-mdns",
        ],
    );
    let _ticket = teacher.line();
    // 4 MB at 500 kB/s: about 8 s of mirroring.
    let early = seed.event_within("mirrored", Duration::from_secs(3));
    assert!(
        early.is_none(),
        "the seed mirrored before it was killed: the test proves nothing"
    );
    seed.kill9();

    let since = Instant::now();
    let seed = lab.spawn(0, "seed", &seed_args);
    assert_eq!(seed.line(), bootstrap, "the seed kept its identity");
    let (mirrored, _) = seed.event_within("mirrored", SCENARIO).unwrap_or_else(|| {
        panic!(
            "the restarted seed did not complete the mirror within {SCENARIO:?}; stderr:\n{}",
            seed.stderr()
        )
    });
    println!(
        "seed killed mid-mirror: mirrored {:.1} s after its restart",
        since.elapsed().as_secs_f64()
    );
    let root = mirrored["root"].as_str().unwrap().to_string();
    seed.stop();
    teacher.stop();

    let out = lab.run(0, "seed", &["ls", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["root"], root.as_str());
    assert_eq!(listed[0]["complete"], true, "{listed:?}");
    assert_eq!(listed[0]["local_bytes"], listed[0]["size"], "{listed:?}");

    let out = lab.run(0, "seed", &["verify", &root, "--json"]);
    assert!(
        out.status.success(),
        "verify: {:?} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(v["status"], "ok", "{v}");
}

/// Test 4: two pupils whose clocks are a day off (one behind, one ahead;
/// `faketime`, wall clock only: a wrong date does not change the
/// monotonic clock) fetch from a teacher on time: both fetches succeed,
/// the signature checks pass, the lessons are exact. Skipped without
/// `faketime` (`.ci/run` installs it).
#[test]
fn pupils_with_a_clock_a_day_off_still_fetch() {
    if Command::new("faketime")
        .args(["-f", "-1d", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        println!("SKIPPED: needs faketime (Debian package faketime)");
        return;
    }
    let Some(lab) = Lab::new(3) else { return };
    let lesson = lab.home("lesson");
    make_lesson(&lesson, 2, "horloge");
    let key = lab.author_key(0, "teacher");
    let bind = format!("{}:0", lab.ip(0));
    let teacher = lab.spawn(
        0,
        "teacher",
        &[
            "share",
            lesson.to_str().unwrap(),
            "--bind",
            &bind,
            "--no-mdns",
        ],
    );
    let ticket = teacher.line();
    for (host, offset) in [(1, "-1d"), (2, "+1d")] {
        let bind = format!("{}:0", lab.ip(host));
        let out = lab.home(&format!("out-{host}"));
        let home = format!("pupil-{host}");
        let args = [
            "fetch",
            ticket.as_str(),
            "--trust",
            &key,
            "--bind",
            &bind,
            "--no-mdns",
            "--no-seed",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ];
        let mut cmd = lab.wrapped(host, &["faketime", "-f", offset], &home, &args);
        cmd.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        let pupil = lab.spawn_cmd(cmd, &home, &args);
        let summary = pupil.line_within(SCENARIO).unwrap_or_else(|| {
            panic!(
                "pupil {offset}: no summary within {SCENARIO:?}; stderr:\n{}",
                pupil.stderr()
            )
        });
        let s: serde_json::Value = serde_json::from_str(&summary).unwrap();
        assert_eq!(s["author"], key.as_str(), "pupil {offset}: {s}");
        assert_same_tree(&lesson, &out, &format!("pupil {offset}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut pupil = pupil;
        let status = loop {
            if let Some(st) = pupil.try_wait() {
                break st;
            }
            assert!(Instant::now() < deadline, "pupil {offset} did not exit");
            std::thread::sleep(Duration::from_millis(50));
        };
        let err = pupil.stderr();
        assert!(status.success(), "pupil {offset}: {status}: {err}");
        assert!(
            err.contains("verified"),
            "pupil {offset}: no signature line: {err}"
        );
        // The fake date really applied: the process saw another day.
        let date = lab.run_wrapped(host, offset);
        assert_ne!(date, today(), "faketime {offset} did not change the date");
    }
    teacher.stop();
}

fn today() -> String {
    let out = Command::new("date").arg("+%F").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Lab {
    /// `date +%F` under `faketime OFFSET` in `host`'s namespace.
    fn run_wrapped(&self, host: usize, offset: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.topo.hosts()[host].ns])
            .args(["faketime", "-f", offset, "date", "+%F"])
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}
