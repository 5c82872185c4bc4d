//! Lesson folders to share. Each writer names what it puts in the folder;
//! the bytes come from [`crate::Rng`], so the same arguments give the same
//! folder.

use std::{io, path::Path};

use crate::rng::{seed_of, Rng};

/// Writes `content` to `dir/rel`, creating the folders on the way.
pub fn write_file(dir: &Path, rel: &str, content: &[u8]) -> io::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, content)
}

/// The end-to-end tests' lesson: nested folders, a non-ASCII name, an
/// empty file and `vidéo.bin` of `big` bytes (seed 42). Panics on an I/O
/// error (it is for tests).
pub fn make_lesson(dir: &Path, big: usize) {
    let files: [(&str, &[u8]); 3] = [
        ("README.txt", b"Bonjour la classe\n"),
        (
            "chapitre 1/résumé — été.txt",
            "Les fractions ½ ¾\n".as_bytes(),
        ),
        ("chapitre 1/exercices/vide.txt", b""),
    ];
    for (rel, content) in files {
        write_file(dir, rel, content).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }
    write_file(dir, "vidéo.bin", &crate::pseudo_random(big, 42))
        .unwrap_or_else(|e| panic!("write vidéo.bin: {e}"));
}

/// The namespace tests' lesson: `docs/lisez-moi.txt` naming `tag`, and
/// `video.bin` of `bytes` bytes seeded by `tag`. Panics on an I/O error.
pub fn tagged_lesson(dir: &Path, bytes: usize, tag: &str) {
    write_file(
        dir,
        "docs/lisez-moi.txt",
        format!("Leçon {tag}\n").as_bytes(),
    )
    .and_then(|()| write_file(dir, "video.bin", &crate::pseudo_random(bytes, seed_of(tag))))
    .unwrap_or_else(|e| panic!("cannot write the lesson in {}: {e}", dir.display()));
}

/// `classe demo`'s sample lesson: a README, an exercise sheet and
/// `bytes` bytes of "video" in `parts` files (`vidéo-partie-0.bin`, ...).
pub fn sample_lesson(dir: &Path, bytes: u64, parts: u64) -> io::Result<()> {
    write_file(
        dir,
        "README.txt",
        "Leçon de démonstration: les fractions.\nLisez le cours, puis faites les exercices.\n"
            .as_bytes(),
    )?;
    write_file(
        dir,
        "exercices/série 1.txt",
        "1. Simplifiez 6/8.\n2. Additionnez 1/3 et 1/6.\n".as_bytes(),
    )?;
    let parts = parts.max(1);
    let part = bytes.div_ceil(parts);
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    for i in 0..parts {
        let mut f = io::BufWriter::new(std::fs::File::create(
            dir.join(format!("vidéo-partie-{i}.bin")),
        )?);
        rng.write(&mut f, part)?;
        io::Write::flush(&mut f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tree;

    #[test]
    fn make_lesson_writes_the_tricky_names() {
        let d = tempfile::tempdir().unwrap();
        make_lesson(d.path(), 1000);
        let t = tree(d.path());
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "README.txt",
                "chapitre 1/exercices/vide.txt",
                "chapitre 1/résumé — été.txt",
                "vidéo.bin"
            ]
        );
        assert_eq!(t[1].1.len(), 0);
        assert_eq!(t[3].1, crate::pseudo_random(1000, 42));
    }

    #[test]
    fn tagged_lessons_differ_by_tag() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tagged_lesson(a.path(), 5000, "un");
        tagged_lesson(b.path(), 5000, "deux");
        let (ta, tb) = (tree(a.path()), tree(b.path()));
        assert_eq!(ta.len(), 2);
        assert_eq!(ta[1].1.len(), 5000);
        assert_ne!(ta[1].1, tb[1].1);
    }

    #[test]
    fn sample_lesson_has_its_size() {
        let d = tempfile::tempdir().unwrap();
        sample_lesson(d.path(), 1_000_001, 8).unwrap();
        let t = tree(d.path());
        assert_eq!(t.len(), 10);
        let video: usize = t
            .iter()
            .filter(|(n, _)| n.starts_with("vidéo"))
            .map(|(_, b)| b.len())
            .sum();
        assert_eq!(video, 8 * 1_000_001u64.div_ceil(8) as usize);
    }
}
