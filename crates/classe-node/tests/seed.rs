//! The seed service in process, on loopback: real nodes, real stores, real
//! control planes. A teacher announces; the seed mirrors, writes the
//! folder, keeps the announcement, and serves the lesson to a pupil with
//! the teacher gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::Duration};

use anyhow::Result;
use classe_bundle::{AuthorSecret, SignedManifest};
use classe_node::{
    AnnouncementLog, ControlConfig, FetchRequest, Node, NodeConfig, Seed, SeedConfig, SeedEvent,
    TrustDecision,
};
use classe_store::{iroh_blobs::Hash, ImportOptions, Store};
use classe_testkit::tree::tree;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

fn config(bootstrap: Vec<classe_control::Multiaddr>) -> NodeConfig {
    NodeConfig {
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        connect_timeout: Duration::from_secs(5),
        control: Some(ControlConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            bootstrap,
            mdns: false,
            catch_up_every: Duration::from_secs(2),
            ..ControlConfig::default()
        }),
        ..NodeConfig::default()
    }
}

async fn node(dir: &Path, name: &str, config: NodeConfig) -> Result<Node> {
    let store = Store::open(&dir.join(name)).await?;
    let key = AuthorSecret::generate().to_bytes();
    Ok(Node::spawn(store, &key, config).await?)
}

fn lesson(dir: &Path, tag: &str) -> std::path::PathBuf {
    let lesson = dir.join(format!("lesson-{tag}"));
    std::fs::create_dir_all(lesson.join("ch1")).unwrap();
    for i in 0..3u8 {
        let data: Vec<u8> = (0..200_000u32)
            .map(|j| (j as u8) ^ i.wrapping_mul(29) ^ tag.len() as u8)
            .collect();
        std::fs::write(lesson.join(format!("ch1/part{i}.bin")), data).unwrap();
    }
    std::fs::write(lesson.join("notes.txt"), format!("version {tag}")).unwrap();
    lesson
}

