//! The school as the trust anchor, through the real binary with separate
//! homes on loopback: certificates, revocation, rotation, no rollback,
//! freshness, and a seed node that follows a school.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A date as `classe school certify` takes it, `days` from now.
fn day(days: i64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + days * 86_400;
    classe_bundle::anchor::date(secs as u64)
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", stderr(out));
    stdout(out)
}

/// A school home: `classe school init`, then certificates on demand.
struct School {
    user: User,
    key: String,
    dir: PathBuf,
}

impl School {
    fn new(root: &Path, name: &str) -> Self {
        let user = User::new(root, &format!("school-{name}"));
        let out = user.run(&["school", "init", "--name", name]);
        let key = ok(&out, "school init")
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string();
        Self {
            user,
            key,
            dir: root.to_path_buf(),
        }
    }

    /// `classe school certify KEY --name NAME EXTRA…` into a file.
    fn certify(&self, key: &str, name: &str, extra: &[&str]) -> PathBuf {
        let mut args = vec!["school", "certify", key, "--name", name];
        args.extend(extra);
        let text = ok(&self.user.run(&args), "school certify");
        let file = self.dir.join(format!("cert-{}-{name}", &key[..8]));
        std::fs::write(&file, text).unwrap();
        file
    }

    /// Runs a `classe school` command that prints a bulletin; saves it.
    fn bulletin(&self, args: &[&str], name: &str) -> PathBuf {
        let text = ok(&self.user.run(args), "school bulletin");
        let file = self.dir.join(name);
        std::fs::write(&file, text).unwrap();
        file
    }
}

/// The school's seed node's home: certified `mirror`, following the school.
fn seed_home(root: &Path, school: &School) -> User {
    let seed = User::new(root, "seed");
    let cert = school.certify(&seed.id(), "Serveur", &["--role", "mirror"]);
    ok(
        &seed.run(&["id", "--cert", cert.to_str().unwrap()]),
        "seed cert",
    );
    ok(
        &seed.run(&["follow", "--school", &school.key, "--name", "JM"]),
        "follow --school",
    );
    seed
}

/// A teacher home with a certificate installed.
fn teacher(root: &Path, school: &School, name: &str, extra: &[&str]) -> (User, String) {
    let user = User::new(root, &format!("teacher-{name}"));
    let key = user.id();
    let cert = school.certify(&key, name, extra);
    ok(
        &user.run(&["id", "--cert", cert.to_str().unwrap()]),
        "id --cert",
    );
    (user, key)
}

/// A lesson folder of its own (`tag` makes its bytes differ).
fn lesson(root: &Path, name: &str, tag: u64) -> PathBuf {
    let dir = root.join(format!("lesson-{name}"));
    if !dir.exists() {
        make_lesson(&dir, 64 * 1024 + tag as usize);
        std::fs::write(dir.join("nom.txt"), format!("{name} {tag}")).unwrap();
    }
    dir
}

