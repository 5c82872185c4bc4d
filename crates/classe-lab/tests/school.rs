//! The school as the trust anchor across hosts in network namespaces: a
//! seed node that follows a school mirrors a newly certified teacher's
//! lesson with no per-teacher step; after `school revoke` it refuses the
//! teacher's new lesson within one announcement round, the revocation
//! reaches a pupil's node through the school network, a pupil refuses the
//! new lesson and still fetches the one countersigned before.
//!
//! Every host is a real `classe` process in its own namespace, with its
//! own home (the school key's home is a separate folder, used offline).
//! Needs root and `ip netns`; without them it runs on loopback and says
//! so. The `MEASURE` lines are what docs/benchmarks.md reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

mod common;
use classe_testkit::{lesson::tagged_lesson, tree::assert_same_tree};
use common::lab::Lab;

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lines of `running` until an event of one of `kinds`; fails on a
/// `mirrored` event whose title is `never`.
fn until(running: &common::Running, kinds: &[&str], never: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let Some(line) = running.line_within(Duration::from_secs(5)) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        assert!(
            v["event"] != "mirrored" || v["title"] != never,
            "{}: mirrored {never}: {v}",
            running.name
        );
        if kinds.iter().any(|k| v["event"] == *k) {
            return v;
        }
    }
    panic!("{}: no {kinds:?} event within 120 s", running.name);
}

/// `classe fetch WHAT --no-seed --json` as the pupil on `host`, joining
/// through the seed.
fn fetch(
    lab: &Lab,
    host: usize,
    what: &str,
    bootstrap: &str,
    out: &std::path::Path,
) -> std::process::Output {
    let bind = lab.bind(host);
    lab.run(
        host,
        "pupil",
        &[
            "fetch",
            what,
            "--no-seed",
            "--bind",
            &bind,
            "--bootstrap",
            bootstrap,
            "--no-mdns",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ],
    )
}

