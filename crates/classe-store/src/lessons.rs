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
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        write_atomic(path, &json)
    }

    pub fn key(author: &str, source: &Path) -> String {
        format!("{author}\n{}", source.display())
    }
}

/// Writes `bytes` to `path` through a temporary file renamed into place,
/// synced first: after a crash the file is either the old or the new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