/// Fetches `ticket` as `pupil` into a fresh folder and expects a refusal:
/// exit 3, the reason, no folder, nothing pinned.
fn refused(pupil: &User, ticket: &str, out: &Path, says: &str) {
    let got = pupil.fetch(ticket, None, out, &["--no-discovery"]);
    let err = stderr(&got);
    assert_eq!(got.status.code(), Some(3), "should refuse ({says}): {err}");
    assert!(err.contains(says), "should say {says:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "{} was written", out.display());
    let ls = ok(&pupil.run(&["ls", "--json"]), "ls");
    let root = ticket_root(ticket);
    assert!(
        !ls.contains(&root),
        "the refused bundle is in the store: {ls}"
    );
}

fn ticket_root(ticket: &str) -> String {
    let t: classe_bundle::Ticket = ticket.parse().unwrap();
    data_encoding::HEXLOWER.encode(&t.root)
}

fn accepted(pupil: &User, ticket: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--no-discovery"];
    args.extend(extra);
    let got = pupil.fetch(ticket, None, out, &args);
    let err = stderr(&got);
    assert!(got.status.success(), "should accept: {err}");
    err
}

/// Makes the teacher of one refused case.
type MakeTeacher<'a> = Box<dyn Fn() -> (User, String) + 'a>;

#[test]
fn a_certified_lesson_is_accepted_and_every_bad_chain_is_refused_with_3() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let school = School::new(root, "Collège Jean Moulin");
    let other = School::new(root, "Collège Victor Hugo");
    let pupil = User::new(root, "pupil");
    ok(
        &pupil.run(&[
            "trust",
            "add-school",
            &school.key,
            "--name",
            "Collège Jean Moulin",
        ]),
        "add-school",
    );

    // The good case: accepted without a prompt, and said so.
    let (martin, _) = teacher(root, &school, "Mme Martin", &[]);
    let share = martin.share(&lesson(root, "good", 1), &["--no-discovery"]);
    let err = accepted(&pupil, &share.ticket, &root.join("out-good"), &[]);
    assert!(
        err.contains("signed by Mme Martin, certified by Collège Jean Moulin"),
        "{err}"
    );
    assert_same_tree(&root.join("lesson-good"), &root.join("out-good"));
    drop(share);

    let cases: Vec<(&str, MakeTeacher, &str)> = vec![
        (
            "another school",
            Box::new(|| teacher(root, &other, "M. Durand", &[])),
            "whom you do not trust",
        ),
        (
            "expired",
            Box::new(|| {
                let (from, until) = (day(-200), day(-100));
                teacher(
                    root,
                    &school,
                    "Mme Ancienne",
                    &["--from", &from, "--until", &until],
                )
            }),
            "expired on",
        ),
        (
            "not yet valid",
            Box::new(|| {
                let (from, until) = (day(100), day(200));
                teacher(
                    root,
                    &school,
                    "M. Futur",
                    &["--from", &from, "--until", &until],
                )
            }),
            "not valid before",
        ),
        (
            "another role",
            Box::new(|| teacher(root, &school, "Serveur", &["--role", "mirror"])),
            "as a seed node, not to publish",
        ),
        (
            "mix and match",
            Box::new(|| {
                // Mme Martin's certificate in another teacher's home: the
                // file is the home's to write, as an attacker would.
                let thief = User::new(root, "teacher-mix");
                let key = thief.id();
                std::fs::copy(
                    martin.home.join("credentials"),
                    thief.home.join("credentials"),
                )
                .unwrap();
                (thief, key)
            }),
            "carries the certificate of",
        ),
    ];
    for (case, make, says) in cases {
        let (t, _) = make();
        let name = case.replace(' ', "-");
        let share = t.share(&lesson(root, &name, 7), &["--no-discovery"]);
        refused(
            &pupil,
            &share.ticket,
            &root.join(format!("out-{name}")),
            says,
        );
        eprintln!("case {case}: refused as expected");
    }
}

