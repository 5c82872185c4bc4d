//! Faults a class meets: pupils who vanish mid-transfer, pupils who do
//! not re-share. The real binary, separate processes, loopback.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use common::*;

const MB: usize = 1_000_000;

/// Starts a `fetch --no-seed` in the background.
fn spawn_fetch(pupil: &User, ticket: &str, key: &str, out: &std::path::Path) -> Guard {
    let mut cmd = pupil.cmd();
    cmd.args(["fetch", ticket, "--trust", key, "--no-seed", "--json"])
        .args(["--bind", "127.0.0.1:0", "--no-discovery"])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Guard(cmd.spawn().unwrap())
}

/// Three pupils killed with SIGKILL mid-transfer (a lid closed, Wi-Fi
/// gone): the teacher notices each within the QUIC idle bound and lets
/// go of what it had queued for them, and a pupil arriving right after
/// gets the lesson. Counted from the teacher's own log: with iroh's
/// defaults (30 s of silence) none of the three was let go by the time
/// the teacher stops here.
#[test]
fn vanished_pupils_are_let_go_and_a_newcomer_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 30 * MB);
    let teacher = User::new(dir.path(), "teacher");
    let key = teacher.id();
    let sharer = teacher.share_env(
        &lesson,
        &["--no-discovery", "--max-upload", "5MB/s"],
        &[("CLASSE_LOG", "warn,classe_node::provider=info")],
    );

    let mut vanishing: Vec<Guard> = (0..3)
        .map(|i| {
            let pupil = User::new(dir.path(), &format!("gone{i}"));
            spawn_fetch(
                &pupil,
                &sharer.ticket,
                &key,
                &dir.path().join(format!("gone{i}")),
            )
        })
        .collect();
    // Mid-transfer: 30 MB at 5 MB/s shared by three takes about 6 s.
    std::thread::sleep(Duration::from_secs(2));
    for g in &mut vanishing {
        assert!(
            g.0.try_wait().unwrap().is_none(),
            "a pupil finished too early"
        );
        g.kill9();
    }
    let killed = Instant::now();

    let fresh = User::new(dir.path(), "fresh");
    let out_dir = dir.path().join("fresh-out");
    let out = fresh.fetch(&sharer.ticket, Some(&key), &out_dir, &["--json"]);
    assert!(
        out.status.success(),
        "the newcomer failed: {}",
        stderr(&out)
    );
    assert_eq!(tree(&out_dir), tree(&lesson));

    // Past the 10 s idle bound (with a second of margin), then stop.
    let wait = Duration::from_secs(12).saturating_sub(killed.elapsed());
    std::thread::sleep(wait);
    let (status, log) = sharer.stop();
    assert!(status.success(), "share exited with {status}: {log}");
    let connected = log.matches("peer connected").count();
    let disconnected = log.matches("peer disconnected").count();
    assert_eq!(
        connected, 4,
        "three vanished pupils and the newcomer:\n{log}"
    );
    assert_eq!(
        disconnected,
        4,
        "the teacher still holds {} vanished pupil(s) 12 s after they died:\n{log}",
        connected - disconnected
    );
}
