//! The exit codes of docs/cli.md, a few per command, through the real
//! binary: scripts and the schools' tooling rely on them.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// Runs `args` as `user` and checks the exit code and a word of the
/// one-sentence error.
fn expect(user: &User, args: &[&str], code: i32, says: &str) {
    let out = user.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "classe {args:?}: {err}");
    assert!(
        err.contains(says),
        "classe {args:?} should say {says:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn each_command_exits_with_its_documented_code() {
    let tmp = tempfile::tempdir().expect("tmp");
    let user = User::new(tmp.path(), "user");
    let p = |name: &str| tmp.path().join(name).to_str().expect("utf-8").to_string();
    let key = user.id();

    // id
    expect(
        &user,
        &["id", "--import", &p("no-such.key")],
        2,
        "cannot read key file",
    );
    std::fs::write(p("taken"), "x").unwrap();
    expect(&user, &["id", "--export", &p("taken")], 6, "already exists");

    // trust
    expect(
        &user,
        &["trust", "add", "not-a-key"],
        2,
        "not an author key",
    );
    let other = User::new(tmp.path(), "other").id();
    expect(&user, &["trust", "remove", &other], 2, "was not trusted");

    // share: nothing to share is the user's mistake, not the disk's.
    expect(
        &user,
        &["share", &p("missing-folder"), "--no-discovery"],
        2,
        "missing-folder",
    );
    std::fs::create_dir(p("empty")).unwrap();
    expect(&user, &["share", &p("empty"), "--no-discovery"], 2, "empty");

    // fetch
    expect(&user, &["fetch", "classeXYZ", "--no-seed"], 2, "ticket");
    std::fs::create_dir(p("full")).unwrap();
    std::fs::write(tmp.path().join("full/a"), "a").unwrap();
    let root = "ab".repeat(32);
    expect(
        &user,
        &[
            "fetch",
            &root,
            "--trust",
            &key,
            "--out",
            &p("full"),
            "--no-seed",
        ],
        6,
        "not empty",
    );
    expect(
        &user,
        &[
            "fetch",
            &root,
            "--trust",
            &key,
            "--out",
            &p("got"),
            "--no-seed",
            "--no-discovery",
            "--bind",
            "127.0.0.1:0",
        ],
        5,
        "no provider",
    );
    assert!(!tmp.path().join("got").exists(), "nothing written");

    // the store commands
    expect(&user, &["export", &root, &p("out")], 2, "no bundle");
    expect(&user, &["export", "zz", &p("out")], 2, "not a bundle root");
    expect(&user, &["rm", &root], 2, "");
    let out = user.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // seed and follow
    expect(&user, &["follow", "nope"], 2, "not an author key");
    expect(
        &user,
        &[
            "seed",
            "--listen",
            "127.0.0.1:0",
            "--relay-cert",
            &p("taken"),
        ],
        2,
        "relay-key",
    );
}
