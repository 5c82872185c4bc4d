//! `classe follow` and `classe seed` end to end, as a school's IT person
//! would run them: separate processes, each with its own home, on
//! loopback, no root needed.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn follow_lists_adds_and_removes_keys() {
    let tmp = tempfile::tempdir().expect("tmp");
    let teacher = User::new(tmp.path(), "teacher");
    let seed = User::new(tmp.path(), "seed");
    let key = teacher.id();

    let out = seed.run(&["follow", &key]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Following"), "{}", stderr(&out));
    let out = seed.run(&["follow", &key]);
    assert!(
        stderr(&out).contains("Already following"),
        "{}",
        stderr(&out)
    );
    let out = seed.run(&["follow", "--list"]);
    assert_eq!(stdout(&out).trim(), key, "one key, listed once");

    let out = seed.run(&["follow", "not-a-key"]);
    assert_eq!(out.status.code(), Some(2), "a bad key is a usage error");

    let out = seed.run(&["unfollow", &key]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&seed.run(&["follow"])).trim(), "");
    let out = seed.run(&["unfollow", &key]);
    assert!(
        stderr(&out).contains("was not followed"),
        "{}",
        stderr(&out)
    );
}

/// A running `classe seed` (the kit's harness: stdout lines on a
/// channel, stderr kept, ended by its pid on drop).
struct SeedProcess {
    child: Running,
    bootstrap: String,
}

impl SeedProcess {
    fn start(user: &User, extra: &[&str]) -> Self {
        let mut cmd = user.cmd();
        cmd.args(["seed", "--listen", "127.0.0.1:0"]).args(extra);
        let child = Running::spawn(cmd, "classe seed".into());
        let bootstrap = child
            .line_within(STEP_TIMEOUT)
            .expect("seed printed no address");
        assert!(
            bootstrap.starts_with("/ip4/127.0.0.1/tcp/") && bootstrap.contains("/p2p/"),
            "not a bootstrap address: {bootstrap:?}"
        );
        Self { child, bootstrap }
    }

    /// The next JSON event whose "event" is `kind`, within `limit`.
    fn event(&self, kind: &str, limit: Duration) -> serde_json::Value {
        match self.child.event_within(kind, limit) {
            Some((v, _)) => v,
            None => panic!("no {kind} event within {limit:?}"),
        }
    }

    /// SIGTERM; the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.child.terminate();
        let status = self
            .child
            .wait_timeout(STEP_TIMEOUT)
            .expect("seed did not stop");
        (status, self.child.stderr_within(Duration::from_secs(5)))
    }
}

#[test]
fn the_seed_mirrors_a_followed_teacher_and_serves_pupils_without_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let teacher = User::new(tmp.path(), "teacher");
    let school = User::new(tmp.path(), "school");
    let pupil = User::new(tmp.path(), "pupil");
    let key = teacher.id();
    assert!(school.run(&["follow", &key]).status.success());

    let out_dir = tmp.path().join("mirror");
    let stats = tmp.path().join("seed-stats.json");
    let seed = SeedProcess::start(
        &school,
        &[
            "--out",
            out_dir.to_str().expect("utf-8"),
            "--stats",
            stats.to_str().expect("utf-8"),
        ],
    );

    let lesson = tmp.path().join("Fractions");
    make_lesson(&lesson, 300_000);
    let sharer = teacher.share(&lesson, &["--bootstrap", &seed.bootstrap]);
    let mirrored = seed.event("mirrored", STEP_TIMEOUT);
    assert_eq!(mirrored["author"], key);
    assert_eq!(mirrored["title"], "Fractions");
    assert_eq!(mirrored["version"], 1);
    let written = out_dir.join("Fractions");
    assert_eq!(
        mirrored["out"].as_str(),
        Some(written.to_str().expect("utf-8"))
    );
    assert_eq!(tree(&written), tree(&lesson), "the folder is the lesson");
    let root = mirrored["root"].as_str().expect("root").to_string();
    let (status, _) = sharer.stop();
    assert!(status.success());

    // The teacher is gone: a pupil fetches by root through the seed.
    let got = tmp.path().join("got");
    let out = pupil.fetch(
        &root,
        Some(&key),
        &got,
        &["--bind", "127.0.0.1:0", "--bootstrap", &seed.bootstrap],
    );
    assert!(out.status.success(), "pupil fetch: {}", stderr(&out));
    assert_eq!(tree(&got), tree(&lesson));

    let (status, err) = seed.stop();
    assert!(status.success(), "seed exit {status:?}: {err}");
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).expect("--stats written")).expect("json");
    let sent: u64 = stats["traffic"]["peers"]
        .as_object()
        .map(|peers| peers.values().filter_map(|p| p["sent"].as_u64()).sum())
        .unwrap_or(0);
    assert!(sent >= 300_000, "the seed served the pupil: {stats}");
    assert!(stats["discovery"].is_object(), "{stats}");

    // Restarted, it serves what it holds and says so.
    let again = SeedProcess::start(&school, &[]);
    let (status, err) = again.stop();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("Seeding 1 bundle(s); following 1 author(s)"),
        "{err}"
    );
}

#[test]
fn seed_with_a_missing_config_file_is_a_usage_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let school = User::new(tmp.path(), "school");
    let missing = tmp.path().join("nope.toml");
    let out = school.run(&[
        "seed",
        "--listen",
        "127.0.0.1:0",
        "--config",
        missing.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}
