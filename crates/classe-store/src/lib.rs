//! The on-disk store: lesson bundles on top of iroh-blobs' file store.
//!
//! ```text
//! <dir>/blobs/      iroh-blobs FsStore (content-addressed, partial blobs)
//! <dir>/lessons.json which source folder became which lesson id/version
//! ```
//!
//! A bundle is a hash sequence `[manifest, file0, file1, ...]` kept alive by
//! a tag named `classe/bundle/<root hex>`. Everything here is local: the
//! node crate moves bytes between stores.
//!
//! The store wraps iroh-blobs behind our own types so that its API churn
//! (it calls itself "not yet production quality") stays in this crate.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod export;
mod import;
mod lessons;
mod verify;

use std::path::{Path, PathBuf};

use classe_bundle::{limits::MAX_MANIFEST_BYTES, ManifestError, SignedManifest};
use iroh_blobs::{
    api::{proto::BlobStatus, Store as BlobStore},
    hashseq::HashSeq,
    store::fs::FsStore,
    BlobFormat, Hash, HashAndFormat,
};
use n0_future::StreamExt;

pub use export::ExportError;
pub use import::{ImportError, ImportOptions, ImportProgress, Imported, Skipped};
pub use iroh_blobs;
pub use verify::{drop_blobs, BlobCheck, BundleCheck, DropError, FileCheck};

/// Prefix of the tags that pin bundles.
const TAG_PREFIX: &str = "classe/bundle/";

/// Longest time between a change to the store's metadata and its commit.
const METADATA_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);

/// A handle to the store. Cheap to clone; all clones share one store.
#[derive(Clone, Debug)]
pub struct Store {
    blobs: FsStore,
    dir: PathBuf,
    /// Blobs a check found damaged in this run (see [`Store::is_damaged`]).
    damaged: std::sync::Arc<std::sync::RwLock<std::collections::HashSet<Hash>>>,
    /// Bundles not to serve any more (see [`Store::withhold`]).
    withheld: std::sync::Arc<std::sync::RwLock<std::collections::HashSet<Hash>>>,
}

