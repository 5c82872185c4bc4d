//! Turning a folder (or one file) into a signed bundle.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use classe_bundle::{
    validate_file_list, validate_path, AuthorSecret, FileEntry, LessonId, Manifest, ManifestError,
    SignedManifest,
};
use iroh_blobs::{
    api::{
        blobs::{AddPathOptions, AddProgressItem, ImportMode},
        TempTag,
    },
    hashseq::HashSeq,
    BlobFormat, Hash,
};
use n0_future::StreamExt;

use crate::{lessons::LessonRecord, lessons::Lessons, store_err, ReadError, Store};

/// How to make the bundle.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Title; defaults to the folder or file name.
    pub title: Option<String>,
    /// Start a new lesson even if this folder was shared before.
    pub new_lesson: bool,
}

/// Progress while importing, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum ImportProgress {
    /// The walk found this many files and bytes.
    Found {
        /// Files to import.
        files: u64,
        /// Sum of their sizes.
        bytes: u64,
    },
    /// This many bytes are imported so far.
    Imported(u64),
}

/// Something the walk did not include, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The path on disk.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The bundle's root hash.
    pub root: Hash,
    /// The signed manifest.
    pub manifest: SignedManifest,
    /// True if the folder had not changed since it was last shared, so the
    /// previous bundle was reused as it was.
    pub unchanged: bool,
    /// Entries left out: symlinks, special files, names not portable.
    pub skipped: Vec<Skipped>,
}

