//! End-to-end: local data that is wrong is never trusted, what was
//! received survives a kill, a full disk is recovered from. The real
//! `classe` binary and the real iroh-blobs store, on loopback.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use classe_bundle::Ticket;
use common::*;

const MB: usize = 1_000_000;

/// The store's data files (`<hash>.data`) of a user.
fn data_files(user: &User) -> Vec<PathBuf> {
    let dir = user.home.join("store/blobs/data");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .collect()
}

/// Bytes actually on disk in the user's data files (they are sparse while
/// partial).
fn held_bytes(user: &User) -> u64 {
    data_files(user)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// The largest data file of a user's store: the big file of the lesson.
fn largest_data_file(user: &User) -> PathBuf {
    data_files(user)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("no data file in the store")
}

fn root_hex(ticket: &str) -> String {
    let ticket: Ticket = ticket.parse().unwrap();
    classe_store::iroh_blobs::Hash::from_bytes(ticket.root)
        .to_hex()
        .to_string()
}

/// A fetch running in the background, killed by its guard.
fn spawn_fetch(pupil: &User, ticket: &str, key: &str, out: &Path) -> Guard {
    let mut cmd = pupil.cmd();
    cmd.args(["fetch", ticket, "--trust", key, "--no-seed", "--json"])
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    Guard(cmd.spawn().unwrap())
}

/// Waits until the pupil's store holds at least `bytes`, or the fetch
/// ended. Returns whether the fetch is still running.
fn wait_for_held(pupil: &User, fetch: &mut Guard, bytes: u64) -> bool {
    let start = Instant::now();
    while start.elapsed() < STEP_TIMEOUT {
        if fetch.0.try_wait().unwrap().is_some() {
            return false;
        }
        if held_bytes(pupil) >= bytes {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the store never held {bytes} bytes");
}

/// A pupil with the lesson complete in the store, fetched from a teacher
/// who is still sharing.
struct Fetched {
    dir: tempfile::TempDir,
    lesson: PathBuf,
    key: String,
    sharer: Sharer,
    pupil: User,
}

fn fetched_lesson(big: usize) -> Fetched {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, big);
    let teacher = User::new(dir.path(), "teacher");
    let pupil = User::new(dir.path(), "pupil");
    let key = teacher.id();
    let sharer = teacher.share(&lesson, &[]);
    let out_dir = dir.path().join("first");
    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &[]);
    assert!(out.status.success(), "fetch failed: {}", stderr(&out));
    assert_eq!(tree(&out_dir), tree(&lesson));
    Fetched {
        dir,
        lesson,
        key,
        sharer,
        pupil,
    }
}

#[test]
fn damaged_store_is_fetched_again_and_equals_the_teachers_lesson() {
    let f = fetched_lesson(8 * MB);
    // A disk error in the middle of the big file.
    flip_bytes(&largest_data_file(&f.pupil), 3 * MB as u64 + 123, 64);

    let out_dir = f.dir.path().join("second");
    let out = f
        .pupil
        .fetch(&f.sharer.ticket, Some(&f.key), &out_dir, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("vidéo.bin"), "{}", stderr(&out));
    assert_eq!(tree(&out_dir), tree(&f.lesson));
    let summary = json_line(&out);
    let received = summary["received_bytes"].as_u64().unwrap();
    // The damaged file came again from the teacher, the others did not.
    assert!(received >= 8 * MB as u64, "{summary}");
    assert!(received < 8 * MB as u64 + MB as u64, "{summary}");
    let verify = f.pupil.run(&["verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    f.sharer.stop();
}

#[test]
fn verify_and_export_refuse_a_damaged_store() {
    let f = fetched_lesson(2 * MB);
    let root = root_hex(&f.sharer.ticket);
    f.sharer.stop();

    let good = f.pupil.run(&["verify"]);
    assert!(good.status.success(), "{}", stderr(&good));
    assert!(stdout(&good).contains("OK"), "{}", stdout(&good));
    let good = f.pupil.run(&["verify", &root[..10], "--json"]);
    assert!(good.status.success(), "{}", stderr(&good));
    assert_eq!(json_line(&good)["status"], "ok");

    flip_bytes(&largest_data_file(&f.pupil), 100_000, 1);

    let bad = f.pupil.run(&["verify"]);
    assert_eq!(bad.status.code(), Some(4), "{}", stderr(&bad));
    assert!(stdout(&bad).contains("vidéo.bin"), "{}", stdout(&bad));
    assert!(stdout(&bad).contains("DAMAGED"), "{}", stdout(&bad));
    let bad = f.pupil.run(&["verify", &root, "--json"]);
    assert_eq!(bad.status.code(), Some(4), "{}", stderr(&bad));
    let report = json_line(&bad);
    assert_eq!(report["status"], "damaged");
    let files = report["files"].as_array().unwrap();
    let video = files.iter().find(|f| f["path"] == "vidéo.bin").unwrap();
    assert_eq!(video["status"], "damaged");
    // One chunk group (16 KiB) around byte 100 000.
    let ranges = video["damaged_ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 1, "{report}");
    let (start, end) = (
        ranges[0][0].as_u64().unwrap(),
        ranges[0][1].as_u64().unwrap(),
    );
    assert!(
        start <= 100_000 && 100_000 < end && end - start <= 16384,
        "{report}"
    );
    assert!(files
        .iter()
        .filter(|f| f["path"] != "vidéo.bin")
        .all(|f| f["status"] == "ok"));

    let dest = f.dir.path().join("exported");
    let out = f.pupil.run(&["export", &root, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("vidéo.bin"), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert!(!dest.exists());
    assert!(staging_leftovers(f.dir.path()).is_empty());
}

#[test]
fn a_fetch_killed_early_keeps_what_it_received() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 40 * MB);
    let teacher = User::new(dir.path(), "teacher");
    let pupil = User::new(dir.path(), "pupil");
    let key = teacher.id();
    let sharer = teacher.share(&lesson, &["--max-upload", "10MB/s"]);
    let out_dir = dir.path().join("out");

    let mut first = spawn_fetch(&pupil, &sharer.ticket, &key, &out_dir);
    assert!(
        wait_for_held(&pupil, &mut first, 3 * MB as u64),
        "the first fetch ended before it could be killed"
    );
    first.kill9();
    let held = held_bytes(&pupil);
    assert!(!out_dir.exists());

    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&out_dir), tree(&lesson));
    let summary = json_line(&out);
    let had = summary["already_had_bytes"].as_u64().unwrap();
    // Everything on disk was kept, less at most the chunk groups being
    // written when the kill came (the two small files are not in data
    // files: they live in the store's database).
    assert!(
        had + 256 * 1024 >= held && had <= held + 1024,
        "held {held} bytes at the kill, the next run kept {had}: {summary}"
    );
    let received = summary["received_bytes"].as_u64().unwrap();
    let total = summary["total_bytes"].as_u64().unwrap();
    assert!(received + had <= total + MB as u64, "{summary}");
    sharer.stop();
}

/// Fills the file system of `path` with a file there, until it is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0x55u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
}

#[test]
fn a_fetch_resumes_after_the_disk_was_full_and_space_freed() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    let Some(mount) = Tmpfs::mount(&small, "size=48m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 30 * MB);
    let teacher = User::new(dir.path(), "teacher");
    let key = teacher.id();
    let sharer = teacher.share(&lesson, &["--max-upload", "10MB/s"]);
    let pupil = User::new(&small, "pupil");
    let out_dir = dir.path().join("out");

    // The disk fills while the fetch runs.
    let mut first = spawn_fetch(&pupil, &sharer.ticket, &key, &out_dir);
    assert!(wait_for_held(&pupil, &mut first, 8 * MB as u64));
    let filler = small.join("filler");
    fill(&filler);
    let status = first.wait_timeout(STEP_TIMEOUT).expect("fetch hung");
    let mut err = String::new();
    std::io::Read::read_to_string(first.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(6), "{err}");
    assert!(
        err.contains("disk full") || err.contains("disk space"),
        "{err}"
    );
    assert!(!out_dir.exists());

    // Free less than the lesson, but more than what is missing.
    let total = 30 * MB as u64 + 36;
    let held = held_bytes(&pupil);
    let missing = total.saturating_sub(held);
    let want_free = missing + missing / 128 + 3 * MB as u64;
    assert!(want_free < total, "held only {held}");
    let free = mount.free();
    let len = std::fs::metadata(&filler).unwrap().len();
    let new_len = len.saturating_sub(want_free.saturating_sub(free));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(new_len)
        .unwrap();
    let free = mount.free();
    assert!(
        free < total && free >= missing,
        "free {free}, missing {missing}"
    );

    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &["--json"]);
    assert!(
        out.status.success(),
        "free {free}, missing {missing}: {}",
        stderr(&out)
    );
    assert_eq!(tree(&out_dir), tree(&lesson));
    sharer.stop();
}