#[test]
fn revocation_rotation_replay_and_rollback() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let school = School::new(root, "Collège Jean Moulin");
    let pupil = User::new(root, "pupil");
    ok(
        &pupil.run(&["trust", "add-school", &school.key, "--name", "JM"]),
        "add-school",
    );
    let (martin, martin_key) = teacher(root, &school, "Mme Martin", &[]);
    let (petit, petit_key) = teacher(root, &school, "M. Petit", &[]);
    let martin_lesson = lesson(root, "martin", 3);
    let martin_share = martin.share(&martin_lesson, &["--no-discovery"]);
    let petit_share = petit.share(&lesson(root, "petit", 4), &["--no-discovery"]);

    // Revoked teacher, a lesson made before the revocation's date and
    // never countersigned by the seed (a back-dated lesson looks the
    // same): refused.
    let since = day(1);
    let b1 = school.bulletin(
        &[
            "school",
            "revoke",
            &martin_key,
            "--reason",
            "vol",
            "--since",
            &since,
        ],
        "b1",
    );
    let b2 = school.bulletin(
        &["school", "revoke", &petit_key, "--reason", "départ"],
        "b2",
    );
    ok(
        &pupil.run(&["trust", "update", b2.to_str().unwrap()]),
        "update b2",
    );
    // The older list, replayed: ignored.
    let replay = pupil.run(&["trust", "update", b1.to_str().unwrap()]);
    assert!(
        stderr(&replay).contains("Nothing new"),
        "{}",
        stderr(&replay)
    );
    refused(
        &pupil,
        &martin_share.ticket,
        &root.join("out-m"),
        "revoked Mme Martin",
    );
    // Petit is revoked only in list 2: had the replay of list 1 been
    // taken, he would be accepted.
    refused(
        &pupil,
        &petit_share.ticket,
        &root.join("out-p"),
        "revoked M. Petit",
    );
    drop(martin_share);
    drop(petit_share);

    // Rotation: a certificate from the retired key is refused once the
    // pupil knows the rotation; a new one is accepted.
    let (old, old_key) = teacher(root, &school, "Mme Avant", &[]);
    let rotation = school.bulletin(&["school", "rotate"], "rotation");
    ok(
        &pupil.run(&["trust", "update", rotation.to_str().unwrap()]),
        "update rotation",
    );
    let share = old.share(&lesson(root, "avant", 5), &["--no-discovery"]);
    refused(
        &pupil,
        &share.ticket,
        &root.join("out-avant"),
        "retired key",
    );
    drop(share);
    let cert = school.certify(&old_key, "Mme Avant", &[]);
    ok(
        &old.run(&["id", "--cert", cert.to_str().unwrap()]),
        "id --cert",
    );
    let share = old.share(&lesson(root, "avant", 5), &["--no-discovery"]);
    accepted(&pupil, &share.ticket, &root.join("out-avant2"), &[]);
    drop(share);

    // Rollback: v1, then v2, then v1 again is refused (from the pupil's
    // own store: no network needed), unless --allow-older.
    let (rollin, _) = teacher(root, &school, "Mme Rollin", &[]);
    let folder = lesson(root, "rollin", 9);
    let v1 = rollin.share(&folder, &["--no-discovery"]);
    accepted(&pupil, &v1.ticket, &root.join("v1"), &[]);
    let ticket1 = v1.ticket.clone();
    drop(v1);
    std::fs::write(folder.join("nouveau.txt"), "version 2").unwrap();
    let v2 = rollin.share(&folder, &["--no-discovery"]);
    accepted(&pupil, &v2.ticket, &root.join("v2"), &[]);
    drop(v2);
    refused_older(&pupil, &ticket1, &root.join("v1-again"));
    accepted(
        &pupil,
        &ticket1,
        &root.join("v1-forced"),
        &["--allow-older"],
    );
}

