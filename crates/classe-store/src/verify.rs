//! Checking what the store holds against its hashes.
//!
//! Every blob in the store has a BLAKE3 outboard: the hash tree above its
//! 16 KiB chunk groups. iroh-blobs' `export_bao` walks data and outboard
//! together and checks every chunk group against the tree on the way
//! (`traverse_ranges_validated`), stopping at the first mismatch with the
//! chunk where it happened. A blob is checked with one such walk over
//! what it holds; after a mismatch the walk starts again just past the
//! damaged chunk group, so one bad sector costs one chunk group, not the
//! rest of the file, and the data is read once.
//!
//! What this finds is reported per file with the damaged byte ranges.
//! Dropping damaged blobs so that they can be fetched again is
//! [`crate::drop_blobs`]: iroh-blobs 0.104 cannot forget part of a complete
//! blob, so the unit of repair is the blob (see docs/architecture.md,
//! "Local data integrity").

use std::collections::BTreeSet;

use bao_tree::{io::EncodeError, ChunkNum};
use iroh_blobs::{
    api::{blobs::EncodedItem, proto::BlobStatus},
    protocol::{ChunkRanges, ChunkRangesExt},
    Hash,
};
use n0_future::StreamExt;

use crate::{store_err, ReadError, Store};

/// Chunks (1 KiB) per chunk group (16 KiB), the unit the outboard hashes.
const GROUP_CHUNKS: u64 = 16;
/// Most restarts of one blob's walk: past this, the rest counts as damaged.
/// At one chunk group per restart this covers 64 MiB of scattered damage;
/// a run of consecutive failures doubles its step, so a damaged outboard
/// node over a large subtree is crossed in a few dozen restarts.
const MAX_RESTARTS: usize = 4096;

/// What the check found in one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCheck {
    /// Everything the store holds of it matches its hash (`complete`
    /// tells whether that is the whole blob).
    Good {
        /// Whether the blob is complete.
        complete: bool,
    },
    /// The store holds nothing of it.
    Missing,
    /// Some bytes do not match their hash: these byte ranges.
    Damaged {
        /// Damaged byte ranges, sorted, as `(start, end)`.
        ranges: Vec<(u64, u64)>,
    },
}

impl BlobCheck {
    /// Whether damage was found.
    pub fn is_damaged(&self) -> bool {
        matches!(self, Self::Damaged { .. })
    }
}

/// One file of a bundle, checked.
#[derive(Debug, Clone)]
pub struct FileCheck {
    /// The path in the bundle.
    pub path: String,
    /// Its blob.
    pub hash: Hash,
    /// Its size in the manifest.
    pub size: u64,
    /// What was found.
    pub check: BlobCheck,
}

/// One bundle, checked.
#[derive(Debug, Clone)]
pub struct BundleCheck {
    /// The root.
    pub root: Hash,
    /// Whether the store holds the bundle's file list at all.
    pub in_store: bool,
    /// The manifest's title, if the manifest could be read.
    pub title: Option<String>,
    /// Set when the hash sequence or the manifest itself is damaged or
    /// unreadable; `files` is then empty.
    pub header_damage: Option<String>,
    /// Each file, in manifest order.
    pub files: Vec<FileCheck>,
    /// The manifest's blob, once the file list could be read.
    pub manifest_hash: Option<Hash>,
}

impl BundleCheck {
    /// Whether anything is damaged.
    pub fn is_damaged(&self) -> bool {
        self.header_damage.is_some() || self.files.iter().any(|f| f.check.is_damaged())
    }

    /// Whether every file is complete and good.
    pub fn is_complete(&self) -> bool {
        self.in_store
            && self.header_damage.is_none()
            && self
                .files
                .iter()
                .all(|f| matches!(f.check, BlobCheck::Good { complete: true }))
    }

    /// The blobs to drop so that they are fetched again: the damaged
    /// files', plus root and manifest if those are damaged.
    pub fn damaged_blobs(&self) -> BTreeSet<Hash> {
        let mut out: BTreeSet<Hash> = self
            .files
            .iter()
            .filter(|f| f.check.is_damaged())
            .map(|f| f.hash)
            .collect();
        if self.header_damage.is_some() {
            out.insert(self.root);
            out.extend(self.manifest_hash);
        }
        out
    }
}

