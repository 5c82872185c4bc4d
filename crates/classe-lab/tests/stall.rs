//! Issue 10, finding 0: a class fetching from the school's seed node with
//! the teacher offline must not wait on the seed's once-per-piece rule
//! when the pupils leave as soon as they are done (`fetch --no-seed`).
//!
//! The seed declines a piece sent less than ten seconds ago, so that
//! pupils pass it on to each other. A pupil that leaves when done passes
//! nothing on: when every pupil misses the same last piece, the seed used
//! to hand it to one pupil every ten seconds, that pupil left with it, and
//! the rest of the class waited (lab, 40 pupils, 5 MB: 10 of 40 unfinished
//! after 120 s, each one piece short, the seed declining it ~2,600 times).
//!
//! Here the lesson is one piece, so every pupil misses the same piece and
//! only the seed has it: with the rule applied to leavers the last pupils
//! finish tens of seconds late; without it, all within seconds.
//! Loopback only; every process is ended by its pid; the classe binary is
//! `target/debug/classe`, or `$CLASSE_BIN`.
//! `crates/classe-lab/scripts/stall-repro.sh` is the 40-pupil version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::{classe_bin, Running};

/// Pupils fetching at once.
const PUPILS: usize = 6;
/// The whole class must be done within this. The seed's resend rule costs
/// 10 s per pupil after the first one or two.
const CLASS_WITHIN: Duration = Duration::from_secs(15);
/// Upper bound on the test's wait for the class.
const GIVE_UP: Duration = Duration::from_secs(60);

fn classe(home: &Path) -> Command {
    let mut cmd = Command::new(classe_bin());
    cmd.arg("--home").arg(home);
    if let Ok(filter) = std::env::var("STALL_LOG") {
        cmd.env("CLASSE_LOG", filter);
    }
    cmd
}

fn run(home: &Path, args: &[&str]) -> String {
    let out = classe(home)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "classe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn spawn(home: &Path, args: &[&str], name: &str) -> Running {
    let mut cmd = classe(home);
    cmd.args(args);
    Running::spawn(cmd, name.to_string())
}

#[test]
fn pupils_who_leave_when_done_are_not_held_back_by_the_seeds_resend_rule() {
    let dir = tempfile::tempdir().unwrap();
    let home = |name: &str| dir.path().join(name);
    let lesson = home("lesson");
    std::fs::create_dir_all(&lesson).unwrap();
    // One piece (under 256 KiB): every pupil needs the same one.
    let data = classe_testkit::pseudo_random(200_000, 0x2545_f491_4f6c_dd1d);
    std::fs::write(lesson.join("fiche.bin"), &data).unwrap();
    let key = run(&home("teacher"), &["id"]).trim().to_string();

    let port = 43000 + std::process::id() % 2000;
    let listen = format!("127.0.0.1:{port}");
    let seed = spawn(
        &home("seed"),
        &["seed", "--listen", &listen, "--no-mdns", "--follow", &key],
        "seed",
    );
    let bootstrap = seed.line();
    let teacher = spawn(
        &home("teacher"),
        &[
            "share",
            lesson.to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
            "--bootstrap",
            &bootstrap,
            "--no-mdns",
        ],
        "teacher",
    );
    let ticket = teacher.line();
    seed.event("mirrored");
    // The teacher goes offline right after the seed has the lesson.
    teacher.stop();

    let started = Instant::now();
    let mut pupils: Vec<(String, Running)> = (0..PUPILS)
        .map(|i| {
            let name = format!("pupil-{i}");
            let out = home(&format!("out-{i}"));
            let p = spawn(
                &home(&name),
                &[
                    "fetch",
                    &ticket,
                    "--trust",
                    &key,
                    "--bind",
                    "127.0.0.1:0",
                    "--bootstrap",
                    &bootstrap,
                    "--no-mdns",
                    "--no-seed",
                    "--json",
                    "--out",
                    out.to_str().unwrap(),
                ],
                &name,
            );
            (name, p)
        })
        .collect();

    // Each pupil prints its summary and exits once the lesson is written.
    let mut finished: Vec<(String, Duration)> = Vec::new();
    while !pupils.is_empty() && started.elapsed() < GIVE_UP {
        let mut still = Vec::new();
        for (name, p) in pupils {
            match p.try_line() {
                Some(line) if line.contains("\"root\"") => {
                    finished.push((name, started.elapsed()));
                }
                _ => still.push((name, p)),
            }
        }
        pupils = still;
        std::thread::sleep(Duration::from_millis(100));
    }
    let unfinished: Vec<&String> = pupils.iter().map(|(n, _)| n).collect();
    let last = finished.iter().map(|(_, t)| *t).max().unwrap_or_default();
    println!("MEASURE {PUPILS} --no-seed pupils from the seed: done at {finished:?}; unfinished {unfinished:?}");
    assert!(
        unfinished.is_empty(),
        "pupils still waiting after {GIVE_UP:?}: {unfinished:?} (done: {finished:?})"
    );
    assert!(
        last <= CLASS_WITHIN,
        "the class took {last:?} (> {CLASS_WITHIN:?}): the seed held the piece back from pupils who leave when done; done at {finished:?}"
    );
    for i in 0..PUPILS {
        let got = std::fs::read(home(&format!("out-{i}")).join("fiche.bin")).unwrap();
        assert!(got == data, "pupil {i} wrote other bytes");
    }
    drop(pupils);
    seed.stop();
}
