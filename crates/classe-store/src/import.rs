//! Turning a folder (or one file) into a signed bundle.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use classe_bundle::{
    path::PathSet, validate_path, AuthorSecret, FileEntry, LessonId, Manifest, ManifestError,
    PathError, SignedManifest,
};
use iroh_blobs::{
    api::{
        blobs::{AddPathOptions, AddProgressItem, Batch, ImportMode},
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
    /// The teacher's certificate by their school, carried in the manifest
    /// (format 3).
    pub credentials: Option<classe_bundle::school::Credentials>,
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
    /// Entries left out: symlinks, special files, names not portable,
    /// names that differ from another only in letter case, files that
    /// cannot be read or kept changing while being read.
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
    #[error("{path} contains no files to share")]
    Empty {
        /// The source.
        path: String,
        /// What was found but left out, and why.
        skipped: Vec<Skipped>,
    },
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

/// What the walk found: candidate files and every folder it could list.
#[derive(Default)]
struct Walk {
    files: Vec<Found>,
    /// Relative paths of the folders below the root that were listed.
    dirs: Vec<String>,
}

/// Reads of one file that saw it change before giving up on it.
const MAX_READ_ATTEMPTS: usize = 3;

/// A file modified this recently (or in the future) may change again
/// within the same timestamp tick without its modification time moving
/// (2 s on FAT, coarse clocks elsewhere): its content is read a second
/// time and compared.
const HOT_WINDOW: Duration = Duration::from_secs(3);

/// Walks `root` without following symlinks, collecting regular files and
/// folders in a stable order. A sub-folder that cannot be listed is
/// skipped; the root must be readable.
fn walk(root: &Path, skipped: &mut Vec<Skipped>) -> Result<Walk, ImportError> {
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
        return Ok(Walk {
            files: vec![Found {
                abs: root.to_path_buf(),
                rel: name.to_string(),
                size: meta.len(),
            }],
            dirs: Vec::new(),
        });
    }
    if !meta.is_dir() {
        return Err(ImportError::NotShareable(root.display().to_string()));
    }
    let mut out = Walk::default();
    // Explicit stack: no recursion depth limit to hit on deep trees.
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match list(&dir) {
            Ok(entries) => entries,
            Err(e) if prefix.is_empty() => return Err(read_err(&dir, e)),
            Err(e) => {
                skipped.push(Skipped {
                    path: dir,
                    reason: format!("folder cannot be read: {e}"),
                });
                continue;
            }
        };
        if !prefix.is_empty() {
            out.dirs.push(prefix.clone());
        }
        for (path, name) in entries {
            let Some(name) = name.to_str().map(str::to_owned) else {
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
            if let Some(entry) = classify(path, rel, skipped) {
                match entry {
                    Entry::Dir(path, rel) => stack.push((path, rel)),
                    Entry::File(found) => out.files.push(found),
                }
            }
        }
    }
    out.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.dirs.sort();
    Ok(out)
}

/// The entries of one folder, sorted by name.
fn list(dir: &Path) -> std::io::Result<Vec<(PathBuf, std::ffi::OsString)>> {
    let mut entries = fs::read_dir(dir)?
        .map(|e| e.map(|e| (e.path(), e.file_name())))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(entries)
}

enum Entry {
    Dir(PathBuf, String),
    File(Found),
}

/// Whether one entry is walked into, taken, or skipped (and why).
fn classify(path: PathBuf, rel: String, skipped: &mut Vec<Skipped>) -> Option<Entry> {
    let mut skip = |path, reason: String| {
        skipped.push(Skipped { path, reason });
        None
    };
    // symlink_metadata: a symlink is reported as a symlink, never as what
    // it points to.
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) => return skip(path, format!("cannot be read: {e}")),
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        return skip(path, "symbolic link (not followed)".into());
    }
    if !kind.is_file() && !kind.is_dir() {
        return skip(path, "not a regular file".into());
    }
    if let Err(e) = validate_path(&rel) {
        return skip(path, format!("name cannot be shared safely: {e}"));
    }
    if kind.is_dir() {
        Some(Entry::Dir(path, rel))
    } else {
        Some(Entry::File(Found {
            abs: path,
            rel,
            size: meta.len(),
        }))
    }
}

