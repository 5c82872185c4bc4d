//! Which relative paths a bundle may name.
//!
//! A manifest is written by a teacher but read on a pupil's machine, which
//! may run Linux, macOS or Windows. A path is accepted only if it is safe to
//! create under the output folder on all three: it can never climb out of
//! that folder, never name a device, and never collide with another entry
//! on a case-insensitive file system. The same check runs when sharing (so
//! a teacher learns early) and when fetching (so a pupil never trusts it).

use std::collections::HashSet;

use crate::limits::{MAX_COMPONENT_BYTES, MAX_DEPTH, MAX_PATH_BYTES};

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The empty string.
    #[error("empty path")]
    Empty,
    /// Longer than the limit.
    #[error("path {0:?} is too long")]
    TooLong(String),
    /// Too many folders deep.
    #[error("path {0:?} is nested too deeply")]
    TooDeep(String),
    /// Starts at the root, or with a drive letter.
    #[error("path {0:?} is absolute")]
    Absolute(String),
    /// Contains `.` or `..` or an empty component (`a//b`).
    #[error("path {0:?} contains '.', '..' or an empty component")]
    Traversal(String),
    /// Contains a backslash, NUL, a control character, or a character
    /// Windows cannot store (`<>:"|?*`).
    #[error("path {0:?} contains a forbidden character")]
    ForbiddenChar(String),
    /// A component is a Windows device name (`CON`, `NUL`, `COM1`, ...) or
    /// ends with a dot or a space.
    #[error("path {0:?} names a device or ends a component with '.' or ' '")]
    Reserved(String),
    /// Two entries differ only in letter case, or are the same.
    #[error("path {0:?} appears twice (letter case ignored)")]
    Duplicate(String),
    /// A file and a folder would have the same name.
    #[error("path {0:?} is both a file and a folder")]
    FileIsFolder(String),
    /// A folder listed as empty holds another entry.
    #[error("folder {0:?} is listed as empty but holds another entry")]
    NotEmpty(String),
}

const WINDOWS_DEVICES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM0", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7",
    "COM8", "COM9", "LPT0", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    "CONIN$", "CONOUT$", // Windows also counts superscript digits as digits here.
    "COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³",
];

/// Checks one relative path, with `/` as the separator.
pub fn validate_path(path: &str) -> Result<(), PathError> {
    let own = || path.to_string();
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong(own()));
    }
    if path.starts_with('/') || looks_like_drive(path) {
        return Err(PathError::Absolute(own()));
    }
    if path.chars().any(|c| {
        c == '\\' || c.is_control() || matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*')
    }) {
        return Err(PathError::ForbiddenChar(own()));
    }
    let mut depth = 0;
    for component in path.split('/') {
        depth += 1;
        if component.is_empty() || component == "." || component == ".." {
            return Err(PathError::Traversal(own()));
        }
        if component.len() > MAX_COMPONENT_BYTES {
            return Err(PathError::TooLong(own()));
        }
        if component.ends_with('.') || component.ends_with(' ') || is_device(component) {
            return Err(PathError::Reserved(own()));
        }
    }
    if depth > MAX_DEPTH {
        return Err(PathError::TooDeep(own()));
    }
    Ok(())
}

fn looks_like_drive(path: &str) -> bool {
    let b = path.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

fn is_device(component: &str) -> bool {
    // Windows treats `NUL.txt` and `nul .txt` as the device too.
    let stem = component.split('.').next().unwrap_or(component).trim_end();
    WINDOWS_DEVICES.iter().any(|d| d.eq_ignore_ascii_case(stem))
}

/// Checks every path and the list as a whole: no duplicates (ignoring
/// letter case) and no entry that is both a file and a folder.
pub fn validate_file_list<'a>(paths: impl IntoIterator<Item = &'a str>) -> Result<(), PathError> {
    validate_tree(paths, [])
}

/// Checks a bundle's files and empty folders together: every path passes
/// [`validate_path`], and [`PathSet`] accepts them all (no two entries the
/// same ignoring case, no file that is also a folder, no "empty" folder
/// that holds something).
pub fn validate_tree<'a, 'b>(
    files: impl IntoIterator<Item = &'a str>,
    empty_dirs: impl IntoIterator<Item = &'b str>,
) -> Result<(), PathError> {
    let mut set = PathSet::default();
    for path in files {
        set.add_file(path)?;
    }
    for path in empty_dirs {
        set.add_empty_dir(path)?;
    }
    Ok(())
}

