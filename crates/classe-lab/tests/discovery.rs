//! Finding peers without the teacher, across hosts in network namespaces:
//! the seed node mirrors what a followed teacher shares, pupils find
//! bundles through the DHT and by mDNS, followers catch up, replays and
//! forgeries change nothing. Every host is a real `classe` process in its
//! own namespace, with its own home and address.
//!
//! Needs root and `ip netns` (`.ci/run` installs iproute2). Without them
//! the DHT tests run on loopback instead, and say so; the mDNS test needs
//! a LAN and is skipped. The classe binary is `target/debug/classe`, or
//! `$CLASSE_BIN`.
//!
//! `DISCOVERY_LESSON_MB` (default 2) sets the lesson size and
//! `DISCOVERY_SHAPED=1` shapes links as the lab does (seed node and
//! teacher 20 Mbit/s up, pupils 10 Mbit/s up); the timings printed by
//! `seed_mirrors_and_pupils_fetch_by_ticket_and_by_root` are the
//! measurements docs/benchmarks.md reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;
use classe_testkit::{lesson::tagged_lesson, tree::assert_same_tree};
use common::lab::Lab;

fn make_lesson(dir: &Path, mb: usize, tag: &str) {
    tagged_lesson(dir, mb * 1_000_000, tag);
}