/// What identifies one state of a file on disk: if any part differs
/// between before and after a read, the file changed while it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Change time and (device, inode) where the platform has them.
    changed: (i64, i64),
    file: (u64, u64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        let (changed, file) = {
            use std::os::unix::fs::MetadataExt;
            ((meta.ctime(), meta.ctime_nsec()), (meta.dev(), meta.ino()))
        };
        #[cfg(not(unix))]
        let (changed, file) = ((0, 0), (0, 0));
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            changed,
            file,
        }
    }

    /// Modified within [`HOT_WINDOW`] of now, or at an unknown time.
    fn is_hot(&self) -> bool {
        match self.modified {
            Some(t) => SystemTime::now()
                .duration_since(t)
                .map_or(true, |age| age < HOT_WINDOW),
            None => true,
        }
    }
}

/// The stamp of a regular file we can open for reading, or why not.
fn readable_stamp(path: &Path) -> Result<Stamp, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("no longer a regular file".into());
    }
    fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    Ok(Stamp::of(&meta))
}

/// Reads the whole file, as a check of whether it can be read at all.
fn read_through(path: &Path) -> std::io::Result<()> {
    std::io::copy(&mut fs::File::open(path)?, &mut std::io::sink()).map(|_| ())
}

/// Whether the file's content, read again now, has this BLAKE3 hash.
async fn same_content(path: &Path, hash: Hash) -> bool {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(fs::File::open(&path)?)
            .map(|h| *h.finalize().as_bytes())
    })
    .await
    .ok()
    .and_then(Result::ok)
    .is_some_and(|h| h == *hash.as_bytes())
}

/// One file's import: taken, or skipped with a reason.
enum FileImport {
    Taken(FileEntry, TempTag),
    Skipped(String),
}

/// Imports one file, making sure the copy is one state of the file: the
/// file's stamp must be the same before and after the copy (and, for a
/// file modified just now, a second read must give the same hash).
/// Otherwise it is read again, at most [`MAX_READ_ATTEMPTS`] times, then
/// skipped. A file that cannot be opened or read is skipped.
async fn import_file(
    batch: &Batch<'_>,
    f: &Found,
    done_bytes: u64,
    progress: &mut impl FnMut(ImportProgress),
) -> Result<FileImport, ImportError> {
    for _ in 0..MAX_READ_ATTEMPTS {
        let before = match readable_stamp(&f.abs) {
            Ok(stamp) => stamp,
            Err(reason) => return Ok(FileImport::Skipped(reason)),
        };
        let added = add_path(batch, f, done_bytes, progress).await;
        let after = fs::symlink_metadata(&f.abs).map(|m| Stamp::of(&m)).ok();
        let (size, tag) = match added {
            Ok(added) => added,
            Err(reason) => {
                if let Err(e) = read_through(&f.abs) {
                    return Ok(FileImport::Skipped(format!("cannot be read: {e}")));
                }
                if after == Some(before) {
                    return Err(ImportError::Store {
                        path: f.abs.display().to_string(),
                        reason,
                    });
                }
                continue;
            }
        };
        if after != Some(before) || size != before.len {
            continue;
        }
        if before.is_hot() && !same_content(&f.abs, tag.hash()).await {
            continue;
        }
        let entry = FileEntry {
            path: f.rel.clone(),
            size,
            hash: *tag.hash().as_bytes(),
        };
        return Ok(FileImport::Taken(entry, tag));
    }
    Ok(FileImport::Skipped(format!(
        "it changed while being read ({MAX_READ_ATTEMPTS} tries); share again once it is saved"
    )))
}

/// Imports every file found; those that cannot be are added to `skipped`.
async fn import_files(
    batch: &Batch<'_>,
    found: &[Found],
    skipped: &mut Vec<Skipped>,
    progress: &mut impl FnMut(ImportProgress),
) -> Result<Vec<(FileEntry, TempTag, PathBuf)>, ImportError> {
    let mut taken = Vec::with_capacity(found.len());
    let mut done_bytes = 0u64;
    for f in found {
        match import_file(batch, f, done_bytes, progress).await? {
            FileImport::Taken(entry, tag) => {
                done_bytes += entry.size;
                taken.push((entry, tag, f.abs.clone()));
            }
            FileImport::Skipped(reason) => {
                done_bytes += f.size;
                skipped.push(Skipped {
                    path: f.abs.clone(),
                    reason,
                });
            }
        }
        progress(ImportProgress::Imported(done_bytes));
    }
    Ok(taken)
}

