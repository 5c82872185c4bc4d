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
    let mut files = HashSet::new();
    let mut folders = HashSet::new();
    for path in paths {
        validate_path(path)?;
        let folded = path.to_lowercase();
        if !files.insert(folded.clone()) {
            return Err(PathError::Duplicate(path.to_string()));
        }
        let mut prefix = String::new();
        for component in folded.split('/').take(folded.split('/').count() - 1) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            folders.insert(prefix.clone());
        }
    }
    if let Some(both) = files.iter().find(|f| folders.contains(*f)) {
        return Err(PathError::FileIsFolder(both.clone()));
    }
    Ok(())
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
}
