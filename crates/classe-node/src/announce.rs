//! Announcing lessons: signing "version V of lesson L is bundle R", handing
//! it to the control plane, and keeping what is known in a file so that a
//! restart re-announces it and recognises a replay of something older.
//!
//! The control actor owns the one [`classe_bundle::Book`] of latest
//! announcements; the file is a copy of it, written whole after each change
//! on a blocking thread.

use std::path::{Path, PathBuf};

use classe_bundle::{Announcement, AuthorSecret, Manifest, SignedAnnouncement};
use iroh_blobs::Hash;

use crate::Node;

/// The file of signed announcements, one per line.
#[derive(Debug, Clone)]
pub struct AnnouncementLog {
    path: PathBuf,
}

/// Announcing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The announcement could not be signed or encoded.
    #[error("cannot sign the announcement")]
    Sign(#[from] classe_bundle::announce::AnnounceError),
    /// The file of announcements could not be written.
    #[error("cannot write {path}")]
    Save {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl AnnouncementLog {
    /// The log kept in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Announcements kept from earlier runs. A missing file is empty;
    /// lines that no longer verify are skipped with a warning.
    pub fn load(&self) -> Vec<SignedAnnouncement> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Vec::new();
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| match SignedAnnouncement::from_text(l) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!("{}: skipped a line: {e}", self.path.display());
                    None
                }
            })
            .collect()
    }

    /// Replaces the file with the latest version of each lesson in `all`,
    /// by rename (a crash leaves the old file or the new), on a blocking
    /// thread.
    pub async fn save(&self, all: Vec<SignedAnnouncement>) -> Result<(), PublishError> {
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut book = classe_bundle::Book::default();
            for a in all {
                book.offer(a);
            }
            let text: String = book.all().map(|a| format!("{}\n", a.to_text())).collect();
            write_atomic(&path, text.as_bytes())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        written.map_err(|source| PublishError::Save {
            path: self.path.display().to_string(),
            source,
        })
    }
}

/// Writes a small file by rename, so a crash leaves the old or the new. The
/// temporary name carries our pid: two processes writing at once must not
/// share one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path))
}

impl Node {
    /// Signs an announcement of `manifest`'s version as bundle `root`,
    /// held and served by this node; publishes it on the author's gossip
    /// topic and in their catch-up record (the school's seed node and
    /// pupils' inboxes learn of it), and keeps the control plane's book in
    /// `log`. Without a control plane there is nobody to tell: Ok(false).
    pub async fn announce(
        &self,
        secret: &AuthorSecret,
        root: Hash,
        manifest: &Manifest,
        log: &AnnouncementLog,
    ) -> Result<bool, PublishError> {
        let Some(control) = self.control() else {
            return Ok(false);
        };
        let announcement = Announcement {
            author: secret.public(),
            lesson_id: manifest.lesson_id,
            version: manifest.version,
            root: *root.as_bytes(),
            title: manifest.title.clone(),
            unix_secs: manifest.created_unix_secs,
            providers: vec![self.provider_info()],
        };
        let signed = SignedAnnouncement::sign(announcement, secret)?;
        // A certified teacher also tells the school's topic, where the
        // school's seed node hears of teachers it was never told about.
        if let Some(creds) = &manifest.credentials {
            control.announce_certified(creds.clone(), &signed).await;
        }
        control.announce(signed).await;
        // Commands reach the actor in order: the book now holds it.
        log.save(control.book().await).await?;
        Ok(true)
    }
}
