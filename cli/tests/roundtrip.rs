//! A lesson round-trips exactly: empty folders are kept, files that cannot
//! be published are skipped with a warning (the rest is shared), and a
//! file that changes while it is read is never published torn. The real
//! `classe` binary, separate homes, loopback only.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    fs,
    os::unix::{
        fs::{FileExt, MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::Path,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use common::*;

/// A file's content in a form short enough for a failure message: small
/// text as it is, anything else as its length and FNV-1a hash.
fn digest(content: &[u8]) -> String {
    if content.len() <= 64 {
        return String::from_utf8_lossy(content).into_owned();
    }
    let hash = content.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{} bytes, fnv {hash:016x}", content.len())
}

type Tree = Vec<(String, Option<String>)>;

/// Every entry under `root`: folders as `("path/", None)`, files as
/// `("path", Some(digest))`, sorted. Unlike `common::tree`, folders count,
/// so an empty folder that vanished is a difference.
fn full_tree(root: &Path) -> Tree {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).expect("meta");
            if meta.is_dir() {
                out.push((format!("{rel}/"), None));
                stack.push(path);
            } else if meta.is_file() {
                out.push((rel, Some(digest(&fs::read(&path).expect("read")))));
            } else {
                out.push((format!("{rel} (special)"), None));
            }
        }
    }
    out.sort();
    out
}

fn dir_entry(rel: &str) -> (String, Option<String>) {
    (format!("{rel}/"), None)
}

fn file_entry(rel: &str, content: &[u8]) -> (String, Option<String>) {
    (rel.to_string(), Some(digest(content)))
}

fn the_root(fetch: &std::process::Output) -> String {
    json_line(fetch)["root"].as_str().unwrap().to_string()
}

#[test]
fn empty_folders_are_kept_by_fetch_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 100_000);
    // A homework folder for the pupils, a nested empty folder inside a
    // folder that holds files, and an empty folder whose only content is
    // another empty folder.
    fs::create_dir_all(lesson.join("à rendre")).unwrap();
    fs::create_dir_all(lesson.join("chapitre 1/exercices/corrigés")).unwrap();
    fs::create_dir_all(lesson.join("vide/encore plus vide")).unwrap();
    // A folder whose only entry is skipped counts as empty.
    fs::create_dir_all(lesson.join("liens")).unwrap();
    std::os::unix::fs::symlink("../README.txt", lesson.join("liens/lien")).unwrap();

    let teacher = User::new(dir.path(), "teacher");
    let pupil = User::new(dir.path(), "pupil");
    let key = teacher.id();
    let sharer = teacher.share(&lesson, &[]);
    let out_dir = dir.path().join("out");
    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &["--json"]);
    assert!(out.status.success(), "fetch failed: {}", stderr(&out));

    let mut expected = full_tree(&lesson);
    expected.retain(|(p, _)| p != "liens/lien (special)");
    assert!(expected.contains(&dir_entry("liens")));
    assert!(expected.contains(&dir_entry("vide/encore plus vide")));
    assert_eq!(full_tree(&out_dir), expected);

    // `classe export` from the pupil's store writes the same tree.
    let exported = dir.path().join("exported");
    let export = pupil.run(&["export", &the_root(&out), exported.to_str().unwrap()]);
    assert!(export.status.success(), "{}", stderr(&export));
    assert_eq!(full_tree(&exported), expected);

    let (status, err) = sharer.stop();
    assert!(status.success(), "share exited with {status}: {err}");
    assert!(err.contains("4 empty folder(s)"), "{err}");
    assert!(staging_leftovers(dir.path()).is_empty());
}

/// Whether this test runs as root (tests here usually do), where a file
/// with mode 000 is still readable.
fn running_as_root(dir: &Path) -> bool {
    let probe = dir.join("probe");
    fs::write(&probe, "").unwrap();
    let uid = fs::metadata(&probe).unwrap().uid();
    fs::remove_file(&probe).unwrap();
    uid == 0
}

/// `nobody`/`nogroup` on Debian-like systems.
const NOBODY: u32 = 65534;