/// The rollback refusal: exit 3, no folder (the bundle stays in the store
/// from the first fetch, so `refused`'s store check does not apply).
fn refused_older(pupil: &User, ticket: &str, out: &Path) {
    let got = pupil.fetch(ticket, None, out, &["--no-discovery"]);
    let err = stderr(&got);
    assert_eq!(got.status.code(), Some(3), "{err}");
    assert!(err.contains("older than version 2"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_stale_statement_is_a_warning_not_a_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let school = School::new(root, "Collège Jean Moulin");
    let seed = seed_home(root, &school);
    // The seed's word, signed three days ago (CLASSE_NOW: the clock the
    // decision is taken at), carried on a USB stick.
    let three_days_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3 * 86_400;
    let mut cmd = seed.cmd();
    cmd.args(["trust", "bulletin", &school.key])
        .env("CLASSE_NOW", three_days_ago.to_string());
    let out = run_with_timeout(cmd, STEP_TIMEOUT);
    let file = root.join("old-bulletin");
    std::fs::write(&file, ok(&out, "trust bulletin")).unwrap();

    let pupil = User::new(root, "pupil");
    ok(
        &pupil.run(&["trust", "add-school", &school.key, "--name", "JM"]),
        "add-school",
    );
    ok(
        &pupil.run(&["trust", "update", file.to_str().unwrap()]),
        "update",
    );
    let (martin, _) = teacher(root, &school, "Mme Martin", &[]);
    let share = martin.share(&lesson(root, "m", 2), &["--no-discovery"]);
    let err = accepted(&pupil, &share.ticket, &root.join("out"), &[]);
    assert!(err.contains("warning: the latest word"), "{err}");
    assert!(err.contains("3 days old"), "{err}");
}

/// A seed node following a school mirrors a newly certified teacher's
/// lesson with no per-teacher step and countersigns it; after the
/// teacher's revocation it refuses the new lesson, pupils refuse it too,
/// and the countersigned lesson still fetches with the teacher gone.
#[test]
fn a_seed_following_a_school_mirrors_countersigns_and_obeys_revocations() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let school = School::new(root, "Collège Jean Moulin");
    let seed = seed_home(root, &school);
    let mut cmd = seed.cmd();
    cmd.args(["seed", "--listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--no-port-mapping"]);
    let running = Running::spawn(cmd, "seed".into());
    let boot = running.line();
    let net = ["--bootstrap", boot.trim(), "--no-mdns", "--no-port-mapping"];

    let pupil = User::new(root, "pupil");
    ok(
        &pupil.run(&["trust", "add-school", &school.key, "--name", "JM"]),
        "add-school",
    );
    let (martin, martin_key) = teacher(root, &school, "Mme Martin", &[]);
    let share = martin.share(&lesson(root, "m1", 11), &net);
    let (mirrored, _) = running.event("mirrored");
    let root1 = mirrored["root"].as_str().unwrap().to_string();
    assert_eq!(root1, ticket_root(&share.ticket));
    drop(share);

    // Revoked: the list reaches the seed (a file from the school's
    // offline machine), which publishes it. Signed times are whole
    // seconds and a lesson is spared only if countersigned strictly
    // before the revocation: let a second pass, as days do in a school.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let list = school.bulletin(
        &["school", "revoke", &martin_key, "--reason", "vol"],
        "list",
    );
    let updated = std::time::Instant::now();
    ok(
        &seed.run(&["trust", "update", list.to_str().unwrap()]),
        "seed update",
    );
    let (bulletin, _) = running.event("bulletin");
    assert_eq!(bulletin["revocation_seq"], 1, "{bulletin}");
    eprintln!(
        "the running seed took the list in {:.1} s after `trust update`",
        updated.elapsed().as_secs_f64()
    );
    let started = std::time::Instant::now();
    let share = martin.share(&lesson(root, "m2", 12), &net);
    // Refused whichever way the announcement arrives first: on the
    // teacher's topic (`mirror_failed`, no file fetched) or on the
    // school's (`ignored`).
    let refusal = loop {
        let line = running.line();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert!(
            v["event"] != "mirrored" || v["title"] != "lesson-m2",
            "mirrored a revoked teacher's lesson: {v}"
        );
        if v["event"] == "ignored" || v["event"] == "mirror_failed" {
            break v;
        }
    };
    let reason = refusal["reason"].as_str().unwrap();
    assert!(reason.contains("revoked"), "{refusal}");
    eprintln!(
        "seed refused the revoked teacher's new lesson {:.1} s after it was shared",
        started.elapsed().as_secs_f64()
    );
    // The pupil, online, hears of the revocation from the seed's DHT
    // record before it decides.
    let mut args = vec!["fetch", &share.ticket, "--no-seed", "--out"];
    let out2 = root.join("out2");
    args.push(out2.to_str().unwrap());
    args.extend(net);
    let got = pupil.run(&args);
    assert_eq!(got.status.code(), Some(3), "{}", stderr(&got));
    assert!(
        stderr(&got).contains("revoked Mme Martin"),
        "{}",
        stderr(&got)
    );
    drop(share);

    // The lesson countersigned before the revocation: still served by the
    // seed, with the teacher gone.
    let out1 = root.join("out1");
    let mut args = vec![
        "fetch",
        &root1,
        "--no-seed",
        "--out",
        out1.to_str().unwrap(),
    ];
    args.extend(net);
    let got = pupil.run(&args);
    assert!(got.status.success(), "{}", stderr(&got));
    assert!(stderr(&got).contains("certified by JM"), "{}", stderr(&got));
    assert!(
        !stderr(&got).contains("no word yet"),
        "the seed's statement should have arrived: {}",
        stderr(&got)
    );
    assert_same_tree(&root.join("lesson-m1"), &out1);
}

fn assert_same_tree(a: &Path, b: &Path) {
    classe_testkit::tree::assert_same_tree(a, b, "pupil");
}