/// The entries of one bundle, as a case-insensitive disk would see them.
///
/// Each `add_*` validates the path, then refuses it if it would collide
/// with an entry already added; the result does not depend on the order
/// of the calls. A share adds entries in sorted order and skips the ones
/// refused, so of two names that differ only in case the first (in byte
/// order) is kept.
#[derive(Debug, Default, Clone)]
pub struct PathSet {
    /// Files, lowercased.
    files: HashSet<String>,
    /// Empty folders, lowercased.
    empty_dirs: HashSet<String>,
    /// Every folder that holds an entry, lowercased.
    folders: HashSet<String>,
}

impl PathSet {
    /// Adds a file.
    pub fn add_file(&mut self, path: &str) -> Result<(), PathError> {
        let folded = self.check(path)?;
        if self.folders.contains(&folded) {
            return Err(PathError::FileIsFolder(path.to_string()));
        }
        self.insert_ancestors(&folded);
        self.files.insert(folded);
        Ok(())
    }

    /// Adds a folder that must stay empty: nothing else may be added
    /// inside it.
    pub fn add_empty_dir(&mut self, path: &str) -> Result<(), PathError> {
        let folded = self.check(path)?;
        if self.folders.contains(&folded) {
            return Err(PathError::NotEmpty(path.to_string()));
        }
        self.insert_ancestors(&folded);
        self.empty_dirs.insert(folded);
        Ok(())
    }

    /// Validates `path` and checks it against the entries so far, without
    /// the "is it already a folder" check, which depends on the kind.
    fn check(&self, path: &str) -> Result<String, PathError> {
        validate_path(path)?;
        let folded = path.to_lowercase();
        if self.files.contains(&folded) || self.empty_dirs.contains(&folded) {
            return Err(PathError::Duplicate(path.to_string()));
        }
        for ancestor in ancestors(&folded) {
            if self.files.contains(ancestor) {
                return Err(PathError::FileIsFolder(path.to_string()));
            }
            if self.empty_dirs.contains(ancestor) {
                return Err(PathError::NotEmpty(path.to_string()));
            }
        }
        Ok(folded)
    }

    fn insert_ancestors(&mut self, folded: &str) {
        for ancestor in ancestors(folded) {
            self.folders.insert(ancestor.to_string());
        }
    }
}

