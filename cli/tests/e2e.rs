//! End-to-end: the real `classe` binary, separate processes and homes, on
//! loopback.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use classe_bundle::{AuthorSecret, Ticket};
use common::*;

const MB: usize = 1_000_000;

#[test]
fn fetched_tree_equals_shared_tree() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 20 * MB);
    let teacher = User::new(dir.path(), "teacher");
    let pupil = User::new(dir.path(), "pupil");
    let key = teacher.id();
    let sharer = teacher.share(&lesson, &["--title", "Fractions CM2"]);

    let out_dir = dir.path().join("out");
    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &["--json"]);
    assert!(out.status.success(), "fetch failed: {}", stderr(&out));
    assert_eq!(tree(&out_dir), tree(&lesson));

    let summary = json_line(&out);
    let total = summary["total_bytes"].as_u64().unwrap();
    assert_eq!(total, (20 * MB + 18 + "Les fractions ½ ¾\n".len()) as u64);
    assert_eq!(summary["title"], "Fractions CM2");
    assert_eq!(summary["author"], key.as_str());
    assert_eq!(summary["files"].as_array().unwrap().len(), 4);
    assert_eq!(summary["already_had_bytes"], 0);
    let received = summary["received_bytes"].as_u64().unwrap();
    assert!(received >= total, "received {received} < {total}");
    let per_provider: u64 = summary["per_provider"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_provider, received);

    // The pupil's store lists it as complete.
    let ls = pupil.run(&["ls", "--json"]);
    let entry: serde_json::Value =
        serde_json::from_str(stdout(&ls).lines().next().unwrap()).unwrap();
    assert_eq!(entry["complete"], true);
    assert_eq!(entry["root"], summary["root"]);

    let (status, err) = sharer.stop();
    assert!(status.success(), "share exited with {status}: {err}");
}

#[test]
fn untrusted_signer_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, MB);
    let teacher = User::new(dir.path(), "teacher");
    let pupil = User::new(dir.path(), "pupil");
    let key = teacher.id();
    let sharer = teacher.share(&lesson, &[]);

    let out_dir = dir.path().join("out");
    let out = pupil.fetch(&sharer.ticket, None, &out_dir, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("do not trust"), "{err}");
    assert!(err.contains(&format!("classe trust add {key}")), "{err}");
    assert!(!out_dir.exists());
    assert!(stdout(&out).is_empty());
    // No file content was downloaded: the store pins nothing.
    let ls = pupil.run(&["ls", "--json"]);
    assert!(stdout(&ls).trim().is_empty(), "{}", stdout(&ls));

    // Once trusted through the trust store, the same fetch works.
    let add = pupil.run(&["trust", "add", &key, "--name", "Mme Martin"]);
    assert!(add.status.success(), "{}", stderr(&add));
    let list = pupil.run(&["trust", "list"]);
    assert!(stdout(&list).contains(&key));
    let out = pupil.fetch(&sharer.ticket, None, &out_dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&out_dir), tree(&lesson));
    sharer.stop();
}

#[test]
fn bundle_signed_by_another_key_than_trusted_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, MB);
    let impostor = User::new(dir.path(), "impostor");
    let pupil = User::new(dir.path(), "pupil");
    let real_teacher = AuthorSecret::generate().public().to_string();
    impostor.id();
    let sharer = impostor.share(&lesson, &[]);
    let out_dir = dir.path().join("out");

    // The pupil trusts the real teacher only; the ticket is honest about
    // being the impostor's.
    let out = pupil.fetch(&sharer.ticket, Some(&real_teacher), &out_dir, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!out_dir.exists());

    // A ticket edited to name the real teacher, pointing at the impostor's
    // bundle: the manifest's signer does not match.
    let mut forged: Ticket = sharer.ticket.parse().unwrap();
    forged.author = real_teacher.parse().unwrap();
    let out = pupil.fetch(&forged.to_string(), Some(&real_teacher), &out_dir, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not by"), "{}", stderr(&out));
    assert!(!out_dir.exists());
    sharer.stop();
}

