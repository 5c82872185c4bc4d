//! `classe demo` at its smallest: a teacher and two pupils as separate
//! processes on loopback, a 1 MB lesson. It must exit 0 having verified
//! every pupil's copy, and print who received what from whom.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::*;

#[test]
fn demo_verifies_every_pupil_and_prints_who_sent_what() {
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--pupils", "2", "--size-mb", "1"])
        .env_remove("CLASSE_HOME")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    let out = run_with_timeout(cmd, STEP_TIMEOUT);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "demo failed: {err}\n{text}");
    for pupil in ["pupil-1", "pupil-2"] {
        assert!(
            err.contains(&format!("{pupil} has the lesson after"))
                && err
                    .lines()
                    .any(|l| l.starts_with(pupil) && l.contains("verified")),
            "{pupil} not verified: {err}"
        );
        // One row in each table: what it received, what it sent.
        let rows = text.lines().filter(|l| l.starts_with(pupil)).count();
        assert_eq!(rows, 2, "{pupil}'s rows: {text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("teacher")),
        "no row for the teacher: {text}"
    );
    // The first pupil can only have received from the teacher.
    let first = text.lines().find(|l| l.starts_with("pupil-1")).unwrap();
    assert!(first.contains("teacher"), "{first}");
    assert!(
        text.contains("Every copy was verified byte for byte"),
        "{text}"
    );
    // The demo's folder is removed unless --keep.
    assert!(err.contains("Demo classroom in "), "{err}");
    let folder = err
        .split("Demo classroom in ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap();
    assert!(
        !std::path::Path::new(folder).exists(),
        "{folder} left behind"
    );
}