#[test]
fn a_seed_following_a_school_mirrors_certified_teachers_and_obeys_revocations() {
    let Some(lab) = Lab::new(4, false) else {
        return;
    };
    // The school's offline machine: a home of its own (no network used).
    let school_key = ok(
        &lab.run(
            0,
            "school",
            &["school", "init", "--name", "Collège Jean Moulin"],
        ),
        "school init",
    )
    .lines()
    .last()
    .unwrap()
    .trim()
    .to_string();
    let certify = |key: &str, name: &str, role: &str, file: &str| {
        let text = ok(
            &lab.run(
                0,
                "school",
                &["school", "certify", key, "--name", name, "--role", role],
            ),
            "certify",
        );
        let path = lab.home(file);
        std::fs::write(&path, text).unwrap();
        path
    };

    // The seed node (host 0): certified `mirror`, follows the school.
    let seed_key = lab.author_key(0, "seed");
    let cert = certify(&seed_key, "Serveur du collège", "mirror", "seed.cert");
    ok(
        &lab.run(0, "seed", &["id", "--cert", cert.to_str().unwrap()]),
        "seed id --cert",
    );
    ok(
        &lab.run(
            0,
            "seed",
            &["follow", "--school", &school_key, "--name", "JM"],
        ),
        "follow --school",
    );
    let (seed, bootstrap) = lab.seed(0, "seed", &[]);

    // A pupil's always-on node (host 2) that trusts the school: where the
    // revocation's arrival is timed.
    for home in ["inbox", "pupil"] {
        ok(
            &lab.run(
                2,
                home,
                &["trust", "add-school", &school_key, "--name", "JM"],
            ),
            "add-school",
        );
    }
    ok(
        &lab.run(2, "inbox", &["follow", "--school", &school_key]),
        "inbox follow --school",
    );
    let listen = lab.listen(2);
    let inbox = lab.spawn(
        2,
        "inbox",
        &[
            "seed",
            "--listen",
            &listen,
            "--no-mdns",
            "--bootstrap",
            &bootstrap,
        ],
    );
    let _ = inbox.line();

    // A teacher the seed was never told about (host 1), certified once.
    let teacher_key = lab.author_key(1, "teacher");
    let cert = certify(&teacher_key, "Mme Martin", "publish", "martin.cert");
    ok(
        &lab.run(1, "teacher", &["id", "--cert", cert.to_str().unwrap()]),
        "teacher id --cert",
    );
    let lesson1 = lab.home("lesson-1");
    tagged_lesson(&lesson1, 1_000_000, "1");
    let shared = Instant::now();
    let (teacher, _ticket1) = lab.share(1, "teacher", &lesson1, Some(&bootstrap));
    let ticket_secs = shared.elapsed().as_secs_f64();
    let mirrored = until(&seed, &["mirrored"], "");
    println!(
        "MEASURE share by a newly certified teacher -> school seed holds it: {:.2} s (ticket printed after {ticket_secs:.2} s)",
        shared.elapsed().as_secs_f64()
    );
    let root1 = mirrored["root"].as_str().unwrap().to_string();
    teacher.stop();
    // Signed times are whole seconds; a lesson is spared only if
    // countersigned strictly before the revocation.
    std::thread::sleep(Duration::from_millis(1100));

    // The laptop is stolen: revoke, carry the list to the seed.
    let revoked_at = Instant::now();
    let list = ok(
        &lab.run(
            0,
            "school",
            &[
                "school",
                "revoke",
                &teacher_key,
                "--reason",
                "ordinateur volé",
            ],
        ),
        "revoke",
    );
    let list_file = lab.home("revocation.txt");
    std::fs::write(&list_file, list).unwrap();
    ok(
        &lab.run(0, "seed", &["trust", "update", list_file.to_str().unwrap()]),
        "seed trust update",
    );
    let at_seed = until(&seed, &["bulletin"], "");
    assert_eq!(at_seed["revocation_seq"], 1);
    // The pupil's node also hears the seed's statements; wait for the list.
    let mut at_pupil = until(&inbox, &["bulletin"], "");
    for _ in 0..20 {
        if at_pupil["revocation_seq"] == 1 {
            break;
        }
        at_pupil = until(&inbox, &["bulletin"], "");
    }
    assert_eq!(at_pupil["revocation_seq"], 1, "{at_pupil}");
    println!(
        "MEASURE school revoke -> revocation at the seed {:?}, at a pupil's node: {:.2} s (via {})",
        at_seed["via"],
        revoked_at.elapsed().as_secs_f64(),
        at_pupil["via"]
    );

    // The thief shares a new lesson: the seed refuses it (on whichever
    // topic it hears of it first) and never mirrors it.
    let lesson2 = lab.home("lesson-2");
    tagged_lesson(&lesson2, 500_000, "2");
    let shared = Instant::now();
    let (thief, ticket2) = lab.share(1, "teacher", &lesson2, Some(&bootstrap));
    let refusal = until(&seed, &["ignored", "mirror_failed"], "lesson-2");
    assert!(
        refusal["reason"].as_str().unwrap().contains("revoked"),
        "{refusal}"
    );
    println!(
        "MEASURE revoked teacher's new lesson refused by the seed {:.2} s after it was shared",
        shared.elapsed().as_secs_f64()
    );
    // A pupil online refuses it too, with nothing written.
    let out2 = lab.home("out-2");
    let got = fetch(&lab, 2, &ticket2, &bootstrap, &out2);
    assert_eq!(
        got.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(!out2.exists());
    thief.stop();

    // The lesson countersigned before the revocation: still served by the
    // seed, teacher gone, fetched by root on another host.
    let out1 = lab.home("out-1");
    let got = fetch(&lab, 3, &root1, &bootstrap, &out1);
    let err = String::from_utf8_lossy(&got.stderr);
    assert!(got.status.success(), "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&got.stdout).trim()).unwrap();
    println!(
        "MEASURE certified fetch waited {:.3} s for the school's word (whole fetch {:.2} s)",
        summary["certified"]["school_wait_secs"].as_f64().unwrap(),
        summary["seconds"].as_f64().unwrap()
    );
    assert!(err.contains("certified by JM"), "{err}");
    assert_same_tree(&lesson1, &out1, "the pupil's copy");
    seed.stop();
    inbox.stop();
}