#[test]
fn killed_fetch_resumes_and_receives_less() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 20 * MB);
    let teacher = User::new(dir.path(), "teacher");
    let pupil = User::new(dir.path(), "pupil");
    let key = teacher.id();
    // Slow enough that the first fetch is still running when killed.
    let sharer = teacher.share(&lesson, &["--max-upload", "5MB/s"]);
    let out_dir = dir.path().join("out");
    let out_arg = out_dir.to_str().unwrap().to_string();

    let mut cmd = pupil.cmd();
    cmd.args([
        "fetch",
        &sharer.ticket,
        "--trust",
        &key,
        "--no-seed",
        "--json",
    ])
    .args(["--out", &out_arg])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut first = Guard(cmd.spawn().unwrap());
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "first fetch finished before it could be interrupted"
    );
    first.kill9();
    assert!(!out_dir.exists(), "a killed fetch left output behind");

    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&out_dir), tree(&lesson));
    let summary = json_line(&out);
    let total = summary["total_bytes"].as_u64().unwrap();
    let had = summary["already_had_bytes"].as_u64().unwrap();
    let received = summary["received_bytes"].as_u64().unwrap();
    assert!(had > 0, "nothing was kept from the first run: {summary}");
    assert!(
        received < total,
        "second run received {received} of {total}: {summary}"
    );
    // No staging folder is left next to the output.
    let leftovers = staging_leftovers(dir.path());
    assert!(leftovers.is_empty(), "{leftovers:?}");
    sharer.stop();
}

#[test]
fn damaged_ticket_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let pupil = User::new(dir.path(), "pupil");
    for bad in ["hello", "classe!!!", "classeaaaa", ""] {
        let out = pupil.run(&["fetch", bad, "--no-seed"]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("ticket") || err.contains("TICKET"),
            "{bad:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn unreachable_provider_fails_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pupil = User::new(dir.path(), "pupil");
    // A ticket for a node that does not exist, at a loopback port with no
    // listener.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    drop(socket);
    let node = AuthorSecret::generate().public();
    let ticket = Ticket {
        root: [7; 32],
        author: AuthorSecret::generate().public(),
        providers: vec![classe_bundle::ProviderInfo {
            node_id: *node.as_bytes(),
            addrs: vec![addr],
            relay_url: None,
            control_port: None,
        }],
    };
    let start = std::time::Instant::now();
    let out = pupil.run(&[
        "fetch",
        &ticket.to_string(),
        "--no-seed",
        "--connect-timeout",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(stderr(&out).contains("provider"), "{}", stderr(&out));
}

#[test]
fn existing_destination_is_refused_before_downloading() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 1000);
    let teacher = User::new(dir.path(), "teacher");
    let pupil = User::new(dir.path(), "pupil");
    let key = teacher.id();
    let sharer = teacher.share(&lesson, &[]);
    let out_dir = dir.path().join("taken");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("mine.txt"), "do not touch").unwrap();
    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(out_dir.join("mine.txt")).unwrap(),
        "do not touch"
    );
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 1);
    sharer.stop();
}