/// `classe share` started as `nobody` when running as root, so that a
/// file with mode 000 really cannot be read. The home is given to
/// `nobody`.
fn share_unprivileged(user: &User, path: &Path, as_nobody: bool) -> (Sharer, String) {
    let prepare = |cmd: &mut std::process::Command| {
        if as_nobody {
            cmd.uid(NOBODY).gid(NOBODY);
        }
    };
    if as_nobody {
        fs::create_dir_all(&user.home).unwrap();
        std::os::unix::fs::chown(&user.home, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let mut id = user.cmd();
    id.arg("id");
    prepare(&mut id);
    let out = run_with_timeout(id, STEP_TIMEOUT);
    assert!(out.status.success(), "id failed: {}", stderr(&out));
    let key = stdout(&out).trim().to_string();

    let mut cmd = user.cmd();
    cmd.arg("share")
        .arg(path)
        .args(["--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare(&mut cmd);
    let mut child = Guard(cmd.spawn().expect("spawn classe share"));
    let ticket = first_line(&mut child.0, STEP_TIMEOUT).unwrap_or_default();
    let ticket = ticket.trim().to_string();
    if !ticket.starts_with("classe") {
        let mut sharer = Sharer { child, ticket };
        sharer.child.kill9();
        let (status, err) = sharer.stop();
        panic!("share printed no ticket ({status}): {err}");
    }
    (Sharer { child, ticket }, key)
}

#[test]
fn files_that_cannot_be_published_are_skipped_and_the_rest_is_shared() {
    let dir = tempfile::tempdir().unwrap();
    let as_nobody = running_as_root(dir.path());
    // `nobody` must be able to reach the lesson (and its own home).
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let lesson = dir.path().join("lesson");
    fs::create_dir_all(lesson.join("privé")).unwrap();
    fs::create_dir_all(lesson.join("cours")).unwrap();
    fs::write(lesson.join("cours/leçon.txt"), "Les volcans\n").unwrap();
    fs::write(lesson.join("Notes.txt"), "majuscule\n").unwrap();
    fs::write(lesson.join("notes.txt"), "minuscule\n").unwrap();
    fs::write(lesson.join("a\nb.txt"), "newline\n").unwrap();
    fs::write(lesson.join("vidéo.bin"), pseudo_random(300_000, 9)).unwrap();
    // Unreadable: mode 000, and the share runs as `nobody` if we are root
    // (root reads anything). The folder holding it then counts as empty.
    let secret = lesson.join("privé/secret.txt");
    fs::write(&secret, "personne\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    if !as_nobody {
        assert!(fs::read(&secret).is_err(), "mode 000 did not stop reading");
    }

    let teacher = User::new(dir.path(), "teacher");
    let pupil = User::new(dir.path(), "pupil");
    let (sharer, key) = share_unprivileged(&teacher, &lesson, as_nobody);
    let out_dir = dir.path().join("out");
    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &["--json"]);
    assert!(out.status.success(), "fetch failed: {}", stderr(&out));

    let expected = vec![
        file_entry("Notes.txt", b"majuscule\n"),
        dir_entry("cours"),
        file_entry("cours/leçon.txt", b"Les volcans\n"),
        dir_entry("privé"),
        file_entry("vidéo.bin", &pseudo_random(300_000, 9)),
    ];
    assert_eq!(full_tree(&out_dir), expected);

    let (status, err) = sharer.stop();
    assert!(status.success(), "share exited with {status}: {err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("warning: skipped"))
        .collect();
    assert_eq!(warnings.len(), 3, "{err}");
    let lesson_text = lesson.display().to_string();
    for (name, why) in [
        ("privé/secret.txt", "cannot be read"),
        ("a\\nb.txt", "name cannot be shared safely"),
        ("notes.txt", "letter case"),
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("{lesson_text}/{name}")) && w.contains(why)),
            "no warning for {name} ({why}): {err}"
        );
    }
    assert!(err.contains("Left out: 3 item(s)"), "{err}");
    // Put the mode back so the temp dir is removable by a non-root user.
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
}

const TORN_CHUNK: usize = 1 << 20;
const TORN_CHUNKS: usize = 24;

#[test]
fn a_file_rewritten_while_shared_is_never_published_torn() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    fs::create_dir_all(&lesson).unwrap();
    fs::write(lesson.join("petit.txt"), "stable\n").unwrap();
    let big = lesson.join("gros.bin");
    fs::write(&big, vec![0u8; TORN_CHUNK * TORN_CHUNKS]).unwrap();

    // Rewrites the file in place, one generation after another, each
    // generation all one byte value: a torn copy holds two values.
    let stop = Arc::new(AtomicBool::new(false));
    let generations = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, generations) = (stop.clone(), generations.clone());
        let file = fs::OpenOptions::new().write(true).open(&big).unwrap();
        std::thread::spawn(move || {
            let mut generation = 0u8;
            while !stop.load(Ordering::Relaxed) {
                generation = generation.wrapping_add(1);
                let chunk = vec![generation; TORN_CHUNK];
                for i in 0..TORN_CHUNKS {
                    file.write_all_at(&chunk, (i * TORN_CHUNK) as u64).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                generations.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let teacher = User::new(dir.path(), "teacher");
    let pupil = User::new(dir.path(), "pupil");
    let key = teacher.id();
    let sharer = teacher.share(&lesson, &[]);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        generations.load(Ordering::Relaxed) >= 2,
        "the file was not rewritten during the share"
    );

    let out_dir = dir.path().join("out");
    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &["--json"]);
    assert!(out.status.success(), "fetch failed: {}", stderr(&out));
    let (status, err) = sharer.stop();
    assert!(status.success(), "share exited with {status}: {err}");

    assert_eq!(fs::read(out_dir.join("petit.txt")).unwrap(), b"stable\n");
    match fs::read(out_dir.join("gros.bin")) {
        Ok(content) => {
            assert_eq!(content.len(), TORN_CHUNK * TORN_CHUNKS);
            let first = content[0];
            let mixed = content.iter().position(|b| *b != first);
            assert_eq!(mixed, None, "published torn: byte {first} then another");
        }
        Err(_) => assert!(
            err.lines().any(|l| l.starts_with("warning: skipped")
                && l.contains("gros.bin")
                && l.contains("changed while being read")),
            "gros.bin is missing without a warning: {err}"
        ),
    }
}

#[test]
fn nothing_left_to_share_is_a_usage_error_that_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    fs::create_dir_all(lesson.join("vide")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", lesson.join("lien")).unwrap();
    fs::write(lesson.join("bad\nname.txt"), "x").unwrap();
    let teacher = User::new(dir.path(), "teacher");
    let out = teacher.run(&["share", lesson.to_str().unwrap(), "--bind", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    let warnings = err
        .lines()
        .filter(|l| l.starts_with("warning: skipped"))
        .count();
    assert_eq!(warnings, 2, "{err}");
    assert!(err.contains("contains no files to share"), "{err}");
    assert!(stdout(&out).is_empty());
}
