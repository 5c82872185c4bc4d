//! Empty folders in a store: kept by import and export, and a signed
//! manifest whose folder list climbs out of the output is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;

use classe_bundle::{AuthorSecret, FileEntry, LessonId, Manifest, ManifestError};
use classe_store::{iroh_blobs::Hash, ExportError, ImportOptions, ReadError, Store};

#[tokio::test]
async fn import_and_export_keep_empty_folders() {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    fs::create_dir_all(lesson.join("à rendre")).unwrap();
    fs::create_dir_all(lesson.join("a/b/c")).unwrap();
    fs::create_dir_all(lesson.join("cours/vide")).unwrap();
    fs::write(lesson.join("cours/leçon.txt"), "bonjour\n").unwrap();
    let store = Store::open(&dir.path().join("store")).await.unwrap();
    let secret = AuthorSecret::generate();
    let imported = store
        .import(&lesson, &ImportOptions::default(), &secret, |_| {})
        .await
        .unwrap();
    // Only the deepest empty folders are listed; `a/b/c` implies `a/b`.
    assert_eq!(
        imported.manifest.manifest().dirs,
        ["a/b/c", "cours/vide", "à rendre"]
    );
    let out = dir.path().join("out");
    store.export(imported.root, &out).await.unwrap();
    for d in ["à rendre", "a/b/c", "cours/vide"] {
        let path = out.join(d);
        assert!(path.is_dir(), "{d} missing");
        assert_eq!(fs::read_dir(&path).unwrap().count(), 0, "{d} not empty");
    }
    assert_eq!(fs::read(out.join("cours/leçon.txt")).unwrap(), b"bonjour\n");

    // Sharing the same folder again, unchanged, reuses the bundle; a new
    // empty folder makes a new version.
    let again = store
        .import(&lesson, &ImportOptions::default(), &secret, |_| {})
        .await
        .unwrap();
    assert!(again.unchanged);
    fs::create_dir(lesson.join("nouveau")).unwrap();
    let next = store
        .import(&lesson, &ImportOptions::default(), &secret, |_| {})
        .await
        .unwrap();
    assert!(!next.unchanged);
    assert_eq!(next.manifest.manifest().version, 2);
    store.shutdown().await;
}

/// Puts a bundle whose manifest is `manifest` signed as format 2 without
/// any validation, as a malicious author could, and pins it.
async fn forge_bundle(store: &Store, manifest: &Manifest, secret: &AuthorSecret) -> Hash {
    let signature = secret.sign(&manifest.signing_message());
    let mut bytes = vec![1u8]; // Wire::V2
                               // Format 2 is `Manifest` without its last field (credentials: None,
                               // one 00 byte at the end).
    let mut body = postcard::to_stdvec(manifest).unwrap();
    assert_eq!(body.pop(), Some(0));
    bytes.extend(body);
    bytes.extend_from_slice(&signature);
    common::pin_header(store, bytes, &manifest.files).await
}

#[tokio::test]
async fn an_unsafe_empty_folder_is_refused_on_export() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).await.unwrap();
    let secret = AuthorSecret::generate();
    let content = b"ok\n".to_vec();
    let file_hash = store.blobs().add_bytes(content.clone()).await.unwrap().hash;
    for bad in ["../x", "a/../../b", "/tmp/x", "a/./b", "NUL"] {
        let manifest = Manifest {
            lesson_id: LessonId([3; 16]),
            version: 1,
            title: "piège".into(),
            author: secret.public(),
            created_unix_secs: 0,
            files: vec![FileEntry {
                path: "ok.txt".into(),
                size: content.len() as u64,
                hash: *file_hash.as_bytes(),
            }],
            dirs: vec![bad.into()],
            credentials: None,
        };
        let root = forge_bundle(&store, &manifest, &secret).await;
        let err = store.manifest(root).await.unwrap_err();
        assert!(
            matches!(err, ReadError::Manifest(ManifestError::UnsafePath(_))),
            "{bad:?}: {err:?}"
        );
        let out = dir.path().join("out");
        let err = store.export(root, &out).await.unwrap_err();
        assert!(
            matches!(
                err,
                ExportError::Read(ReadError::Manifest(ManifestError::UnsafePath(_)))
            ),
            "{bad:?}: {err:?}"
        );
        assert!(!out.exists());
        assert!(!dir.path().join("x").exists() && !dir.path().join("b").exists());
    }
    store.shutdown().await;
}