/// Opening the store failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The folder cannot be created.
    #[error("cannot create store folder {path}")]
    CreateDir {
        /// The folder.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// iroh-blobs refused to open its database (locked by another process,
    /// damaged, or from an incompatible version).
    #[error("cannot open the blob store in {path} (is another classe using this home?): {reason}")]
    Load {
        /// The folder.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Reading a bundle from the store failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store holds nothing of this bundle.
    #[error("bundle {} is not in the store", .0.to_hex())]
    NotFound(Hash),
    /// The store itself failed (disk, database).
    #[error("store error: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The root blob is not a hash sequence of at least one entry.
    #[error("bundle root is not a valid hash sequence")]
    BadHashSeq,
    /// The manifest is missing or not complete yet.
    #[error("the manifest is not in the store")]
    MissingManifest,
    /// The manifest fails to decode, verify or validate.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The hash sequence and the manifest's file list disagree.
    #[error("bundle hash sequence does not match its manifest's file list")]
    Mismatch,
}

/// What the store knows about one bundle.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    /// The root hash.
    pub root: Hash,
    /// The manifest, signature verified and content validated.
    pub manifest: SignedManifest,
    /// Bytes of file content present locally.
    pub local_bytes: u64,
    /// Whether every file is complete.
    pub complete: bool,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub async fn open(dir: &Path) -> Result<Self, OpenError> {
        let blob_dir = dir.join("blobs");
        std::fs::create_dir_all(&blob_dir).map_err(|source| OpenError::CreateDir {
            path: blob_dir.display().to_string(),
            source,
        })?;
        let mut options = iroh_blobs::store::fs::options::Options::new(&blob_dir);
        // What a kill can lose: the store's metadata (which blobs exist,
        // partial or complete, and the pins) is committed in batches of at
        // most this long (iroh-blobs' default is 500 ms, long enough for a
        // fast fetch to hold megabytes the database does not know of yet).
        // The data files themselves survive a kill; the ranges of a partial
        // blob are recomputed from data and outboard when its bitfield
        // file was not written.
        options.batch.max_write_duration = METADATA_COMMIT;
        let blobs = FsStore::load_with_opts(blob_dir.join("blobs.db"), options)
            .await
            .map_err(|e| OpenError::Load {
                path: blob_dir.display().to_string(),
                reason: e.to_string(),
            })?;
        let store = Self {
            blobs,
            dir: dir.to_path_buf(),
            damaged: Default::default(),
            withheld: Default::default(),
        };
        // A dropping of damaged blobs that was killed halfway left bundles
        // unpinned: pin them again.
        if let Err(e) = store.replay_retag_journal().await {
            tracing::warn!("cannot restore the pins of bundles being repaired: {e}");
        }
        Ok(store)
    }

    /// Makes everything the store was told so far durable (metadata
    /// committed), so that a kill from now on loses none of it.
    pub async fn sync(&self) -> Result<(), ReadError> {
        self.blobs.sync_db().await.map_err(store_err)
    }

    /// The underlying iroh-blobs store. For benchmarks that measure bare
    /// iroh-blobs beside classe; classe's own layers use the methods here.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The iroh-blobs protocol handler serving this store, reporting to
    /// `events` (connections, requests, throttling).
    pub fn protocol(
        &self,
        events: Option<iroh_blobs::provider::events::EventSender>,
    ) -> iroh_blobs::BlobsProtocol {
        iroh_blobs::BlobsProtocol::new(&self.blobs, events)
    }

    /// Runs a get request on a connection to a provider, writing what
    /// arrives into the store, verified chunk by chunk while streaming.
    pub fn execute_get(
        &self,
        conn: impl iroh_blobs::api::remote::GetStreamPair,
        request: iroh_blobs::protocol::GetRequest,
    ) -> iroh_blobs::api::remote::GetProgress {
        self.blobs.remote().execute_get(conn, request)
    }

    /// The byte ranges of `hash` held and verified now.
    pub async fn local_ranges(
        &self,
        hash: Hash,
    ) -> Result<iroh_blobs::protocol::ChunkRanges, ReadError> {
        Ok(self
            .blobs
            .blobs()
            .observe(hash)
            .await
            .map_err(store_err)?
            .ranges)
    }

    /// Flushes and stops the store. Call before the process exits so that
    /// partial downloads are persisted and can resume.
    pub async fn shutdown(&self) {
        // The store actor exits as part of shutting down, so its reply can
        // be lost; that is not a failure.
        if let Err(e) = self.blobs.shutdown().await {
            tracing::debug!("store shutdown: {e}");
        }
    }

    /// Pins a bundle root so that its blobs survive garbage collection.
    /// The pin is durable when this returns.
    pub async fn pin(&self, root: Hash) -> Result<(), ReadError> {
        self.blobs
            .tags()
            .set(tag_name(root), HashAndFormat::hash_seq(root))
            .await
            .map_err(store_err)?;
        self.sync().await
    }

    /// Reads the hash sequence of `root`: the manifest hash, then file hashes.
    pub async fn hash_seq(&self, root: Hash) -> Result<Vec<Hash>, ReadError> {
        if !self.has_complete(root).await? {
            return Err(ReadError::NotFound(root));
        }
        let bytes = self
            .blobs
            .blobs()
            .get_bytes(root)
            .await
            .map_err(store_err)?;
        let seq = HashSeq::try_from(bytes).map_err(|_| ReadError::BadHashSeq)?;
        let hashes: Vec<Hash> = seq.iter().collect();
        if hashes.is_empty() {
            return Err(ReadError::BadHashSeq);
        }
        Ok(hashes)
    }

    /// Reads, verifies and validates the manifest of `root`, and checks that
    /// the hash sequence lists exactly the manifest's files in order.
    /// Trust in the author is the caller's decision.
    pub async fn manifest(&self, root: Hash) -> Result<SignedManifest, ReadError> {
        let seq = self.hash_seq(root).await?;
        let manifest_hash = seq[0];
        match self
            .blobs
            .blobs()
            .status(manifest_hash)
            .await
            .map_err(store_err)?
        {
            BlobStatus::Complete { size } if size as usize <= MAX_MANIFEST_BYTES => {}
            BlobStatus::Complete { size } => {
                return Err(ManifestError::TooLarge(size as usize).into())
            }
            _ => return Err(ReadError::MissingManifest),
        }
        let bytes = self
            .blobs
            .blobs()
            .get_bytes(manifest_hash)
            .await
            .map_err(store_err)?;
        let signed = SignedManifest::decode_verified(&bytes)?;
        let files = &signed.manifest().files;
        if seq.len() != files.len() + 1
            || files
                .iter()
                .zip(&seq[1..])
                .any(|(f, h)| Hash::from_bytes(f.hash) != *h)
        {
            return Err(ReadError::Mismatch);
        }
        Ok(signed)
    }

    /// How many bytes of a blob of `size` bytes are present.
    pub async fn blob_local_bytes(&self, hash: Hash, size: u64) -> Result<u64, ReadError> {
        if size == 0 {
            return Ok(0);
        }
        match self.blobs.blobs().status(hash).await.map_err(store_err)? {
            BlobStatus::Complete { size: have } if have == size => Ok(size),
            BlobStatus::Complete { .. } | BlobStatus::NotFound => Ok(0),
            BlobStatus::Partial { .. } => {
                let info = self
                    .blobs
                    .remote()
                    .local(HashAndFormat::raw(hash))
                    .await
                    .map_err(store_err)?;
                Ok(info.local_bytes().min(size))
            }
        }
    }

    /// Whether the blob is complete with exactly `size` bytes.
    pub async fn blob_complete(&self, hash: Hash, size: u64) -> Result<bool, ReadError> {
        if size == 0 && hash == Hash::EMPTY {
            return Ok(true);
        }
        Ok(matches!(
            self.blobs.blobs().status(hash).await.map_err(store_err)?,
            BlobStatus::Complete { size: have } if have == size
        ))
    }

    /// What the store holds of one bundle, or `None` if it has no manifest.
    pub async fn info(&self, root: Hash) -> Result<Option<BundleInfo>, ReadError> {
        let manifest = match self.manifest(root).await {
            Ok(m) => m,
            Err(ReadError::MissingManifest) => return Ok(None),
            Err(ReadError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut local_bytes = 0;
        let mut complete = true;
        for file in &manifest.manifest().files {
            let hash = Hash::from_bytes(file.hash);
            let have = self.blob_local_bytes(hash, file.size).await?;
            local_bytes += have;
            complete &= self.blob_complete(hash, file.size).await?;
        }
        Ok(Some(BundleInfo {
            root,
            manifest,
            local_bytes,
            complete,
        }))
    }

    /// Whether the blob `hash` is complete, whatever its size.
    pub async fn has_complete(&self, hash: Hash) -> Result<bool, ReadError> {
        Ok(matches!(
            self.blobs.blobs().status(hash).await.map_err(store_err)?,
            BlobStatus::Complete { .. }
        ))
    }

    /// The pinned bundles, complete or partial, sorted by title.
    pub async fn list(&self) -> Result<Vec<BundleInfo>, ReadError> {
        let mut roots = Vec::new();
        let mut tags = self
            .blobs
            .tags()
            .list_prefix(TAG_PREFIX)
            .await
            .map_err(store_err)?;
        while let Some(tag) = tags.next().await {
            let tag = tag.map_err(store_err)?;
            if tag.format == BlobFormat::HashSeq {
                roots.push(tag.hash);
            }
        }
        let mut out = Vec::new();
        for root in roots {
            match self.info(root).await {
                Ok(Some(info)) => out.push(info),
                Ok(None) => {}
                Err(e) => tracing::warn!(%root, "skipping unreadable bundle: {e}"),
            }
        }
        out.sort_by(|a, b| {
            a.manifest
                .manifest()
                .title
                .cmp(&b.manifest.manifest().title)
        });
        Ok(out)
    }

    /// Unpins a bundle and reclaims the space of blobs no other bundle uses.
    /// Returns whether it was pinned.
    pub async fn remove(&self, root: Hash) -> Result<bool, ReadError> {
        let removed = self
            .blobs
            .tags()
            .delete(tag_name(root))
            .await
            .map_err(store_err)?;
        Ok(removed > 0)
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Opens the store with garbage collection enabled, runs one pass and
/// shuts it down: how `classe rm` reclaims space. The store must not be
/// open elsewhere.
pub async fn collect_garbage(dir: &Path) -> Result<(), OpenError> {
    use iroh_blobs::store::{fs::options::Options, GcConfig};
    let blob_dir = dir.join("blobs");
    let mut options = Options::new(&blob_dir);
    let interval = std::time::Duration::from_millis(50);
    options.gc = Some(GcConfig {
        interval,
        add_protected: None,
    });
    let store = FsStore::load_with_opts(blob_dir.join("blobs.db"), options)
        .await
        .map_err(|e| OpenError::Load {
            path: blob_dir.display().to_string(),
            reason: e.to_string(),
        })?;
    // iroh-blobs offers no "run gc now"; its loop sleeps `interval` first.
    // Give it a few intervals, then wait for the store to be idle.
    tokio::time::sleep(interval * 6).await;
    store.wait_idle().await.ok();
    store.shutdown().await.ok();
    Ok(())
}

fn tag_name(root: Hash) -> String {
    format!("{TAG_PREFIX}{}", root.to_hex())
}

fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> ReadError {
    ReadError::Store(Box::new(e))
}