#[test]
fn no_inode_left_in_the_destination_names_the_path_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("few-inodes");
    // The mount's root and the staging folder: the first file of the
    // lesson (README.txt, written by iroh-blobs' export) cannot be created.
    let Some(_mount) = Tmpfs::mount(&small, "size=64m,nr_inodes=2") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 100_000);
    let teacher = User::new(dir.path(), "teacher");
    let pupil = User::new(dir.path(), "pupil");
    let key = teacher.id();
    let sharer = teacher.share(&lesson, &[]);
    let out_dir = small.join("out");
    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(small.to_str().unwrap()), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("Error::Io"), "{err}");
    assert!(!out_dir.exists());
    assert!(staging_leftovers(&small).is_empty());
    sharer.stop();
}

#[test]
fn a_teacher_whose_store_is_damaged_says_so_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 2 * MB);
    let teacher = User::new(dir.path(), "teacher");
    let key = teacher.id();
    let sharer = teacher.share(&lesson, &[]);
    sharer.stop();
    flip_bytes(&largest_data_file(&teacher), 500_000, 8);

    // The teacher shares another lesson: the damaged copy of the first
    // one in the store is found and named in the log. (Sharing the same
    // folder again would repair it: the import rewrites the data file.)
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("devoir.txt"), "Exercice 1\n").unwrap();
    let sharer = teacher.share(&other, &[]);
    let pupil = User::new(dir.path(), "pupil");
    let out_dir = dir.path().join("out");
    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, log) = sharer.stop();
    assert!(log.contains("WARN"), "{log}");
    assert!(
        log.contains("vidéo.bin") && log.contains("damaged"),
        "{log}"
    );
}