#[test]
fn store_commands_list_export_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 100_000);
    let teacher = User::new(dir.path(), "teacher");
    let key = teacher.id();
    // Share, stop; the teacher's own store holds the bundle.
    let sharer = teacher.share(&lesson, &["--title", "Géométrie"]);
    let ticket: Ticket = sharer.ticket.parse().unwrap();
    let (status, err) = sharer.stop();
    assert!(status.success(), "share exited with {status}: {err}");
    let root = classe_store::iroh_blobs::Hash::from_bytes(ticket.root).to_hex();

    let ls = teacher.run(&["ls", "--json"]);
    let entry: serde_json::Value = serde_json::from_str(stdout(&ls).trim()).unwrap();
    assert_eq!(entry["root"], root.as_str());
    assert_eq!(entry["title"], "Géométrie");
    assert_eq!(entry["author"], key.as_str());
    assert_eq!(entry["version"], 1);
    assert_eq!(entry["complete"], true);

    // Sharing the unchanged folder again gives the same bundle; a change
    // gives version 2 of the same lesson.
    let again = teacher.share(&lesson, &["--title", "Géométrie"]);
    assert_eq!(again.ticket.parse::<Ticket>().unwrap().root, ticket.root);
    again.stop();
    std::fs::write(lesson.join("README.txt"), "changed\n").unwrap();
    let changed = teacher.share(&lesson, &["--title", "Géométrie"]);
    assert_ne!(changed.ticket.parse::<Ticket>().unwrap().root, ticket.root);
    changed.stop();
    let ls = teacher.run(&["ls", "--json"]);
    let entries: Vec<serde_json::Value> = stdout(&ls)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["lesson_id"], entries[1]["lesson_id"]);
    let mut versions: Vec<u64> = entries
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    versions.sort();
    assert_eq!(versions, [1, 2]);

    // Export version 1 by a prefix of its root.
    let out_dir = dir.path().join("exported");
    let out = teacher.run(&["export", &root[..12], out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&out_dir).len(), 4);
    let readme = std::fs::read_to_string(out_dir.join("README.txt")).unwrap();
    assert_eq!(readme, "Bonjour la classe\n");

    let out = teacher.run(&["rm", &root]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ls = teacher.run(&["ls", "--json"]);
    assert_eq!(stdout(&ls).lines().count(), 1);
    let out = teacher.run(&["rm", &root]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn author_key_moves_between_machines() {
    let dir = tempfile::tempdir().unwrap();
    let laptop = User::new(dir.path(), "laptop");
    let desktop = User::new(dir.path(), "desktop");
    let key = laptop.id();
    assert_eq!(key.len(), 52);
    let file = dir.path().join("my.key");
    let out = laptop.run(&["id", "--export", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Exporting over an existing file is refused.
    let out = laptop.run(&["id", "--export", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6));

    let other = desktop.id();
    assert_ne!(other, key);
    let out = desktop.run(&["id", "--import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "replacing a key needs --force");
    let out = desktop.run(&["id", "--import", file.to_str().unwrap(), "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(desktop.id(), key);
    // The secret never appears in output.
    let secret_file = std::fs::read_to_string(&file).unwrap();
    let secret_line = secret_file.lines().nth(1).unwrap();
    assert!(!stdout(&out).contains(secret_line) && !stderr(&out).contains(secret_line));
}

#[test]
fn full_disk_is_reported_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    let Some(_mount) = Tmpfs::mount(&small, "size=8m") else {
        eprintln!("SKIPPED full_disk_is_reported_and_leaves_nothing: cannot mount a tmpfs here (needs root)");
        return;
    };
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 20 * MB);
    let teacher = User::new(dir.path(), "teacher");
    let key = teacher.id();
    let sharer = teacher.share(&lesson, &[]);

    // The store cannot hold the lesson.
    let pupil = User::new(&small, "pupil");
    let out_dir = dir.path().join("out");
    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("disk space"), "{}", stderr(&out));
    assert!(!out_dir.exists());

    // The store can, but the destination cannot.
    let pupil = User::new(dir.path(), "pupil2");
    let out_dir = small.join("out");
    let out = pupil.fetch(&sharer.ticket, Some(&key), &out_dir, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("disk space"), "{}", stderr(&out));
    assert!(!out_dir.exists());
    let leftovers = staging_leftovers(&small);
    assert!(leftovers.is_empty(), "{leftovers:?}");
    sharer.stop();
}

#[test]
fn tickets_carry_the_discovery_port_unless_discovery_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 10_000);
    let teacher = User::new(dir.path(), "teacher");
    let with = teacher.share(&lesson, &[]);
    let ticket: Ticket = with.ticket.parse().unwrap();
    assert!(ticket.providers[0].control_port.is_some(), "{ticket:?}");
    with.stop();
    let without = teacher.share(&lesson, &["--no-discovery"]);
    let ticket: Ticket = without.ticket.parse().unwrap();
    assert_eq!(ticket.providers[0].control_port, None);
    let (status, err) = without.stop();
    assert!(status.success(), "{err}");
}

#[test]
fn a_skipped_name_with_a_newline_cannot_forge_an_output_line() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    make_lesson(&lesson, 1000);
    // A symbolic link is skipped with a warning naming it; its name holds
    // a newline and what looks like a line of classe's own.
    std::os::unix::fs::symlink("notes.txt", lesson.join("x\nerror: forged line")).unwrap();
    let teacher = User::new(dir.path(), "teacher");
    let sharer = teacher.share(&lesson, &["--no-discovery"]);
    let (status, err) = sharer.stop();
    assert!(status.success(), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: skipped") && l.contains("\\n")),
        "the skip warning does not name the link escaped: {err}"
    );
    assert!(
        !err.lines().any(|l| l.starts_with("error: forged line")),
        "a file name forged a line: {err}"
    );
}