/// Copies one file into the store; its size and temp tag, or why not.
async fn add_path(
    batch: &Batch<'_>,
    f: &Found,
    done_bytes: u64,
    progress: &mut impl FnMut(ImportProgress),
) -> Result<(u64, TempTag), String> {
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
            AddProgressItem::Error(e) => return Err(e.to_string()),
            _ => {}
        }
    }
    match (size, tag) {
        (Some(size), Some(tag)) => Ok((size, tag)),
        _ => Err("import ended without a result".into()),
    }
}

/// Of the files taken, drops those that would collide on a
/// case-insensitive disk (the first in byte order stays), then lists the
/// folders left empty: listed folders that hold no file taken and no other
/// such folder. Those whose name collides are skipped too.
fn select(
    taken: Vec<(FileEntry, TempTag, PathBuf)>,
    walked_dirs: &[String],
    root: &Path,
    skipped: &mut Vec<Skipped>,
) -> (Vec<FileEntry>, Vec<TempTag>, Vec<String>) {
    let mut set = PathSet::default();
    let mut files = Vec::with_capacity(taken.len());
    let mut tags = Vec::with_capacity(taken.len());
    for (entry, tag, abs) in taken {
        match set.add_file(&entry.path) {
            Ok(()) => {
                files.push(entry);
                tags.push(tag);
            }
            Err(e) => skipped.push(Skipped {
                path: abs,
                reason: collision_reason(&e),
            }),
        }
    }
    let mut holders: HashSet<&str> = HashSet::new();
    for path in files
        .iter()
        .map(|f| f.path.as_str())
        .chain(walked_dirs.iter().map(String::as_str))
    {
        holders.extend(path.match_indices('/').map(|(i, _)| &path[..i]));
    }
    let mut dirs = Vec::new();
    for dir in walked_dirs.iter().filter(|d| !holders.contains(d.as_str())) {
        match set.add_empty_dir(dir) {
            Ok(()) => dirs.push(dir.clone()),
            // Walked folders have valid names: only a collision is left.
            Err(_) => skipped.push(Skipped {
                path: dir.split('/').fold(root.to_path_buf(), |p, c| p.join(c)),
                reason: "empty folder with the same name as another entry apart from letter \
                         case (Windows, macOS and phones could not keep both)"
                    .into(),
            }),
        }
    }
    (files, tags, dirs)
}

fn collision_reason(e: &PathError) -> String {
    match e {
        PathError::Duplicate(_) => "another entry has the same name apart from letter case \
             (Windows, macOS and phones could not keep both)"
            .into(),
        PathError::FileIsFolder(_) | PathError::NotEmpty(_) => {
            "a file and a folder would have the same name apart from letter case".into()
        }
        other => format!("name cannot be shared safely: {other}"),
    }
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
        // The walk reads every folder and stats every file: a blocking
        // thread's work, not the runtime's.
        let root = source.clone();
        let (walked, mut skipped) = tokio::task::spawn_blocking(move || {
            let mut skipped = Vec::new();
            walk(&root, &mut skipped).map(|w| (w, skipped))
        })
        .await
        .map_err(|e| ImportError::ReadSource {
            path: source.display().to_string(),
            source: std::io::Error::other(e),
        })??;
        if walked.files.is_empty() {
            return Err(ImportError::Empty {
                path: source.display().to_string(),
                skipped,
            });
        }
        progress(ImportProgress::Found {
            files: walked.files.len() as u64,
            bytes: walked.files.iter().map(|f| f.size).sum(),
        });

        // Temp tags keep the imported blobs alive until the root is pinned.
        let batch = self.blobs.batch().await.map_err(|e| ImportError::Store {
            path: source.display().to_string(),
            reason: e.to_string(),
        })?;
        let taken = import_files(&batch, &walked.files, &mut skipped, &mut progress).await?;
        let (files, tags, dirs) = select(taken, &walked.dirs, &source, &mut skipped);
        if files.is_empty() {
            return Err(ImportError::Empty {
                path: source.display().to_string(),
                skipped,
            });
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
            if m.files == files
                && m.dirs == dirs
                && m.title == title
                && m.credentials == options.credentials
            {
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
            dirs,
            credentials: options.credentials.clone(),
        };
        let signed = SignedManifest::sign(manifest, secret)?;
        let root = self.add_bundle(&batch, &signed, &source).await?;
        drop(tags);

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

    /// Adds the manifest and the hash sequence, and pins the root. The
    /// files must be in the store already (kept alive by the caller).
    async fn add_bundle(
        &self,
        batch: &Batch<'_>,
        signed: &SignedManifest,
        source: &Path,
    ) -> Result<Hash, ImportError> {
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
        Ok(root)
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
                .map_err(store_err)
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
