//! The lesson: F bytes of pseudo-random data in one or more files, made
//! from a seed so that runs are repeatable, and the check that a pupil's
//! folder holds exactly that.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// A lesson folder on disk.
#[derive(Debug)]
pub struct Lesson {
    dir: tempfile::TempDir,
    files: Vec<(String, u64)>,
}

/// Most files one lesson may have.
pub const MAX_FILES: usize = 1000;

impl Lesson {
    /// Writes `total` bytes split over `files` files into a new folder
    /// under `root`. The same `seed` gives the same bytes.
    pub fn create(root: &Path, total: u64, files: usize, seed: u64) -> Result<Self> {
        if files == 0 || files > MAX_FILES || (files as u64) > total {
            bail!("a lesson needs 1..={MAX_FILES} files of at least one byte each");
        }
        let dir = tempfile::Builder::new()
            .prefix("classe-lab-lesson-")
            .tempdir_in(root)
            .with_context(|| format!("cannot create a folder in {}", root.display()))?;
        crate::register_path(dir.path());
        let mut rng = classe_testkit::Rng::new(seed);
        let mut list = Vec::with_capacity(files);
        let base = total / files as u64;
        for i in 0..files {
            let size = if i + 1 == files {
                total - base * (files as u64 - 1)
            } else {
                base
            };
            let name = if files == 1 {
                "lesson.bin".to_string()
            } else {
                format!("lesson-{:03}.bin", i + 1)
            };
            let path = dir.path().join(&name);
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            );
            rng.write(&mut f, size)?;
            f.flush()?;
            list.push((name, size));
        }
        Ok(Lesson { dir, files: list })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// File names (relative) and sizes.
    pub fn files(&self) -> &[(String, u64)] {
        &self.files
    }

    /// Total size in bytes.
    pub fn total(&self) -> u64 {
        self.files.iter().map(|(_, s)| s).sum()
    }

    /// Checks that `out` holds exactly the lesson's files with the same
    /// bytes. The error says what differs.
    pub fn verify(&self, out: &Path) -> Result<(), String> {
        let mut found = Vec::new();
        list_files(out, out, &mut found)
            .map_err(|e| format!("cannot read {}: {e}", out.display()))?;
        found.sort();
        let mut want: Vec<String> = self.files.iter().map(|(n, _)| n.clone()).collect();
        want.sort();
        if found != want {
            return Err(format!("files differ: expected {want:?}, found {found:?}"));
        }
        for (name, size) in &self.files {
            let a = self.dir.path().join(name);
            let b = out.join(name);
            let len = std::fs::metadata(&b)
                .map_err(|e| format!("{name}: {e}"))?
                .len();
            if len != *size {
                return Err(format!("{name}: {len} bytes, expected {size}"));
            }
            if !same_bytes(&a, &b).map_err(|e| format!("{name}: {e}"))? {
                return Err(format!("{name}: content differs from the source"));
            }
        }
        Ok(())
    }
}

impl Drop for Lesson {
    fn drop(&mut self) {
        crate::unregister_path(self.dir.path());
    }
}

fn list_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let path: PathBuf = entry.path();
        if ty.is_dir() {
            list_files(base, &path, out)?;
        } else {
            let rel = path.strip_prefix(base).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    let mut fa = std::io::BufReader::new(std::fs::File::open(a)?);
    let mut fb = std::io::BufReader::new(std::fs::File::open(b)?);
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lessons_are_repeatable_and_verify() {
        let root = tempfile::tempdir().unwrap();
        let a = Lesson::create(root.path(), 3_000_001, 3, 7).unwrap();
        let b = Lesson::create(root.path(), 3_000_001, 3, 7).unwrap();
        assert_eq!(a.total(), 3_000_001);
        assert_eq!(a.files().len(), 3);
        // Same seed, same bytes: b's folder is a valid copy of a.
        a.verify(b.dir()).unwrap();
        let c = Lesson::create(root.path(), 3_000_001, 3, 8).unwrap();
        assert!(a.verify(c.dir()).unwrap_err().contains("differs"));
    }

    #[test]
    fn verify_names_what_is_wrong() {
        let root = tempfile::tempdir().unwrap();
        let a = Lesson::create(root.path(), 1000, 1, 1).unwrap();
        let out = tempfile::tempdir().unwrap();
        assert!(a.verify(out.path()).unwrap_err().contains("files differ"));
        std::fs::write(out.path().join("lesson.bin"), b"short").unwrap();
        assert!(a.verify(out.path()).unwrap_err().contains("5 bytes"));
        std::fs::copy(a.dir().join("lesson.bin"), out.path().join("lesson.bin")).unwrap();
        a.verify(out.path()).unwrap();
        std::fs::write(out.path().join("extra"), b"x").unwrap();
        assert!(a.verify(out.path()).is_err());
    }
}