impl Store {
    /// Checks everything the store holds of blob `hash` against its hash.
    pub async fn check_blob(&self, hash: Hash) -> Result<BlobCheck, ReadError> {
        if hash == Hash::EMPTY {
            return Ok(BlobCheck::Good { complete: true });
        }
        let (held, complete, size) =
            match self.blobs.blobs().status(hash).await.map_err(store_err)? {
                BlobStatus::NotFound => return Ok(BlobCheck::Missing),
                BlobStatus::Complete { size } => (ChunkRanges::all(), true, size),
                BlobStatus::Partial { size } => {
                    let bitfield = self.blobs.blobs().observe(hash).await.map_err(store_err)?;
                    (bitfield.ranges, false, size.unwrap_or(0))
                }
            };
        if held.is_empty() {
            return Ok(BlobCheck::Missing);
        }
        let damaged = self.damaged_chunks(hash, held).await;
        if damaged.is_empty() {
            return Ok(BlobCheck::Good { complete });
        }
        Ok(BlobCheck::Damaged {
            ranges: byte_ranges(&damaged, size),
        })
    }

    /// The chunks of `held` that fail their hash (or cannot be read).
    async fn damaged_chunks(&self, hash: Hash, held: ChunkRanges) -> ChunkRanges {
        let mut todo = held;
        let mut damaged = ChunkRanges::empty();
        let mut step = GROUP_CHUNKS;
        for _ in 0..MAX_RESTARTS {
            let Some(first) = first_chunk(&todo) else {
                return damaged;
            };
            let mut next = first;
            let mut failure = None;
            let mut stream = self.blobs.blobs().export_bao(hash, todo.clone()).stream();
            while let Some(item) = stream.next().await {
                match item {
                    EncodedItem::Leaf(leaf) => {
                        next = ChunkNum::chunks(leaf.offset + leaf.data.len() as u64);
                        step = GROUP_CHUNKS;
                    }
                    EncodedItem::Error(e) => {
                        failure = Some(e);
                        break;
                    }
                    EncodedItem::Done => break,
                    EncodedItem::Size(_) | EncodedItem::Parent(_) => {}
                }
            }
            let Some(failure) = failure else {
                return damaged;
            };
            // Where it failed: the chunk the walk names, else just past the
            // last chunk group that checked out.
            let at = match failure {
                EncodeError::LeafHashMismatch(chunk) => chunk.max(next),
                ref other => {
                    tracing::debug!(%hash, "check failed after chunk {}: {other}", next.0);
                    next
                }
            };
            let bad = ChunkRanges::chunks(at.0..at.0.saturating_add(step));
            damaged |= &todo & &bad;
            todo = &todo - &ChunkRanges::chunks(..at.0.saturating_add(step));
            // A run of failures (a damaged tree node above many chunk
            // groups, an unreadable file) widens the step.
            step = step.saturating_mul(2);
        }
        damaged | todo
    }

    /// Checks the bundle `root`: its hash sequence, its manifest, and every
    /// file the store holds any of.
    pub async fn check_bundle(&self, root: Hash) -> Result<BundleCheck, ReadError> {
        let mut out = BundleCheck {
            root,
            in_store: true,
            title: None,
            header_damage: None,
            files: Vec::new(),
            manifest_hash: None,
        };
        match self.check_blob(root).await? {
            BlobCheck::Damaged { .. } => {
                out.header_damage = Some("the bundle's file list (hash sequence)".into());
                return Ok(out);
            }
            BlobCheck::Missing | BlobCheck::Good { complete: false } => {
                out.in_store = false;
                return Ok(out);
            }
            BlobCheck::Good { complete: true } => {}
        }
        let seq = match self.hash_seq(root).await {
            Ok(seq) => seq,
            Err(e) => {
                out.header_damage = Some(format!("the bundle's file list: {e}"));
                return Ok(out);
            }
        };
        out.manifest_hash = Some(seq[0]);
        match self.check_blob(seq[0]).await? {
            BlobCheck::Damaged { .. } => {
                out.header_damage = Some("the bundle's manifest".into());
                return Ok(out);
            }
            BlobCheck::Missing | BlobCheck::Good { complete: false } => {
                // Fetched next; nothing to check yet.
                return Ok(out);
            }
            BlobCheck::Good { complete: true } => {}
        }
        let manifest = match self.manifest(root).await {
            Ok(m) => m,
            Err(e) => {
                out.header_damage = Some(format!("the bundle's manifest: {e}"));
                return Ok(out);
            }
        };
        out.title = Some(manifest.manifest().title.clone());
        for f in &manifest.manifest().files {
            let hash = Hash::from_bytes(f.hash);
            let check = if f.size == 0 {
                BlobCheck::Good { complete: true }
            } else {
                self.check_blob(hash).await?
            };
            out.files.push(FileCheck {
                path: f.path.clone(),
                hash,
                size: f.size,
                check,
            });
        }
        Ok(out)
    }