/// `a/b/c` gives `a` and `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths_are_accepted() {
        for path in [
            "a.txt",
            "cours/chapitre 1/exercice.pdf",
            "Élève/résumé — été.md",
            "数学/第一课.txt",
            ".hidden",
            "a..b",
            "con-tent.txt",
        ] {
            assert_eq!(validate_path(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let long_component = "x".repeat(256);
        let long_path = ["abcdefgh"; 120].join("/");
        let deep = ["d"; 40].join("/");
        type Expect = fn(&PathError) -> bool;
        let table: &[(&str, Expect)] = &[
            ("", |e| matches!(e, PathError::Empty)),
            ("..", |e| matches!(e, PathError::Traversal(_))),
            ("../x", |e| matches!(e, PathError::Traversal(_))),
            ("a/../../x", |e| matches!(e, PathError::Traversal(_))),
            ("a/..", |e| matches!(e, PathError::Traversal(_))),
            ("./a", |e| matches!(e, PathError::Traversal(_))),
            ("a//b", |e| matches!(e, PathError::Traversal(_))),
            ("a/", |e| matches!(e, PathError::Traversal(_))),
            ("/etc/passwd", |e| matches!(e, PathError::Absolute(_))),
            ("C:/Windows", |e| matches!(e, PathError::Absolute(_))),
            ("c:x", |e| matches!(e, PathError::Absolute(_))),
            ("a\\..\\b", |e| matches!(e, PathError::ForbiddenChar(_))),
            ("a\0b", |e| matches!(e, PathError::ForbiddenChar(_))),
            ("a\nb", |e| matches!(e, PathError::ForbiddenChar(_))),
            ("file:stream", |e| matches!(e, PathError::ForbiddenChar(_))),
            ("what?", |e| matches!(e, PathError::ForbiddenChar(_))),
            ("CON", |e| matches!(e, PathError::Reserved(_))),
            ("dir/nul.txt", |e| matches!(e, PathError::Reserved(_))),
            ("com1", |e| matches!(e, PathError::Reserved(_))),
            // Found by the fuzz path oracle: Windows treats these as COM1
            // and LPT3 too.
            ("COM¹.txt", |e| matches!(e, PathError::Reserved(_))),
            ("dir/lpt³", |e| matches!(e, PathError::Reserved(_))),
            ("trailing.", |e| matches!(e, PathError::Reserved(_))),
            ("trailing ", |e| matches!(e, PathError::Reserved(_))),
            (&long_component, |e| matches!(e, PathError::TooLong(_))),
            (&long_path, |e| matches!(e, PathError::TooLong(_))),
            (&deep, |e| matches!(e, PathError::TooDeep(_))),
        ];
        for (path, expected) in table {
            let err = validate_path(path).expect_err(path);
            assert!(expected(&err), "{path:?} gave {err:?}");
        }
    }

    #[test]
    fn duplicate_and_conflicting_lists_are_refused() {
        assert!(validate_file_list(["a/b.txt", "a/c.txt", "d"]).is_ok());
        assert!(matches!(
            validate_file_list(["a.txt", "a.txt"]),
            Err(PathError::Duplicate(_))
        ));
        assert!(matches!(
            validate_file_list(["A.txt", "a.TXT"]),
            Err(PathError::Duplicate(_))
        ));
        assert!(matches!(
            validate_file_list(["a", "a/b"]),
            Err(PathError::FileIsFolder(_))
        ));
        assert!(matches!(
            validate_file_list(["x/y/z", "X/Y"]),
            Err(PathError::FileIsFolder(_))
        ));
        assert!(matches!(
            validate_file_list(["ok", "../bad"]),
            Err(PathError::Traversal(_))
        ));
    }

    #[test]
    fn empty_folders_follow_the_path_rules() {
        assert!(validate_tree(["a/b.txt"], ["c", "a/d/e", "à rendre"]).is_ok());
        for bad in [
            "../x",
            "a/../../b",
            "/abs",
            "C:/x",
            "a//b",
            "nul",
            "x\ny",
            "a\\b",
            "",
        ] {
            assert!(validate_tree(["f"], [bad]).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(
            validate_tree([], ["../x"]),
            Err(PathError::Traversal(_))
        ));
    }

    #[test]
    fn empty_folders_cannot_collide_or_hold_entries() {
        // The same as a file, or as another empty folder, ignoring case.
        assert!(matches!(
            validate_tree(["a"], ["A"]),
            Err(PathError::Duplicate(_))
        ));
        assert!(matches!(
            validate_tree([], ["x", "X"]),
            Err(PathError::Duplicate(_))
        ));
        // An "empty" folder that holds a file or another folder.
        assert!(matches!(
            validate_tree(["d/f"], ["D"]),
            Err(PathError::NotEmpty(_))
        ));
        assert!(matches!(
            validate_tree([], ["d", "d/e"]),
            Err(PathError::NotEmpty(_))
        ));
        assert!(matches!(
            validate_tree([], ["d/e", "d"]),
            Err(PathError::NotEmpty(_))
        ));
        // A folder inside a file.
        assert!(matches!(
            validate_tree(["f"], ["F/g"]),
            Err(PathError::FileIsFolder(_))
        ));
    }

    #[test]
    fn a_path_set_keeps_the_first_of_two_case_twins() {
        let mut set = PathSet::default();
        assert!(set.add_file("Cours.txt").is_ok());
        assert!(matches!(
            set.add_file("cours.TXT"),
            Err(PathError::Duplicate(_))
        ));
        assert!(set.add_file("Dossier/a").is_ok());
        // Another case of a folder that holds files: merged on a
        // case-insensitive disk, nothing is lost, so accepted.
        assert!(set.add_file("dossier/b").is_ok());
        assert!(matches!(
            set.add_file("DOSSIER"),
            Err(PathError::FileIsFolder(_))
        ));
        assert!(matches!(
            set.add_empty_dir("dossier"),
            Err(PathError::NotEmpty(_))
        ));
    }
}

/// A folder name for a lesson from its title: the title itself when it is
/// a safe single path component, with `/ \\ < > : " | ? *` and control
/// characters replaced by `_` otherwise, and `lesson-<first 8 hex digits
/// of the root>` when nothing safe is left.
pub fn folder_name(title: &str, root: &[u8; 32]) -> String {
    let cleaned: String = title
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() || "<>:\"|?*".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim().trim_end_matches('.').trim().to_string();
    if !cleaned.is_empty() && validate_path(&cleaned).is_ok() {
        cleaned
    } else {
        format!("lesson-{}", &data_encoding::HEXLOWER.encode(root)[..8])
    }
}

#[cfg(test)]
mod folder_name_tests {
    use super::folder_name;

    #[test]
    fn folder_names_are_safe() {
        let root = [0xab; 32];
        let fallback = "lesson-abababab";
        assert_eq!(folder_name("Les fractions", &root), "Les fractions");
        assert_eq!(folder_name("a/b", &root), "a_b");
        assert_eq!(folder_name("a\\b:c", &root), "a_b_c");
        assert_eq!(folder_name("..", &root), fallback);
        assert_eq!(folder_name("CON", &root), fallback);
        assert_eq!(folder_name("  ", &root), fallback);
    }
}
