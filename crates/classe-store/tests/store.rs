//! The store on its own, without a network: a folder goes in and comes
//! back out the same, sharing it again unchanged reuses the bundle, a
//! change makes the next version, `list` says what is complete, `remove`
//! forgets, and damage on disk is found and refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
};

use classe_bundle::AuthorSecret;
use classe_store::{iroh_blobs::Hash, BlobCheck, ExportError, ImportOptions, Imported, Store};
use classe_testkit::{
    lesson::{make_lesson, write_file},
    pseudo_random,
    tree::{flip_bytes, tree},
};

/// A store in `dir/store` and a lesson of `big` bytes in `dir/lesson`.
async fn setup(dir: &Path, big: usize) -> (Store, PathBuf) {
    let lesson = dir.join("lesson");
    make_lesson(&lesson, big);
    (Store::open(&dir.join("store")).await.unwrap(), lesson)
}

async fn import(store: &Store, lesson: &Path, secret: &AuthorSecret) -> Imported {
    store
        .import(lesson, &ImportOptions::default(), secret, |_| {})
        .await
        .unwrap()
}

#[tokio::test]
async fn import_then_export_gives_back_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let (store, lesson) = setup(dir.path(), 300_000).await;
    let secret = AuthorSecret::generate();
    let imported = import(&store, &lesson, &secret).await;
    assert!(!imported.unchanged, "a first import is new");
    assert!(imported.skipped.is_empty(), "{:?}", imported.skipped);
    let m = imported.manifest.manifest();
    assert_eq!(m.version, 1);
    assert_eq!(m.author, secret.public());
    assert_eq!(m.title, "lesson");
    assert_eq!(m.files.len(), 4);
    // The manifest the store reads back is the one import signed.
    let read = store.manifest(imported.root).await.unwrap();
    assert_eq!(read.manifest(), m);

    let out = dir.path().join("out");
    store.export(imported.root, &out).await.unwrap();
    assert_eq!(tree(&out), tree(&lesson));
    // A second export may not overwrite the first.
    let again = store.export(imported.root, &out).await.unwrap_err();
    assert!(
        matches!(again, ExportError::DestinationExists(_)),
        "{again:?}"
    );
    store.shutdown().await;
}

#[tokio::test]
async fn an_unchanged_folder_reuses_its_bundle_and_a_change_bumps_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let (store, lesson) = setup(dir.path(), 50_000).await;
    let secret = AuthorSecret::generate();
    let first = import(&store, &lesson, &secret).await;
    let same = import(&store, &lesson, &secret).await;
    assert!(same.unchanged);
    assert_eq!(same.root, first.root);
    assert_eq!(same.manifest.manifest().version, 1);

    fs::write(lesson.join("README.txt"), "Bonjour la classe, encore\n").unwrap();
    let next = import(&store, &lesson, &secret).await;
    assert!(!next.unchanged);
    assert_ne!(next.root, first.root);
    let (a, b) = (first.manifest.manifest(), next.manifest.manifest());
    assert_eq!(b.version, 2);
    assert_eq!(b.lesson_id, a.lesson_id, "the same lesson, a new version");

    // Asked for a new lesson, the same folder gets another lesson id.
    let options = ImportOptions {
        new_lesson: true,
        ..ImportOptions::default()
    };
    let other = store
        .import(&lesson, &options, &secret, |_| {})
        .await
        .unwrap();
    assert_ne!(other.manifest.manifest().lesson_id, a.lesson_id);
    assert_eq!(other.manifest.manifest().version, 1);
    store.shutdown().await;
}

#[tokio::test]
async fn list_says_what_is_complete_and_remove_forgets_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (store, lesson) = setup(dir.path(), 40_000).await;
    let secret = AuthorSecret::generate();
    let full = import(&store, &lesson, &secret).await;

    // A bundle whose file list is here but whose content is not (as after
    // an interrupted fetch): the manifest of a lesson this store never had.
    let elsewhere = tempfile::tempdir().unwrap();
    let (other_store, other) = setup(elsewhere.path(), 40_000).await;
    write_file(&other, "en plus.bin", &pseudo_random(70_000, 5)).unwrap();
    let other = import(&other_store, &other, &secret).await;
    other_store.shutdown().await;
    let manifest = other.manifest.manifest();
    let partial = common::pin_header(&store, other.manifest.to_bytes(), &manifest.files).await;
    assert_eq!(partial, other.root, "the same bytes, the same root");

    let list = store.list().await.unwrap();
    assert_eq!(list.len(), 2);
    let by_root = |root: Hash| list.iter().find(|b| b.root == root).unwrap();
    let total: u64 = full.manifest.manifest().files.iter().map(|f| f.size).sum();
    assert!(by_root(full.root).complete);
    assert_eq!(by_root(full.root).local_bytes, total);
    let p = by_root(partial);
    assert!(!p.complete);
    // The files both lessons share (same bytes) are here; the new one is not.
    let shared: u64 = manifest
        .files
        .iter()
        .filter(|f| f.path != "en plus.bin")
        .map(|f| f.size)
        .sum();
    assert_eq!(p.local_bytes, shared);
    let err = store
        .export(partial, &dir.path().join("out"))
        .await
        .unwrap_err();
    assert!(matches!(err, ExportError::Incomplete { .. }), "{err:?}");

    assert!(store.remove(partial).await.unwrap());
    assert!(!store.remove(partial).await.unwrap(), "already removed");
    let list = store.list().await.unwrap();
    assert_eq!(list.iter().map(|b| b.root).collect::<Vec<_>>(), [full.root]);
    store.shutdown().await;
}

#[tokio::test]
async fn a_damaged_file_on_disk_is_found_and_not_exported() {
    let dir = tempfile::tempdir().unwrap();
    let (store, lesson) = setup(dir.path(), 200_000).await;
    let secret = AuthorSecret::generate();
    let imported = import(&store, &lesson, &secret).await;
    let check = store.check_bundle(imported.root).await.unwrap();
    assert!(!check.is_damaged() && check.is_complete(), "{check:?}");
    store.shutdown().await;

    // The big file is the largest data file; flip bytes in its middle.
    let data = largest_data_file(&dir.path().join("store"));
    assert_eq!(fs::metadata(&data).unwrap().len(), 200_000);
    flip_bytes(&data, 100_000, 16);

    let store = Store::open(&dir.path().join("store")).await.unwrap();
    let check = store.check_bundle(imported.root).await.unwrap();
    assert!(check.is_damaged(), "{check:?}");
    let damaged: Vec<&str> = check
        .files
        .iter()
        .filter(|f| f.check.is_damaged())
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(damaged, ["vidéo.bin"]);
    let video = check.files.iter().find(|f| f.path == "vidéo.bin").unwrap();
    let BlobCheck::Damaged { ranges } = &video.check else {
        panic!("{:?}", video.check);
    };
    assert!(
        ranges.iter().any(|&(s, e)| s <= 100_000 && 100_016 <= e),
        "the damage is where the bytes were flipped: {ranges:?}"
    );
    let out = dir.path().join("out");
    assert!(store.export(imported.root, &out).await.is_err());
    assert!(!out.exists(), "nothing of a damaged bundle is written");
    store.shutdown().await;
}

/// The largest `<hash>.data` file of the store in `dir`.
fn largest_data_file(dir: &Path) -> PathBuf {
    fs::read_dir(dir.join("blobs/data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .expect("no data file in the store")
}