    /// The roots of every pinned bundle.
    pub async fn pinned_roots(&self) -> Result<Vec<Hash>, ReadError> {
        let mut roots = Vec::new();
        let mut tags = self
            .blobs
            .tags()
            .list_prefix(crate::TAG_PREFIX)
            .await
            .map_err(store_err)?;
        while let Some(tag) = tags.next().await {
            let tag = tag.map_err(store_err)?;
            if tag.format == iroh_blobs::BlobFormat::HashSeq {
                roots.push(tag.hash);
            }
        }
        Ok(roots)
    }
}

fn first_chunk(ranges: &ChunkRanges) -> Option<ChunkNum> {
    ranges.boundaries().first().copied()
}

/// Chunk ranges as byte ranges clipped to `size` (when known).
fn byte_ranges(ranges: &ChunkRanges, size: u64) -> Vec<(u64, u64)> {
    let b = ranges.boundaries();
    let clip = |x: u64| if size > 0 { x.min(size) } else { x };
    let mut out = Vec::new();
    for pair in b.chunks(2) {
        let start = clip(pair[0].to_bytes());
        let end = pair.get(1).map_or(clip(u64::MAX), |e| clip(e.to_bytes()));
        if end > start {
            out.push((start, end));
        }
    }
    out
}

/// Name of the file that lists bundle tags taken off while damaged blobs
/// are dropped: if the process dies in between, the next open puts them
/// back.
const RETAG_JOURNAL: &str = "retag.json";

/// Dropping blobs failed.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] crate::OpenError),
    /// The store failed while dropping.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The journal could not be written.
    #[error("cannot write {path}: {source}")]
    Journal {
        /// The journal's path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Removes the blobs `damaged` from the store in `dir` so that the next
/// fetch gets them again, keeping everything else of every bundle. The
/// store must not be open elsewhere.
///
/// iroh-blobs deletes blobs only through its garbage collector, which
/// keeps whatever a tag reaches: the bundles that reach a damaged blob are
/// unpinned for one collection (their other blobs protected), then pinned
/// again. The tags taken off are written to a journal first, so that a
/// kill in between loses no pin ([`Store::open`] replays it).
pub async fn drop_blobs(dir: &std::path::Path, damaged: &BTreeSet<Hash>) -> Result<(), DropError> {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    };

    use iroh_blobs::store::{fs::options::Options, GcConfig, ProtectOutcome};

    if damaged.is_empty() {
        return Ok(());
    }
    let blob_dir = dir.join("blobs");
    let keep: Arc<Mutex<std::collections::HashSet<Hash>>> = Arc::default();
    let ready = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let (cb_keep, cb_ready, cb_runs) = (keep.clone(), ready.clone(), runs.clone());
    let protect: iroh_blobs::store::ProtectCb = Arc::new(move |live| {
        let (keep, ready, runs) = (cb_keep.clone(), cb_ready.clone(), cb_runs.clone());
        Box::pin(async move {
            if !ready.load(Ordering::SeqCst) {
                return ProtectOutcome::Abort;
            }
            if let Ok(keep) = keep.lock() {
                live.extend(keep.iter().copied());
            } else {
                return ProtectOutcome::Abort;
            }
            runs.fetch_add(1, Ordering::SeqCst);
            ProtectOutcome::Continue
        })
    });
    let mut options = Options::new(&blob_dir);
    options.gc = Some(GcConfig {
        interval: std::time::Duration::from_millis(50),
        add_protected: Some(protect),
    });
    let blobs = iroh_blobs::store::fs::FsStore::load_with_opts(blob_dir.join("blobs.db"), options)
        .await
        .map_err(|e| crate::OpenError::Load {
            path: blob_dir.display().to_string(),
            reason: e.to_string(),
        })?;
    let store = Store {
        blobs,
        dir: dir.to_path_buf(),
        damaged: Default::default(),
        withheld: Default::default(),
    };
    let result = async {
        store.replay_retag_journal().await?;
        // Which bundles reach a damaged blob, and what else they hold.
        let mut retag = Vec::new();
        for root in store.pinned_roots().await? {
            let seq = if damaged.contains(&root) {
                Vec::new()
            } else {
                store.hash_seq(root).await.unwrap_or_default()
            };
            if damaged.contains(&root) || seq.iter().any(|h| damaged.contains(h)) {
                retag.push(root);
                if let Ok(mut keep) = keep.lock() {
                    keep.extend(
                        std::iter::once(root)
                            .chain(seq)
                            .filter(|h| !damaged.contains(h)),
                    );
                }
            }
        }
        let journal = dir.join(RETAG_JOURNAL);
        let hex: Vec<String> = retag.iter().map(|r| r.to_hex().to_string()).collect();
        crate::lessons::write_atomic(&journal, &serde_json::to_vec(&hex).unwrap_or_default())
            .map_err(|source| DropError::Journal {
                path: journal.display().to_string(),
                source,
            })?;
        for root in &retag {
            store
                .blobs
                .tags()
                .delete(crate::tag_name(*root))
                .await
                .map_err(store_err)?;
        }
        store.blobs.sync_db().await.map_err(store_err)?;
        ready.store(true, Ordering::SeqCst);
        // Two protect calls: the first collection has run to its end.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while runs.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        ready.store(false, Ordering::SeqCst);
        store.replay_retag_journal().await
    }
    .await;
    store.blobs.wait_idle().await.ok();
    store.shutdown().await;
    result
}

