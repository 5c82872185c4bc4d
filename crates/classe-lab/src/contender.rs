//! The binary under test, pinned for the length of a lab run.
//!
//! Others rebuild `classe` in shared target folders while a lab runs for
//! half an hour; a run that started a process from the path after a
//! rebuild would quietly measure a different program. So the lab copies
//! the binary into its own temporary folder once, runs that copy for every
//! scenario and class size, and records what it was: the original path,
//! its SHA-256, its modification time and `--version`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What was measured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClasseInfo {
    /// Where the binary was taken from.
    pub path: String,
    /// SHA-256 of the copy that ran (from `sha256sum`, if present).
    pub sha256: Option<String>,
    /// Modification time of the binary (its build time), UTC.
    pub built: Option<String>,
    /// `classe --version`.
    pub version: Option<String>,
    /// `git rev-parse --short HEAD` of the folder the lab ran in, with
    /// `+dirty` when tracked files had changes: a hint of the source, not
    /// proof (the binary may have been built from another tree).
    pub tree: Option<String>,
}

/// A private copy of the binary; removed on drop.
#[derive(Debug)]
pub struct Pinned {
    dir: tempfile::TempDir,
    path: PathBuf,
    /// What it is.
    pub info: ClasseInfo,
}

impl Pinned {
    /// Copies `bin` into a new folder under `root`.
    pub fn take(bin: &Path, root: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("classe-lab-bin-")
            .tempdir_in(root)
            .with_context(|| format!("cannot create a folder in {}", root.display()))?;
        crate::register_path(dir.path());
        let path = dir.path().join("classe");
        std::fs::copy(bin, &path)
            .with_context(|| format!("cannot copy the classe binary {}", bin.display()))?;
        let built = std::fs::metadata(bin)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| crate::run::rfc3339(d.as_secs()));
        let info = ClasseInfo {
            path: bin.display().to_string(),
            sha256: command_word("sha256sum", &[path.as_os_str()]),
            built,
            version: std::process::Command::new(&path)
                .arg("--version")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
            tree: git_tree(),
        };
        Ok(Pinned { dir, path, info })
    }

    /// The copy to run.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        crate::unregister_path(self.dir.path());
    }
}

fn command_word(cmd: &str, args: &[&std::ffi::OsStr]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
}

fn git_tree() -> Option<String> {
    let head = command_word(
        "git",
        &["rev-parse".as_ref(), "--short".as_ref(), "HEAD".as_ref()],
    )?;
    let status = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()?;
    let dirty = !status.stdout.is_empty();
    Some(if dirty { format!("{head}+dirty") } else { head })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_copy_is_identical_and_goes_away() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("fake");
        std::fs::write(&bin, b"#!/bin/sh\necho fake 1.0\n").unwrap();
        let p = Pinned::take(&bin, root.path()).unwrap();
        assert_eq!(
            std::fs::read(p.path()).unwrap(),
            std::fs::read(&bin).unwrap()
        );
        assert_eq!(p.info.path, bin.display().to_string());
        assert!(p.info.built.as_deref().is_some_and(|b| b.ends_with('Z')));
        let dir = p.path().parent().unwrap().to_path_buf();
        drop(p);
        assert!(!dir.exists());
    }
}
