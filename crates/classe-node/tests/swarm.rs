//! The swarm in process: real endpoints and stores on loopback, pupils
//! feeding each other.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::Duration};

use anyhow::Result;
use classe_bundle::{AuthorSecret, SignedManifest, Ticket};
use classe_node::{FetchRequest, Node, NodeConfig, TrustDecision};
use classe_store::{ImportOptions, Store};
use tokio::sync::mpsc;

const MB: u64 = 1_000_000;

fn config(max_upload: Option<u64>) -> NodeConfig {
    NodeConfig {
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        max_upload,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(20),
        ..NodeConfig::default()
    }
}

async fn node(dir: &Path, name: &str, max_upload: Option<u64>) -> Result<Node> {
    let store = Store::open(&dir.join(name)).await?;
    let mut key = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
    Ok(Node::spawn(store, &key, config(max_upload)).await?)
}

/// A one-file lesson of `size` pseudo-random bytes (a video, say).
fn lesson(dir: &Path, size: u64) -> std::path::PathBuf {
    let lesson = dir.join("lesson");
    std::fs::create_dir_all(&lesson).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(lesson.join("video.bin"), data).unwrap();
    lesson
}

async fn trusted(_: SignedManifest) -> TrustDecision {
    TrustDecision::Trusted
}

async fn share(dir: &Path, size: u64, max_upload: u64) -> Result<(Node, Ticket, u64)> {
    let author = AuthorSecret::generate();
    let teacher = node(dir, "teacher", Some(max_upload)).await?;
    let imported = teacher
        .store()
        .import(
            &lesson(dir, size),
            &ImportOptions::default(),
            &author,
            |_| {},
        )
        .await?;
    teacher.serve_bundle(imported.root, imported.manifest.manifest());
    let ticket = teacher.ticket(imported.root, author.public());
    Ok((teacher, ticket, imported.manifest.manifest().total_size()))
}

fn request(ticket: &Ticket) -> FetchRequest {
    FetchRequest {
        root: classe_store::iroh_blobs::Hash::from_bytes(ticket.root),
        expected_author: Some(ticket.author),
        providers: ticket.providers.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_pupils_feed_each_other_past_a_slow_teacher() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let size = 4 * MB;
    // 2 MB/s: eight copies from the teacher alone would take 16 s.
    let (teacher, ticket, total) = share(dir.path(), size, 2 * MB).await?;
    let mut pupils = Vec::new();
    for i in 0..8 {
        pupils.push(node(dir.path(), &format!("pupil{i}"), None).await?);
    }
    let mut fetches = tokio::task::JoinSet::new();
    for (i, pupil) in pupils.into_iter().enumerate() {
        let req = request(&ticket);
        let out = dir.path().join(format!("out{i}"));
        fetches.spawn(async move {
            let report = pupil
                .fetch(req, trusted, mpsc::channel(1).0)
                .await
                .map_err(|e| anyhow::anyhow!("pupil {i}: {e}"))?;
            pupil.store().export(report.root, &out).await?;
            // Keep serving until every pupil is done: they are each
            // other's providers.
            Ok::<_, anyhow::Error>((pupil, report))
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(120), fetches.join_next())
        .await
        .expect("the class did not finish within 120 s")
    {
        done.push(joined??);
    }
    assert_eq!(done.len(), 8);
    for i in 0..8 {
        let got = std::fs::read(dir.path().join(format!("out{i}/video.bin")))?;
        assert_eq!(got.len() as u64, size, "pupil {i}");
    }
    let teacher_sent = teacher.traffic().sent;
    let from_pupils: u64 = done
        .iter()
        .map(|(_, r)| {
            r.per_provider
                .iter()
                .filter(|(k, _)| **k != data_encoding::HEXLOWER.encode(&teacher.id()))
                .map(|(_, v)| *v)
                .sum::<u64>()
        })
        .sum();
    println!(
        "teacher sent {:.2} copies; pupils received {:.2} copies from each other",
        teacher_sent as f64 / total as f64,
        from_pupils as f64 / total as f64
    );
    assert!(
        teacher_sent < 3 * total,
        "teacher sent {teacher_sent} bytes, {:.2} copies",
        teacher_sent as f64 / total as f64
    );
    for (pupil, _) in done {
        pupil.shutdown().await;
    }
    teacher.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_most_bytes_from_pupils() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let size = 3 * MB;
    let (teacher, ticket, total) = share(dir.path(), size, 3 * MB).await?;
    // Three pupils fetch first and stay online.
    let mut early = Vec::new();
    for i in 0..3 {
        let pupil = node(dir.path(), &format!("early{i}"), None).await?;
        pupil
            .fetch(request(&ticket), trusted, mpsc::channel(1).0)
            .await?;
        early.push(pupil);
    }
    // The late pupil has only the teacher's ticket.
    let late = node(dir.path(), "late", None).await?;
    let report = late
        .fetch(request(&ticket), trusted, mpsc::channel(1).0)
        .await?;
    let teacher_hex = data_encoding::HEXLOWER.encode(&teacher.id());
    let from_teacher = report.per_provider.get(&teacher_hex).copied().unwrap_or(0);
    let from_pupils = report.received_bytes - from_teacher;
    println!(
        "late joiner: {from_pupils} bytes from pupils, {from_teacher} from the teacher ({:?})",
        report.per_provider
    );
    assert!(report.per_provider.len() >= 2, "{:?}", report.per_provider);
    assert!(
        from_pupils > total / 2,
        "only {from_pupils} of {total} bytes came from pupils"
    );
    late.shutdown().await;
    for p in early {
        p.shutdown().await;
    }
    teacher.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_leaving_mid_download_does_not_abort_the_fetch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let size = 2 * MB;
    // Slow uplinks, so the late pupil is mid-download when the early one
    // leaves.
    let (teacher, ticket, _) = share(dir.path(), size, 400_000).await?;
    let early = node(dir.path(), "early", Some(400_000)).await?;
    early
        .fetch(request(&ticket), trusted, mpsc::channel(1).0)
        .await?;
    let late = node(dir.path(), "late", None).await?;
    let mut req = request(&ticket);
    req.providers.push(early.provider_info());
    let fetch = tokio::spawn(async move {
        let r = late.fetch(req, trusted, mpsc::channel(1).0).await;
        (late, r)
    });
    // The early pupil leaves while the late one is fetching from it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    early.shutdown().await;
    let (late, report) = tokio::time::timeout(Duration::from_secs(60), fetch).await??;
    let report = report.map_err(|e| anyhow::anyhow!("fetch failed after a peer left: {e}"))?;
    assert!(report.received_bytes >= size);
    late.shutdown().await;
    teacher.shutdown().await;
    Ok(())
}