impl Store {
    /// Whether a check in this process found blob `hash` damaged. A
    /// provider must not offer such a blob: iroh-blobs' export stops at
    /// the damaged chunk group, and the fetching side only sees a peer
    /// that failed.
    pub fn is_damaged(&self, hash: Hash) -> bool {
        self.damaged.read().is_ok_and(|d| d.contains(&hash))
    }

    /// Stops offering bundle `root` in this process (a lesson of a revoked
    /// teacher): requests for it are declined from now on.
    pub fn withhold(&self, root: Hash) {
        if let Ok(mut w) = self.withheld.write() {
            w.insert(root);
        }
    }

    /// Whether [`Store::withhold`] was called for `hash`.
    pub fn is_withheld(&self, hash: Hash) -> bool {
        self.withheld.read().is_ok_and(|w| w.contains(&hash))
    }

    /// Checks every pinned bundle in the background, one at a time, and
    /// says in the log (warn) which bundle and file is damaged; damaged
    /// blobs are then reported by [`Store::is_damaged`]. For providers
    /// (`share`, `seed`), at start.
    pub fn spawn_background_check(&self) -> tokio::task::JoinHandle<usize> {
        let store = self.clone();
        tokio::spawn(async move {
            let roots = match store.pinned_roots().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("cannot list the bundles to check: {e}");
                    return 0;
                }
            };
            let mut found = 0;
            for root in roots {
                match store.check_bundle(root).await {
                    Ok(check) => found += store.note_damage(&check),
                    Err(e) => tracing::warn!(%root, "cannot check bundle: {e}"),
                }
            }
            found
        })
    }

    /// Logs and records the damage a check found; returns how many blobs.
    pub fn note_damage(&self, check: &BundleCheck) -> usize {
        let title = check
            .title
            .as_deref()
            .unwrap_or("?")
            .escape_debug()
            .to_string();
        if let Some(what) = &check.header_damage {
            tracing::warn!(root = %check.root, "bundle \"{title}\": {what} is damaged in the local store; it is no longer served");
        }
        for f in check.files.iter().filter(|f| f.check.is_damaged()) {
            tracing::warn!(
                root = %check.root,
                "bundle \"{title}\": file \"{}\" is damaged in the local store; it is no longer served (fetch the bundle again or share the folder again after `classe rm`)",
                f.path.escape_debug()
            );
        }
        let blobs = check.damaged_blobs();
        if let Ok(mut d) = self.damaged.write() {
            d.extend(blobs.iter().copied());
        }
        blobs.len()
    }

    /// Pins again the bundles a dropping of damaged blobs took off, if a
    /// journal says so, then removes the journal.
    pub(crate) async fn replay_retag_journal(&self) -> Result<(), DropError> {
        let journal = self.dir.join(RETAG_JOURNAL);
        let bytes = match std::fs::read(&journal) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(DropError::Journal {
                    path: journal.display().to_string(),
                    source,
                })
            }
        };
        let roots: Vec<String> = serde_json::from_slice(&bytes).unwrap_or_default();
        for root in roots.iter().filter_map(|r| r.parse::<Hash>().ok()) {
            self.pin(root).await?;
        }
        self.blobs.sync_db().await.map_err(store_err)?;
        std::fs::remove_file(&journal).map_err(|source| DropError::Journal {
            path: journal.display().to_string(),
            source,
        })
    }
}

/// "bytes 16384..32768 and 2 more ranges (16 KiB) do not match its hash".
pub(crate) fn describe_ranges(ranges: &[(u64, u64)]) -> String {
    let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    let Some((s, e)) = ranges.first() else {
        return "its content does not match its hash".into();
    };
    let more = match ranges.len() {
        1 => String::new(),
        n => format!(" and {} more range(s)", n - 1),
    };
    format!("bytes {s}..{e}{more}, {total} bytes in all, do not match its hash")
}
