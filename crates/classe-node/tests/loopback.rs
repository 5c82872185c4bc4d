//! In-process nodes on loopback: real iroh endpoints, real file stores.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::Duration};

use anyhow::Result;
use classe_bundle::{AuthorSecret, SignedManifest};
use classe_node::{FetchError, FetchRequest, Node, NodeConfig, TrustDecision};
use classe_store::{iroh_blobs::Hash, ImportOptions, Store};
use tokio::sync::mpsc;

fn config() -> NodeConfig {
    NodeConfig {
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        ..NodeConfig::default()
    }
}

async fn node(dir: &Path, name: &str) -> Result<Node> {
    let store = Store::open(&dir.join(name)).await?;
    let mut key = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
    Ok(Node::spawn(store, &key, config()).await?)
}

fn lesson(dir: &Path) -> std::path::PathBuf {
    let lesson = dir.join("lesson");
    std::fs::create_dir_all(lesson.join("a/b")).unwrap();
    for i in 0..6u8 {
        let data: Vec<u8> = (0..300_000u32)
            .map(|j| (j as u8) ^ i.wrapping_mul(31))
            .collect();
        std::fs::write(lesson.join(format!("a/b/part{i}.bin")), data).unwrap();
    }
    std::fs::write(lesson.join("notes.txt"), "hello").unwrap();
    lesson
}

/// A teacher node that has imported the sample lesson.
async fn teacher(dir: &Path, author: &AuthorSecret) -> Result<(Node, classe_store::Imported)> {
    let teacher = node(dir, "teacher").await?;
    let imported = teacher
        .store()
        .import(&lesson(dir), &ImportOptions::default(), author, |_| {})
        .await?;
    Ok((teacher, imported))
}

async fn trusted(_: SignedManifest) -> TrustDecision {
    TrustDecision::Trusted
}

fn events() -> mpsc::Sender<classe_node::FetchEvent> {
    // Nobody listens: fetch uses try_send and must not block on it.
    mpsc::channel(1).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_address_is_the_only_socket() -> Result<()> {
    // `--bind 127.0.0.1:0` once also opened [::]:port on every IPv6
    // interface.
    let dir = tempfile::tempdir()?;
    let n = node(dir.path(), "n").await?;
    let bound = n.bound_sockets();
    assert!(!bound.is_empty());
    assert!(
        bound.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()),
        "sockets beyond the bind address: {bound:?}"
    );
    n.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teacher_and_two_pupils_share_on_loopback() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let author = AuthorSecret::generate();
    let (teacher, imported) = teacher(dir.path(), &author).await?;
    let ticket = teacher.ticket(imported.root, author.public());
    let total = imported.manifest.manifest().total_size();

    // Pupil 1 fetches from the teacher alone.
    let pupil1 = node(dir.path(), "pupil1").await?;
    let request = FetchRequest {
        root: imported.root,
        expected_author: Some(author.public()),
        providers: ticket.providers.clone(),
    };
    let report = pupil1.fetch(request.clone(), trusted, events()).await?;
    assert_eq!(report.total_bytes, total);
    assert!(report.received_bytes >= total);
    let teacher_hex = data_encoding::HEXLOWER.encode(&teacher.id());
    assert_eq!(
        report.per_provider.keys().collect::<Vec<_>>(),
        [&teacher_hex]
    );

    // Pupil 2 is given both: the files are spread over the two.
    let pupil2 = node(dir.path(), "pupil2").await?;
    let mut both = request.clone();
    both.providers.push(pupil1.provider_info());
    let report = pupil2.fetch(both, trusted, events()).await?;
    assert_eq!(report.per_provider.len(), 2, "{:?}", report.per_provider);
    assert!(report.per_provider.values().all(|b| *b > 0));
    // The provider's own accounting covers what the fetcher received from
    // it (it may be more: endgame duplicates cancelled in flight).
    let pupil2_hex = data_encoding::HEXLOWER.encode(&pupil2.id());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent_by_pupil1 = pupil1.traffic().peers.get(&pupil2_hex).map(|p| p.sent);
    let pupil1_hex = data_encoding::HEXLOWER.encode(&pupil1.id());
    let received_from_pupil1 = report.per_provider[&pupil1_hex];
    assert!(
        sent_by_pupil1.is_some_and(|s| s >= received_from_pupil1),
        "{sent_by_pupil1:?} < {received_from_pupil1}"
    );

    // With the teacher gone, a third pupil whose ticket names the teacher
    // and pupil 1 gets everything from pupils: pupil 1, and pupil 2, whom
    // it learns of from pupil 1 (peer exchange).
    teacher.shutdown().await;
    let pupil3 = node(dir.path(), "pupil3").await?;
    let mut from_pupil = request;
    from_pupil.providers.push(pupil1.provider_info());
    let report = pupil3.fetch(from_pupil, trusted, events()).await?;
    assert!(!report.per_provider.contains_key(&teacher_hex));
    assert!(report.per_provider.contains_key(&pupil1_hex));
    assert!(report
        .per_provider
        .keys()
        .all(|k| *k == pupil1_hex || *k == pupil2_hex));
    let out = dir.path().join("out3");
    pupil3.store().export(imported.root, &out).await?;
    assert_eq!(
        std::fs::read(out.join("notes.txt"))?,
        b"hello",
        "exported content differs"
    );
    for n in [pupil1, pupil2, pupil3] {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_trust_downloads_no_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let author = AuthorSecret::generate();
    let (teacher, imported) = teacher(dir.path(), &author).await?;
    let pupil = node(dir.path(), "pupil").await?;
    let request = FetchRequest {
        root: imported.root,
        expected_author: None,
        providers: vec![teacher.provider_info()],
    };
    let err = pupil
        .fetch(request, |_| async { TrustDecision::Refused }, events())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Untrusted(k) if k == author.public()));
    // Only the hash sequence and the manifest crossed the network.
    let received = pupil.traffic().received;
    let manifest_len = imported.manifest.to_bytes().len() as u64;
    let seq_len = 32 * (imported.manifest.manifest().files.len() as u64 + 1);
    assert_eq!(received, manifest_len + seq_len);
    for f in &imported.manifest.manifest().files {
        assert!(
            !pupil
                .store()
                .blob_complete(Hash::from_bytes(f.hash), f.size)
                .await?
        );
    }
    assert!(pupil.store().list().await?.is_empty());
    teacher.shutdown().await;
    pupil.shutdown().await;
    Ok(())
}

