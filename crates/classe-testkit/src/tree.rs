//! Every regular file under a folder with its bytes, to compare a copy
//! with its source.

use std::{io, path::Path};

/// Relative path (with `/`) and content of each regular file, sorted.
pub type Tree = Vec<(String, Vec<u8>)>;

/// Every regular file under `root` (symbolic links are not followed; what
/// is neither a file nor a folder is left out), sorted by path.
pub fn try_tree(root: &Path) -> io::Result<Tree> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, std::fs::read(&path)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// As [`try_tree`]; panics on an I/O error (for tests).
pub fn tree(root: &Path) -> Tree {
    try_tree(root).unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
}

/// Whether `a` and `b` hold the same files with the same bytes; false if
/// either cannot be read.
pub fn same_tree(a: &Path, b: &Path) -> bool {
    matches!((try_tree(a), try_tree(b)), (Ok(x), Ok(y)) if x == y)
}

/// Panics unless `got` holds exactly the files of `want` with the same
/// bytes; the message starts with `who` and names the first difference.
pub fn assert_same_tree(want: &Path, got: &Path, who: &str) {
    let (a, b) = (tree(want), tree(got));
    let names = |t: &Tree| t.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "{who}: not the same files");
    for ((p, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{who}: {p} differs");
    }
}

/// Inverts `len` bytes at `offset` of `path`, in place (and synced), as
/// a failing disk or a tamperer would. Panics on an I/O error.
pub fn flip_bytes(path: &Path, offset: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let flip = || -> io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        for b in &mut buf {
            *b = !*b;
        }
        file.write_all_at(&buf, offset)?;
        file.sync_all()
    };
    flip().unwrap_or_else(|e| panic!("cannot flip bytes in {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lesson::write_file;

    #[test]
    fn same_tree_sees_content_names_and_extra_files() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for d in [a.path(), b.path()] {
            write_file(d, "x/y.txt", b"1").unwrap();
            write_file(d, "z", b"22").unwrap();
        }
        assert!(same_tree(a.path(), b.path()));
        assert_same_tree(a.path(), b.path(), "copy");
        write_file(b.path(), "z", b"23").unwrap();
        assert!(!same_tree(a.path(), b.path()));
        write_file(b.path(), "z", b"22").unwrap();
        write_file(b.path(), "x/extra", b"").unwrap();
        assert!(!same_tree(a.path(), b.path()));
        assert!(!same_tree(a.path(), &b.path().join("missing")));
    }

    #[test]
    fn flip_bytes_inverts_only_the_range() {
        let d = tempfile::tempdir().unwrap();
        write_file(d.path(), "f", &[0, 1, 2, 3]).unwrap();
        flip_bytes(&d.path().join("f"), 1, 2);
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), [0, !1, !2, 3]);
    }

    #[test]
    #[should_panic(expected = "copy: z differs")]
    fn assert_same_tree_names_the_file() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_file(a.path(), "z", b"1").unwrap();
        write_file(b.path(), "z", b"2").unwrap();
        assert_same_tree(a.path(), b.path(), "copy");
    }
}