/// Importing failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The source does not exist or cannot be read.
    #[error("cannot read {path}")]
    ReadSource {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source is neither a regular file nor a folder.
    #[error("{0} is neither a file nor a folder")]
    NotShareable(String),
    /// Nothing to share.
    #[error("{0} contains no files to share")]
    Empty(String),
    /// The file list is not acceptable (duplicates ignoring case, limits).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The blob store failed while adding data.
    #[error("store error while importing {path}: {reason}")]
    Store {
        /// The file being imported.
        path: String,
        /// Why.
        reason: String,
    },
    /// The lesson record could not be read or written.
    #[error("cannot update the lesson record {path}")]
    Lessons {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

struct Found {
    abs: PathBuf,
    rel: String,
    size: u64,
}

/// Walks `root` without following symlinks, collecting regular files in a
/// stable order.
fn walk(root: &Path, skipped: &mut Vec<Skipped>) -> Result<Vec<Found>, ImportError> {
    let read_err = |path: &Path, source| ImportError::ReadSource {
        path: path.display().to_string(),
        source,
    };
    let meta = fs::symlink_metadata(root).map_err(|e| read_err(root, e))?;
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ImportError::NotShareable(root.display().to_string()))?;
        validate_path(name).map_err(ManifestError::from)?;
        return Ok(vec![Found {
            abs: root.to_path_buf(),
            rel: name.to_string(),
            size: meta.len(),
        }]);
    }
    if !meta.is_dir() {
        return Err(ImportError::NotShareable(root.display().to_string()));
    }
    let mut out = Vec::new();
    // Explicit stack: no recursion depth limit to hit on deep trees.
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(|e| read_err(&dir, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| read_err(&dir, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                skipped.push(Skipped {
                    path,
                    reason: "name is not valid UTF-8".into(),
                });
                continue;
            };
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            // symlink_metadata: a symlink is reported as a symlink, never
            // as what it points to.
            let meta = fs::symlink_metadata(&path).map_err(|e| read_err(&path, e))?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                skipped.push(Skipped {
                    path,
                    reason: "symbolic link (not followed)".into(),
                });
                continue;
            }
            if !kind.is_file() && !kind.is_dir() {
                skipped.push(Skipped {
                    path,
                    reason: "not a regular file".into(),
                });
                continue;
            }
            if let Err(e) = validate_path(&rel) {
                skipped.push(Skipped {
                    path,
                    reason: format!("name cannot be shared safely: {e}"),
                });
                continue;
            }
            if kind.is_dir() {
                stack.push((path, rel));
            } else {
                out.push(Found {
                    abs: path,
                    rel,
                    size: meta.len(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

impl Store {
    /// Imports `source` (a folder or a file), signs its manifest with
    /// `secret`, and pins the bundle.
    pub async fn import(
        &self,
        source: &Path,
        options: &ImportOptions,
        secret: &AuthorSecret,
        mut progress: impl FnMut(ImportProgress),
    ) -> Result<Imported, ImportError> {
        let source = fs::canonicalize(source).map_err(|e| ImportError::ReadSource {
            path: source.display().to_string(),
            source: e,
        })?;
        let mut skipped = Vec::new();
        let found = walk(&source, &mut skipped)?;
        if found.is_empty() {
            return Err(ImportError::Empty(source.display().to_string()));
        }
        validate_file_list(found.iter().map(|f| f.rel.as_str())).map_err(ManifestError::from)?;
        progress(ImportProgress::Found {
            files: found.len() as u64,
            bytes: found.iter().map(|f| f.size).sum(),
        });

        // Temp tags keep the imported blobs alive until the root is pinned.
        let batch = self.blobs.batch().await.map_err(|e| ImportError::Store {
            path: source.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut tags: Vec<TempTag> = Vec::with_capacity(found.len() + 2);
        let mut files = Vec::with_capacity(found.len());
        let mut done_bytes = 0u64;
        for f in &found {
            let store_err = |e: &dyn std::fmt::Display| ImportError::Store {
                path: f.abs.display().to_string(),
                reason: e.to_string(),
            };
            let mut stream = batch
                .add_path_with_opts(AddPathOptions {
                    path: f.abs.clone(),
                    format: BlobFormat::Raw,
                    mode: ImportMode::Copy,
                })
                .stream()
                .await;
            let mut size = None;
            let mut tag = None;
            while let Some(item) = stream.next().await {
                match item {
                    AddProgressItem::Size(s) => size = Some(s),
                    AddProgressItem::CopyProgress(o) => {
                        progress(ImportProgress::Imported(done_bytes + o.min(f.size)))
                    }
                    AddProgressItem::Done(t) => tag = Some(t),
                    AddProgressItem::Error(e) => return Err(store_err(&e)),
                    _ => {}
                }
            }
            let (Some(size), Some(tag)) = (size, tag) else {
                return Err(store_err(&"import ended without a result"));
            };
            done_bytes += size;
            progress(ImportProgress::Imported(done_bytes));
            files.push(FileEntry {
                path: f.rel.clone(),
                size,
                hash: *tag.hash().as_bytes(),
            });
            tags.push(tag);
        }

        let author = secret.public();
        let lessons_path = self.dir.join("lessons.json");
        let lessons_err = |source| ImportError::Lessons {
            path: lessons_path.display().to_string(),
            source,
        };
        let mut lessons = Lessons::load(&lessons_path).map_err(lessons_err)?;
        let key = Lessons::key(&author.to_string(), &source);
        let default_title = source
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("lesson")
            .to_string();
        let title = options.title.clone().unwrap_or(default_title);

        let previous = match lessons.by_source.get(&key) {
            Some(record) if !options.new_lesson => self.previous(record).await,
            _ => None,
        };
        if let Some((root, signed)) = &previous {
            let m = signed.manifest();
            if m.files == files && m.title == title {
                // Pin again: the bundle may have been unpinned (`classe rm`)
                // while its blobs were still in the store.
                self.pin(*root).await.map_err(|e| ImportError::Store {
                    path: source.display().to_string(),
                    reason: e.to_string(),
                })?;
                return Ok(Imported {
                    root: *root,
                    manifest: signed.clone(),
                    unchanged: true,
                    skipped,
                });
            }
        }
        let (lesson_id, version) = match (&previous, lessons.by_source.get(&key)) {
            (Some((_, signed)), _) => (signed.manifest().lesson_id, signed.manifest().version + 1),
            (None, Some(record)) if !options.new_lesson => match parse_lesson_id(record) {
                Some(id) => (id, record.version + 1),
                None => (LessonId::random(), 1),
            },
            _ => (LessonId::random(), 1),
        };
        let manifest = Manifest {
            lesson_id,
            version,
            title,
            author,
            created_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            files,
        };
        let signed = SignedManifest::sign(manifest, secret)?;
        let store_err = |e: &dyn std::fmt::Display| ImportError::Store {
            path: source.display().to_string(),
            reason: e.to_string(),
        };
        let manifest_tag = batch
            .add_bytes(signed.to_bytes())
            .temp_tag()
            .await
            .map_err(|e| store_err(&e))?;
        let seq: HashSeq = std::iter::once(manifest_tag.hash())
            .chain(
                signed
                    .manifest()
                    .files
                    .iter()
                    .map(|f| Hash::from_bytes(f.hash)),
            )
            .collect();
        let root_tag = batch
            .add_bytes_with_opts(iroh_blobs::api::blobs::AddBytesOptions {
                data: bytes::Bytes::from(seq),
                format: BlobFormat::HashSeq,
            })
            .temp_tag()
            .await
            .map_err(|e| store_err(&e))?;
        let root = root_tag.hash();
        self.pin(root).await.map_err(|e| store_err(&e))?;
        drop((tags, manifest_tag, root_tag));

        lessons.by_source.insert(
            key,
            LessonRecord {
                lesson_id: signed.manifest().lesson_id.to_string(),
                version: signed.manifest().version,
                root: root.to_hex(),
            },
        );
        lessons.save(&lessons_path).map_err(lessons_err)?;
        Ok(Imported {
            root,
            manifest: signed,
            unchanged: false,
            skipped,
        })
    }

    async fn previous(&self, record: &LessonRecord) -> Option<(Hash, SignedManifest)> {
        let root: Hash = record.root.parse().ok()?;
        let signed: Result<SignedManifest, ReadError> = self.manifest(root).await;
        let signed = signed.ok()?;
        // Reuse only if the old bundle is still whole in the store.
        for f in &signed.manifest().files {
            if !self
                .blob_complete(Hash::from_bytes(f.hash), f.size)
                .await
                .map_err(|e| store_err(&e))
                .ok()?
            {
                return None;
            }
        }
        Some((root, signed))
    }
}

fn parse_lesson_id(record: &LessonRecord) -> Option<LessonId> {
    let bytes = data_encoding::HEXLOWER
        .decode(record.lesson_id.as_bytes())
        .ok()?;
    Some(LessonId(bytes.try_into().ok()?))
}