/// The manifest fields in wire order, to forge what `SignedManifest::sign`
/// refuses to produce.
#[derive(serde::Serialize)]
struct RawManifest {
    lesson_id: [u8; 16],
    version: u64,
    title: String,
    author: [u8; 32],
    created_unix_secs: u64,
    files: Vec<(String, u64, [u8; 32])>,
}

#[derive(serde::Serialize)]
enum RawWire {
    V1 {
        manifest: RawManifest,
        signature: [[u8; 32]; 2],
    },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_signed_manifest_with_unsafe_path_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let author = AuthorSecret::generate();
    let teacher = node(dir.path(), "teacher").await?;
    let blobs = teacher.store().blobs();
    let payload = b"#!/bin/sh\necho pwned\n".to_vec();
    let file_hash = blobs.add_bytes(payload.clone()).await?.hash;
    let manifest = RawManifest {
        lesson_id: [1; 16],
        version: 1,
        title: "innocent".into(),
        author: *author.public().as_bytes(),
        created_unix_secs: 0,
        files: vec![(
            "../../.bashrc".into(),
            payload.len() as u64,
            *file_hash.as_bytes(),
        )],
    };
    let mut message = classe_bundle::manifest::SIGNATURE_DOMAIN.to_vec();
    message.extend(postcard::to_stdvec(&manifest)?);
    let sig = author.sign(&message);
    let mut halves = [[0u8; 32]; 2];
    halves[0].copy_from_slice(&sig[..32]);
    halves[1].copy_from_slice(&sig[32..]);
    let bytes = postcard::to_stdvec(&RawWire::V1 {
        manifest,
        signature: halves,
    })?;
    let manifest_hash = blobs.add_bytes(bytes).await?.hash;
    let mut seq = manifest_hash.as_bytes().to_vec();
    seq.extend_from_slice(file_hash.as_bytes());
    let root = blobs
        .add_bytes_with_opts(classe_store::iroh_blobs::api::blobs::AddBytesOptions {
            data: seq.into(),
            format: classe_store::iroh_blobs::BlobFormat::HashSeq,
        })
        .await?
        .hash;
    teacher.store().pin(root).await?;

    let pupil = node(dir.path(), "pupil").await?;
    let request = FetchRequest {
        root,
        expected_author: Some(author.public()),
        providers: vec![teacher.provider_info()],
    };
    let err = pupil.fetch(request, trusted, events()).await.unwrap_err();
    assert!(matches!(err, FetchError::UnsafeManifest(_)), "{err:?}");
    assert!(
        !pupil
            .store()
            .blob_complete(file_hash, payload.len() as u64)
            .await?
    );
    teacher.shutdown().await;
    pupil.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_sending_corrupt_bytes_is_dropped_and_fetch_completes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let author = AuthorSecret::generate();
    let (teacher, imported) = teacher(dir.path(), &author).await?;
    let honest = node(dir.path(), "honest").await?;
    let request = FetchRequest {
        root: imported.root,
        expected_author: Some(author.public()),
        providers: vec![teacher.provider_info()],
    };
    honest.fetch(request.clone(), trusted, events()).await?;

    // Flip one byte of every large file in the teacher's store, on disk:
    // the teacher now serves data that does not match its hashes.
    let data_dir = dir.path().join("teacher/blobs/data");
    let mut flipped = 0;
    for entry in std::fs::read_dir(&data_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "data") {
            let mut bytes = std::fs::read(&path)?;
            if bytes.len() > 100_000 {
                // One bad byte in each 256 KiB piece.
                bytes[100_000] ^= 0xff;
                bytes[280_000] ^= 0xff;
                std::fs::write(&path, bytes)?;
                flipped += 1;
            }
        }
    }
    assert_eq!(flipped, 6, "expected to corrupt the six large files");

    let pupil = node(dir.path(), "pupil").await?;
    let mut both = request;
    // The corrupt provider first, so it is tried.
    both.providers = vec![teacher.provider_info(), honest.provider_info()];
    let (tx, mut rx) = mpsc::channel(1024);
    let report = pupil.fetch(both, trusted, tx).await?;
    let mut dropped = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let classe_node::FetchEvent::ProviderDropped { peer, .. } = ev {
            dropped.push(peer);
        }
    }
    let teacher_hex = data_encoding::HEXLOWER.encode(&teacher.id());
    assert_eq!(
        dropped,
        [teacher_hex],
        "the corrupt provider was not dropped"
    );
    let out = dir.path().join("out");
    pupil.store().export(imported.root, &out).await?;
    for i in 0..6u8 {
        let want: Vec<u8> = (0..300_000u32)
            .map(|j| (j as u8) ^ i.wrapping_mul(31))
            .collect();
        assert_eq!(std::fs::read(out.join(format!("a/b/part{i}.bin")))?, want);
    }
    assert!(report.received_bytes >= report.total_bytes);
    for n in [teacher, honest, pupil] {
        n.shutdown().await;
    }
    Ok(())
}