fn lesson_mb() -> usize {
    std::env::var("DISCOVERY_LESSON_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

fn same_tree(a: &Path, b: &Path) {
    assert_same_tree(a, b, "the pupil's copy");
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
}

/// Test 1: the seed mirrors by itself; with the teacher gone, pupils
/// whose only bootstrap is the seed fetch by ticket and by bare root.
#[test]
fn seed_mirrors_and_pupils_fetch_by_ticket_and_by_root() {
    let Some(lab) = Lab::new(4, false) else {
        return;
    };
    let lesson = lab.dir.path().join("lesson");
    make_lesson(&lesson, lesson_mb(), "1");
    let teacher_key = lab.author_key(1, "teacher");
    let teacher_key = teacher_key.as_str();

    let (seed, bootstrap) = lab.seed(0, "seed", &["--follow", teacher_key]);
    assert!(
        bootstrap.starts_with('/') && bootstrap.contains("/p2p/"),
        "{bootstrap}"
    );

    let shared_at = Instant::now();
    let (teacher, ticket) = lab.share(1, "teacher", &lesson, Some(&bootstrap));
    let (mirrored, _) = seed.event("mirrored");
    let mirror_secs = shared_at.elapsed().as_secs_f64();
    println!(
        "MEASURE share -> seed holds the bundle: {mirror_secs:.2} s ({} MB; seed's own fetch {:.2} s)",
        lesson_mb(),
        mirrored["seconds"].as_f64().unwrap()
    );
    let root = mirrored["root"].as_str().unwrap().to_string();
    assert_eq!(mirrored["version"], 1);
    teacher.stop();

    // The seed restarts: same identity (same bootstrap address), same
    // content, served and provided again without the teacher.
    seed.stop();
    let (seed, again) = lab.seed(0, "seed", &["--follow", teacher_key]);
    assert_eq!(again, bootstrap, "the seed kept its identity");

    // By ticket: the ticket's only provider is gone; the seed has it.
    let out = lab.run(
        2,
        "pupil-a",
        &lab.fetch_args(2, &ticket, teacher_key, Some(&bootstrap), "out-a", false)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let a = json(&out);
    same_tree(&lesson, &lab.home("out-a"));
    assert_eq!(a["root"], root.as_str());

    // By bare root hash, trusting the key on the command line.
    let started = Instant::now();
    let out = lab.run(
        3,
        "pupil-b",
        &lab.fetch_args(3, &root, teacher_key, Some(&bootstrap), "out-b", false)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let b = json(&out);
    same_tree(&lesson, &lab.home("out-b"));
    let lookup = b["dht_lookup"]["seconds"].as_f64().unwrap();
    assert!(b["dht_lookup"]["providers"].as_u64().unwrap() >= 1);
    println!(
        "MEASURE fetch ROOT -> providers found through the DHT: {lookup:.3} s (whole fetch {:.2} s)",
        started.elapsed().as_secs_f64()
    );
    // Both came from the seed: one provider each, the same one.
    let from_a: Vec<&String> = a["per_provider"].as_object().unwrap().keys().collect();
    let from_b: Vec<&String> = b["per_provider"].as_object().unwrap().keys().collect();
    assert_eq!(from_a, from_b, "both pupils fetched from the seed node");
    seed.stop();
}

/// Test 2: with the teacher and the seed gone, a pupil finds a classmate
/// through the DHT (a record another node holds) and fetches from them.
#[test]
fn pupil_finds_a_classmate_through_the_dht() {
    let Some(lab) = Lab::new(5, false) else {
        return;
    };
    let lesson = lab.dir.path().join("lesson");
    make_lesson(&lesson, lesson_mb(), "2");
    let key = lab.author_key(1, "teacher");
    let key = key.as_str();
    // The seed follows nobody: it is only the bootstrap here.
    let (seed, bootstrap) = lab.seed(0, "seed", &[]);
    // Another pupil's always-on node (an inbox following nobody yet): a
    // DHT node that stays.
    let (other, other_addr) = lab.seed(3, "pupil-c", &["--bootstrap", &bootstrap]);

    let (teacher, ticket) = lab.share(1, "teacher", &lesson, Some(&bootstrap));
    // Pupil A fetches and keeps seeding.
    let a = lab.spawn(
        2,
        "pupil-a",
        &lab.fetch_args(2, &ticket, key, Some(&bootstrap), "out-a", true)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let summary: serde_json::Value = serde_json::from_str(&a.line()).unwrap();
    let a_node = summary["node_id"].as_str().unwrap().to_string();
    let root = summary["root"].as_str().unwrap().to_string();
    // Let A's provider record reach the DHT nodes, then both the teacher
    // and the seed leave.
    std::thread::sleep(Duration::from_secs(2));
    teacher.stop();
    seed.stop();

    // B knows neither A nor the bundle's holders: only the other pupil's
    // node, as a DHT entry point.
    let out = lab.run(
        4,
        "pupil-b",
        &lab.fetch_args(4, &root, key, Some(&other_addr), "out-b", false)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let b = json(&out);
    same_tree(&lesson, &lab.home("out-b"));
    let providers: Vec<&String> = b["per_provider"].as_object().unwrap().keys().collect();
    assert_eq!(
        providers,
        vec![&a_node],
        "B fetched from A, found through the DHT"
    );
    a.stop();
    other.stop();
}

/// Test 3: on one LAN, no seed node, no bootstrap: a pupil finds a
/// classmate by mDNS.
#[test]
fn pupil_finds_a_classmate_by_mdns() {
    let Some(lab) = Lab::new(3, true) else { return };
    let lesson = lab.dir.path().join("lesson");
    make_lesson(&lesson, lesson_mb(), "3");
    let key = lab.author_key(0, "teacher");
    let key = key.as_str();
    let (teacher, ticket) = lab.share(0, "teacher", &lesson, None);
    let a = lab.spawn(
        1,
        "pupil-a",
        &lab.fetch_args(1, &ticket, key, None, "out-a", true)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let summary: serde_json::Value = serde_json::from_str(&a.line()).unwrap();
    let a_node = summary["node_id"].as_str().unwrap().to_string();
    let root = summary["root"].as_str().unwrap().to_string();
    teacher.stop();

    let out = lab.run(
        2,
        "pupil-b",
        &lab.fetch_args(2, &root, key, None, "out-b", false)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let b = json(&out);
    same_tree(&lesson, &lab.home("out-b"));
    let providers: Vec<&String> = b["per_provider"].as_object().unwrap().keys().collect();
    assert_eq!(providers, vec![&a_node]);
    a.stop();
}

/// Test 4: a follower offline during two announcements catches up to the
/// latest when it comes back; the older version re-announced later is
/// ignored.
#[test]
fn follower_catches_up_and_ignores_an_older_version() {
    let Some(lab) = Lab::new(4, false) else {
        return;
    };
    let lesson = lab.dir.path().join("lesson");
    make_lesson(&lesson, 1, "4");
    let key = lab.author_key(1, "teacher");
    let key = key.as_str();
    let (seed, bootstrap) = lab.seed(0, "seed", &["--follow", key]);
    let share = |tag: &str| {
        std::fs::write(lesson.join("docs/lisez-moi.txt"), format!("Leçon {tag}\n")).unwrap();
        let (t, _ticket) = lab.share(1, "teacher", &lesson, Some(&bootstrap));
        let (m, _) = seed.event("mirrored");
        t.stop();
        m
    };
    let v1 = share("v1");
    assert_eq!(v1["version"], 1);
    let v1_line = std::fs::read_to_string(lab.home("seed").join("announcements")).unwrap();
    let v1_line = v1_line.lines().next().unwrap().to_string();
    let v2 = share("v2");
    assert_eq!(v2["version"], 2);

    // The follower comes online now: it must catch up to v2 only.
    let follow = lab.run(2, "follower", &["follow", key]);
    assert!(follow.status.success());
    let inbox = lab.home("inbox");
    let (follower, _addr) = lab.seed(
        2,
        "follower",
        &["--bootstrap", &bootstrap, "--out", inbox.to_str().unwrap()],
    );
    let (got, skipped) = follower.event("mirrored");
    assert_eq!(got["version"], 2, "caught up to the latest version");
    assert!(skipped.iter().all(|e| e["event"] != "mirrored"));
    let written = std::fs::read_to_string(inbox.join("lesson/docs/lisez-moi.txt")).unwrap();
    assert_eq!(written, "Leçon v2\n");

    // v1, validly signed, announced again by someone else.
    let adversary = lab_adversary(&lab, 3, &bootstrap, &["--replay", &v1_line]);
    assert!(
        adversary.status.success(),
        "{}",
        String::from_utf8_lossy(&adversary.stderr)
    );
    let later = follower.lines_for(Duration::from_secs(3));
    assert!(
        !later.iter().any(|l| l.contains("\"mirrored\"")),
        "an older version was mirrored: {later:?}"
    );
    assert!(
        later.iter().any(|l| l.contains("older than the one known")),
        "the replay was not noticed: {later:?}"
    );
    let written = std::fs::read_to_string(inbox.join("lesson/docs/lisez-moi.txt")).unwrap();
    assert_eq!(written, "Leçon v2\n", "the folder still holds v2");
    follower.stop();
    seed.stop();
}

fn lab_adversary(lab: &Lab, host: usize, bootstrap: &str, args: &[&str]) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_classe-lab");
    let mut cmd = match &lab.topo {
        Some(t) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &t.hosts()[host].ns, bin]);
            c
        }
        None => Command::new(bin),
    };
    cmd.args([
        "adversary",
        "--listen",
        &format!("{}:0", lab.ip(host)),
        "--bootstrap",
        bootstrap,
        "--stay-secs",
        "6",
    ])
    .args(args)
    .stdin(Stdio::null())
    .output()
    .unwrap()
}

/// Test 5: forged announcements (wrong key, bad signature) trigger no
/// download.
#[test]
fn forged_announcements_trigger_no_download() {
    let Some(lab) = Lab::new(3, false) else {
        return;
    };
    let key = lab.author_key(1, "teacher");
    let key = key.as_str();
    let stats = lab.home("seed-stats.json");
    let (seed, bootstrap) = lab.seed(
        0,
        "seed",
        &["--follow", key, "--stats", stats.to_str().unwrap()],
    );
    let out = lab_adversary(&lab, 2, &bootstrap, &["--forge-as", key]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = seed.lines_for(Duration::from_secs(2));
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("\"mirrored\"") || l.contains("\"mirror_failed\"")),
        "a forged announcement started a download: {lines:?}"
    );
    let ignored = lines.iter().filter(|l| l.contains("\"ignored\"")).count();
    assert_eq!(ignored, 2, "both forgeries are reported: {lines:?}");
    seed.stop();
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(stats["discovery"]["bad_announcements"], 2);
    // Nothing was fetched: the seed's store is empty.
    let ls = lab.run(0, "seed", &["ls", "--json"]);
    assert!(String::from_utf8_lossy(&ls.stdout).trim().is_empty());
}
