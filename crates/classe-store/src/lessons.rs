//! Which source folder became which lesson.
//!
//! Sharing the same folder again keeps its lesson id; a changed folder gets
//! the next version; an unchanged folder gives back the same bundle. The
//! record is a small JSON file next to the blobs, keyed by the canonical
//! source path and the author key.

use std::{collections::BTreeMap, fs, io, path::Path};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct LessonRecord {
    /// Hex lesson id.
    pub lesson_id: String,
    pub version: u64,
    /// Hex root of the last bundle made from this source.
    pub root: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Lessons {
    /// key: "<author>\n<canonical source path>"
    pub by_source: BTreeMap<String, LessonRecord>,
}

impl Lessons {
    pub fn load(path: &Path) -> io::Result<Self> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        fs::write(&tmp, json)?;
        fs::rename(tmp, path)
    }

    pub fn key(author: &str, source: &Path) -> String {
        format!("{author}\n{}", source.display())
    }
}