/// Waits for the next event that is not `Ignored`.
async fn next(events: &mut mpsc::Receiver<SeedEvent>) -> SeedEvent {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(SeedEvent::Ignored { .. })) => continue,
            Ok(Some(ev)) => return ev,
            Ok(None) => panic!("the seed service stopped"),
            Err(_) => panic!("no seed event in {WAIT:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_mirrors_an_announced_lesson_and_serves_it_alone() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let author = AuthorSecret::generate();
    let out = dir.path().join("out");
    let log = AnnouncementLog::new(dir.path().join("announcements"));

    // The seed follows the teacher's key and is everybody's bootstrap.
    let mut seed_config = config(Vec::new());
    if let Some(c) = &mut seed_config.control {
        c.follow = vec![author.public()];
    }
    let seed_node = node(dir.path(), "seed", seed_config).await?;
    let bootstrap = seed_node.control().unwrap().listen_addrs().await;
    let seed = Seed::start(
        &seed_node,
        SeedConfig {
            follow: vec![author.public()],
            out: Some(out.clone()),
            log: Some(log.clone()),
            retry_after: Duration::from_millis(500),
            ..SeedConfig::default()
        },
    )
    .await?;
    assert_eq!(seed.held(), 0);
    let (tx, mut events) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let service = tokio::spawn(seed.run(tx, stop.clone()));

    // The teacher shares and announces version 1.
    let teacher = node(dir.path(), "teacher", config(bootstrap.clone())).await?;
    teacher.discard_control_events();
    let imported = teacher
        .store()
        .import(
            &lesson(dir.path(), "1"),
            &ImportOptions::default(),
            &author,
            |_| {},
        )
        .await?;
    let manifest = imported.manifest.manifest();
    teacher.serve_bundle(imported.root, manifest);
    let teacher_log = AnnouncementLog::new(dir.path().join("teacher-announcements"));
    assert!(
        teacher
            .announce(&author, imported.root, manifest, &teacher_log)
            .await?
    );
    assert_eq!(
        teacher_log.load().len(),
        1,
        "the teacher keeps its announcement"
    );

    let SeedEvent::Mirrored(m) = next(&mut events).await else {
        panic!("the first event is not a mirror");
    };
    assert_eq!(Hash::from_bytes(m.announcement.root), imported.root);
    assert_eq!(m.total_bytes, manifest.total_size());
    let written = m.out.expect("written to --out");
    assert_eq!(written, out.join(&manifest.title));
    assert_eq!(tree(&written), tree(&lesson(dir.path(), "1")));
    assert!(
        log.load()
            .iter()
            .any(|a| Hash::from_bytes(a.announcement().root) == imported.root),
        "the seed keeps the announcement for its next start"
    );
    // Nothing left beside the folder from the atomic write.
    let names: Vec<_> = std::fs::read_dir(&out)?
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // The teacher leaves; a pupil gets the lesson from the seed alone.
    teacher.shutdown().await;
    let pupil = node(dir.path(), "pupil", config(bootstrap)).await?;
    pupil.discard_control_events();
    let request = FetchRequest {
        root: imported.root,
        expected_author: Some(author.public()),
        providers: vec![seed_node.provider_info()],
    };
    let trusted = |_: SignedManifest| async { TrustDecision::Trusted };
    let report = pupil
        .fetch(request, trusted, classe_node::no_events())
        .await?;
    assert_eq!(report.total_bytes, manifest.total_size());
    assert!(report.received_bytes > 0);
    pupil.shutdown().await;

    // Cancelling stops the service; a clone of the node shuts it down for
    // all, and a second shutdown is harmless.
    stop.cancel();
    tokio::time::timeout(WAIT, service).await??;
    let clone = seed_node.clone();
    clone.shutdown().await;
    seed_node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_fails_is_reported_and_tried_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let author = AuthorSecret::generate();
    let mut seed_config = config(Vec::new());
    if let Some(c) = &mut seed_config.control {
        c.follow = vec![author.public()];
    }
    seed_config.connect_timeout = Duration::from_secs(1);
    let seed_node = node(dir.path(), "seed", seed_config).await?;
    let bootstrap = seed_node.control().unwrap().listen_addrs().await;
    let seed = Seed::start(
        &seed_node,
        SeedConfig {
            follow: vec![author.public()],
            retry_after: Duration::from_millis(200),
            attempts: 2,
            ..SeedConfig::default()
        },
    )
    .await?;
    let (tx, mut events) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let service = tokio::spawn(seed.run(tx, stop.clone()));

    // A node announces a lesson it does not hold (the teacher's laptop
    // went to sleep with the lesson on it): the seed finds nobody to
    // fetch it from.
    let offline = Store::open(&dir.path().join("offline")).await?;
    let imported = offline
        .import(
            &lesson(dir.path(), "x"),
            &ImportOptions::default(),
            &author,
            |_| {},
        )
        .await?;
    offline.shutdown().await;
    let manifest = imported.manifest.manifest().clone();
    let announcer = node(dir.path(), "announcer", config(bootstrap)).await?;
    announcer.discard_control_events();
    let log = AnnouncementLog::new(dir.path().join("announcer-announcements"));
    announcer
        .announce(&author, imported.root, &manifest, &log)
        .await?;

    let mut attempts = Vec::new();
    for _ in 0..2 {
        match next(&mut events).await {
            SeedEvent::MirrorFailed {
                announcement,
                attempt,
                error,
            } => {
                assert_eq!(Hash::from_bytes(announcement.root), imported.root);
                assert!(
                    matches!(error, classe_node::MirrorError::Fetch(_)),
                    "{error}"
                );
                attempts.push(attempt);
            }
            SeedEvent::Mirrored(_) => panic!("mirrored a lesson nobody holds"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(attempts, vec![1, 2], "one retry, then it stops");
    // No third attempt.
    assert!(tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .is_err());
    stop.cancel();
    tokio::time::timeout(WAIT, service).await??;
    announcer.shutdown().await;
    seed_node.shutdown().await;
    Ok(())
}
