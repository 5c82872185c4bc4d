//! The trust store: which authors a pupil accepts.
//!
//! A plain text file, one author per line: the key, then an optional name.
//! Lines starting with `#` are comments. Human-editable on purpose: a school
//! IT person can push one file to every machine.

use std::{fs, io, path::PathBuf};

use crate::keys::{AuthorKey, ParseKeyError};

/// Reading or writing the trust file failed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Reading or writing failed.
    #[error("cannot access trust file {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line is not a key.
    #[error("trust file {path}, line {line}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// Why.
        #[source]
        source: ParseKeyError,
    },
}

/// The authors this user trusts, with optional names.
#[derive(Debug, Clone)]
pub struct TrustStore {
    path: PathBuf,
    entries: Vec<(AuthorKey, String)>,
}

impl TrustStore {
    /// Loads the file at `path`; a missing file is an empty store.
    pub fn load(path: PathBuf) -> Result<Self, TrustError> {
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(TrustError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Self::parse(path, &text)
    }

    /// Parses the content of a trust file; `path` names it in errors and
    /// is where [`TrustStore::save`] writes.
    pub(crate) fn parse(path: PathBuf, text: &str) -> Result<Self, TrustError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, name) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let key = key.parse().map_err(|source| TrustError::Parse {
                path: path.display().to_string(),
                line: i + 1,
                source,
            })?;
            entries.push((key, clean_name(name)));
        }
        Ok(Self { path, entries })
    }

    /// Is this author trusted?
    pub fn contains(&self, key: &AuthorKey) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    /// The name given to a trusted author, if any.
    pub fn name(&self, key: &AuthorKey) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, n)| n.as_str())
            .filter(|n| !n.is_empty())
    }

    /// All entries, in file order.
    pub fn entries(&self) -> &[(AuthorKey, String)] {
        &self.entries
    }

    /// Adds or renames an author. Returns false if it was already there
    /// with that name.
    pub fn add(&mut self, key: AuthorKey, name: &str) -> bool {
        let name = clean_name(name);
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) if *old == name => false,
            Some((_, old)) => {
                *old = name;
                true
            }
            None => {
                self.entries.push((key, name));
                true
            }
        }
    }

    /// Removes an author. Returns whether it was there.
    pub fn remove(&mut self, key: &AuthorKey) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(k, _)| k != key);
        before != self.entries.len()
    }

    /// The file's content as [`TrustStore::save`] writes it.
    pub(crate) fn to_text(&self) -> String {
        let mut text = String::from("# Authors whose lessons classe accepts: key, then a name.\n");
        for (key, name) in &self.entries {
            text.push_str(&format!("{key} {name}\n"));
        }
        text
    }

    /// Writes the file atomically.
    pub fn save(&self) -> Result<(), TrustError> {
        let err = |source| TrustError::Io {
            path: self.path.display().to_string(),
            source,
        };
        if let Some(parent) = self.path.parent() {
            fs::create_dir_all(parent).map_err(err)?;
        }
        write_atomic(&self.path, self.to_text().as_bytes()).map_err(err)
    }
}

/// Writes `bytes` to `path` through a temporary file of this process and
/// a rename: readers see the old file or the new one, never half.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    // A name of our own: two processes writing at once must not share one.
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// A name as kept and shown: a tab becomes a space, other control
/// characters (a terminal escape) are dropped, and the ends are trimmed.
pub(crate) fn clean_name(name: &str) -> String {
    let name: String = name
        .chars()
        .filter_map(|c| match c {
            c if c.is_control() && c.is_whitespace() => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect();
    name.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::AuthorSecret;

    #[test]
    fn trust_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust");
        let a = AuthorSecret::generate().public();
        let b = AuthorSecret::generate().public();
        let mut store = TrustStore::load(path.clone()).unwrap();
        assert!(!store.contains(&a));
        assert!(store.add(a, "Mme Dupont"));
        assert!(store.add(b, ""));
        assert!(!store.add(b, ""));
        store.save().unwrap();
        let mut again = TrustStore::load(path.clone()).unwrap();
        assert!(again.contains(&a) && again.contains(&b));
        assert_eq!(again.name(&a), Some("Mme Dupont"));
        assert!(again.remove(&a));
        assert!(!again.remove(&a));
        again.save().unwrap();
        assert!(!TrustStore::load(path).unwrap().contains(&a));
    }

    #[test]
    fn names_from_the_file_carry_no_control_characters() {
        // Found by fuzzing: a name read from the file kept its tabs and
        // terminal escapes (which `add` removes), and printed them as is.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust");
        let a = AuthorSecret::generate().public();
        let b = AuthorSecret::generate().public();
        fs::write(&path, format!("{a} Mme\tDurand \n{b} x\u{1b}[2Jy\n")).unwrap();
        let store = TrustStore::load(path).unwrap();
        assert_eq!(store.name(&a), Some("Mme Durand"));
        assert_eq!(store.name(&b), Some("x[2Jy"));
    }

    #[test]
    fn damaged_trust_file_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust");
        fs::write(&path, "# comment\n\nnot-a-key someone\n").unwrap();
        match TrustStore::load(path) {
            Err(TrustError::Parse { line, .. }) => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }
    }
}
