//! Writing a bundle out as a folder, atomically.
//!
//! Files are written into a hidden staging folder next to the destination,
//! then the staging folder is renamed into place in one step. A crash or an
//! error leaves either nothing or the whole folder, never half of one; a
//! staging folder left by a killed process is removed by the next export to
//! the same destination.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use classe_bundle::{path::validate_tree, Manifest};
use iroh_blobs::Hash;

use crate::{ReadError, Store};

/// Exporting failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The bundle is not in the store, or is damaged.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Some file content is still missing.
    #[error("the bundle is not complete in the store ({missing} files missing)")]
    Incomplete {
        /// How many files are incomplete.
        missing: usize,
    },
    /// The destination exists and is not an empty folder.
    #[error("{0} already exists and is not empty; choose another folder or remove it")]
    DestinationExists(String),
    /// The manifest names an unsafe path (refused again here: defence in
    /// depth, in case a store was filled by other means).
    #[error("unsafe path in manifest: {0}")]
    UnsafePath(String),
    /// A file's content in the store does not match its hash (disk error,
    /// crash): nothing was written.
    #[error("\"{path}\" is damaged in your store ({detail}); nothing was written. Fetch the lesson again to repair it, or run `classe verify`")]
    Damaged {
        /// The file's path in the bundle, escaped.
        path: String,
        /// Which bytes.
        detail: String,
    },
    /// Writing failed: disk full, permission denied, ...
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Write {
        path: path.display().to_string(),
        source,
    }
}

/// The staging folder used for `dest` by process `pid`.
fn staging_path(dest: &Path, pid: u32) -> Option<PathBuf> {
    let name = dest.file_name()?.to_str()?;
    Some(dest.with_file_name(format!(".{name}.classe-partial-{pid}")))
}

/// Removes staging folders for `dest` left by processes that no longer run.
fn remove_stale_staging(dest: &Path) {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    let prefix = format!(".{name}.classe-partial-");
    let Ok(entries) = fs::read_dir(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    }) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() || pid == std::process::id() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A failed blob export as a write error naming the file and the cause
/// (the I/O error itself, not iroh-blobs' wrapper around it).
fn blob_export_err(target: &Path, e: iroh_blobs::api::RequestError) -> ExportError {
    ExportError::Write {
        path: target.display().to_string(),
        source: io_cause(&e),
    }
}

/// The operating system's error somewhere inside `e` (iroh-blobs wraps it
/// in layers whose messages say only "Error::Io"), else `e`'s message.
fn io_cause(e: &(dyn std::error::Error + 'static)) -> io::Error {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // Bounded: error chains are short, this only guards a cycle.
    for _ in 0..32 {
        let Some(cur) = next else { break };
        if let Some(io) = cur.downcast_ref::<io::Error>() {
            if let Some(code) = io.raw_os_error() {
                return io::Error::from_raw_os_error(code);
            }
            // `io::Error::source` skips the error it wraps: look at it.
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        next = cur.source();
    }
    io::Error::other(e.to_string())
}

impl Store {
    /// Checks every file against its hash before anything is written: a
    /// damaged store must not produce a folder that looks like the lesson.
    async fn check_before_export(
        &self,
        files: &[classe_bundle::FileEntry],
    ) -> Result<(), ExportError> {
        let mut checked = std::collections::HashSet::new();
        for f in files {
            let hash = Hash::from_bytes(f.hash);
            if f.size == 0 || !checked.insert(hash) {
                continue;
            }
            if let crate::BlobCheck::Damaged { ranges } = self.check_blob(hash).await? {
                return Err(ExportError::Damaged {
                    path: f.path.escape_debug().to_string(),
                    detail: crate::verify::describe_ranges(&ranges),
                });
            }
        }
        Ok(())
    }

    /// Writes the complete bundle `root` to the folder `dest`, which must
    /// not exist or be empty.
    pub async fn export(&self, root: Hash, dest: &Path) -> Result<(), ExportError> {
        let signed = self.manifest(root).await?;
        check_paths(signed.manifest())?;
        let files = &signed.manifest().files;
        let mut missing = 0;
        for f in files {
            if !self.blob_complete(Hash::from_bytes(f.hash), f.size).await? {
                missing += 1;
            }
        }
        if missing > 0 {
            return Err(ExportError::Incomplete { missing });
        }
        self.check_before_export(files).await?;

        let dest = std::path::absolute(dest).map_err(write_err(dest))?;
        match fs::read_dir(&dest) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(ExportError::DestinationExists(dest.display().to_string()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                return Err(ExportError::DestinationExists(dest.display().to_string()))
            }
            Err(e) => return Err(write_err(&dest)(e)),
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(write_err(parent))?;
        }
        remove_stale_staging(&dest);
        let staging = staging_path(&dest, std::process::id())
            .ok_or_else(|| ExportError::UnsafePath(dest.display().to_string()))?;
        let result = self.write_files(root, &staging).await.and_then(|()| {
            // An empty destination folder is replaced; rename cannot
            // replace a non-empty one, so a race loses nothing.
            if dest.is_dir() {
                fs::remove_dir(&dest).map_err(write_err(&dest))?;
            }
            fs::rename(&staging, &dest).map_err(write_err(&dest))
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    async fn write_files(&self, root: Hash, staging: &Path) -> Result<(), ExportError> {
        let signed = self.manifest(root).await?;
        fs::create_dir_all(staging).map_err(write_err(staging))?;
        for f in &signed.manifest().files {
            // Paths were validated: relative, no `..`, `/`-separated.
            let target = f
                .path
                .split('/')
                .fold(staging.to_path_buf(), |p, c| p.join(c));
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(write_err(parent))?;
            }
            if f.size == 0 {
                fs::File::create(&target).map_err(write_err(&target))?;
                continue;
            }
            self.blobs
                .blobs()
                .export(Hash::from_bytes(f.hash), &target)
                .finish()
                .await
                .map_err(|e| blob_export_err(&target, e))?;
            let written = fs::metadata(&target).map_err(write_err(&target))?.len();
            if written != f.size {
                return Err(ExportError::Write {
                    path: target.display().to_string(),
                    source: io::Error::other(format!("wrote {written} bytes, expected {}", f.size)),
                });
            }
        }
        create_empty_dirs(signed.manifest(), staging)
    }
}

/// Refuses a manifest whose files or empty folders name an unsafe path.
fn check_paths(manifest: &Manifest) -> Result<(), ExportError> {
    validate_tree(
        manifest.files.iter().map(|f| f.path.as_str()),
        manifest.dirs.iter().map(String::as_str),
    )
    .map_err(|e| ExportError::UnsafePath(e.to_string()))
}

/// `path` (relative, `/`-separated, validated) under `base`.
fn join_relative(base: &Path, path: &str) -> PathBuf {
    path.split('/').fold(base.to_path_buf(), |p, c| p.join(c))
}

/// Creates the manifest's empty folders (and their parents) under
/// `staging`. The paths are checked again here, so no caller can create a
/// folder outside `staging`.
fn create_empty_dirs(manifest: &Manifest, staging: &Path) -> Result<(), ExportError> {
    check_paths(manifest)?;
    for dir in &manifest.dirs {
        let target = join_relative(staging, dir);
        fs::create_dir_all(&target).map_err(write_err(&target))?;
    }
    Ok(())
}
