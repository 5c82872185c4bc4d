//! The seed node of a school (`classe follow --school KEY`): mirrors the
//! lessons of every teacher the school currently certifies, countersigns
//! each lesson it mirrors (the time it first held it, in its signed
//! statement), serves the school's newest bulletin (gossip and DHT), and
//! stops serving a revoked teacher's lessons that it had not
//! countersigned before the revocation.
//!
//! The decisions are [`classe_bundle::anchor`]'s; this module keeps the
//! seed's state (the school book on disk, which teachers it learned of)
//! and says what to publish and what to withhold.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use classe_bundle::{
    anchor::{decide, AnchorError, Decision, SchoolBook},
    school::{Bulletin, Credentials, Seen, SignedCertificate, ROLE_MIRROR},
    AuthorKey, AuthorSecret, Manifest,
};
use iroh_blobs::Hash;

/// How a seed follows schools.
#[derive(Clone, Debug)]
pub struct SchoolSeeding {
    /// The schools followed (each must be trusted in `book_dir`).
    pub schools: Vec<AuthorKey>,
    /// The home's school book (`<home>/schools`), reread when another
    /// process (`classe trust update`) changes it.
    pub book_dir: PathBuf,
    /// This node's certificate with the mirror role and its author key:
    /// without it the seed mirrors but cannot countersign.
    pub signer: Option<Arc<(SignedCertificate, AuthorSecret)>>,
    /// How often the statement is signed again (its freshness).
    pub statement_every: Duration,
}

/// Seconds since the epoch, now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The seed's school state.
pub(crate) struct Schools {
    config: SchoolSeeding,
    book: SchoolBook,
    fingerprint: u64,
    /// Teachers learned from certified announcements and held lessons.
    pub(crate) teachers: HashSet<AuthorKey>,
    /// What the seed holds of certified teachers: root, author, manifest.
    held: Vec<(Hash, Manifest)>,
    /// The revocation sequence last published for each followed school.
    published: std::collections::HashMap<AuthorKey, u64>,
}

impl Schools {
    pub(crate) fn load(config: SchoolSeeding) -> Result<Self, AnchorError> {
        let book = SchoolBook::load(config.book_dir.clone())?;
        let fingerprint = fingerprint(&config.book_dir);
        Ok(Self {
            config,
            book,
            fingerprint,
            teachers: HashSet::new(),
            held: Vec::new(),
            published: std::collections::HashMap::new(),
        })
    }

    /// The schools followed.
    pub(crate) fn followed(&self) -> &[AuthorKey] {
        &self.config.schools
    }

    fn follows(&self, school: &AuthorKey) -> bool {
        self.config.schools.contains(school)
    }

    /// A held bundle (at start, or just mirrored): a certified teacher's
    /// is remembered, so a later revocation can withhold it.
    pub(crate) fn hold(&mut self, root: Hash, manifest: &Manifest) {
        if let Some(c) = &manifest.credentials {
            if self.follows(&c.cert.cert.school) {
                self.teachers.insert(manifest.author);
                self.held.push((root, manifest.clone()));
            }
        }
    }

    /// Is a certified announcement worth mirroring: a followed school, a
    /// valid certificate for its signer, not revoked?
    pub(crate) fn accepts(
        &self,
        school: &AuthorKey,
        creds: &Credentials,
        author: &AuthorKey,
        root: [u8; 32],
    ) -> Result<(), String> {
        if !self.follows(school) {
            return Err("a school this seed does not follow".into());
        }
        self.book
            .judge_credentials(creds, author, root, unix_now())
            .map(|_| ())
            .map_err(|r| r.to_string())
    }

    /// The mirror's trust decision on a manifest: a followed author or a
    /// certified teacher of a followed school, and revoked by none.
    pub(crate) fn trusts(
        &self,
        manifest: &Manifest,
        root: Hash,
        followed: bool,
    ) -> Result<(), String> {
        let certified_here = manifest
            .credentials
            .as_ref()
            .is_some_and(|c| self.follows(&c.cert.cert.school));
        match decide(
            &self.book,
            followed,
            manifest,
            *root.as_bytes(),
            unix_now(),
            u64::MAX,
        ) {
            Decision::Certified(_) if certified_here || followed => Ok(()),
            Decision::Direct => Ok(()),
            Decision::Refused(r) => Err(r.to_string()),
            Decision::Certified(_) | Decision::Unknown => {
                Err("not certified by a school this seed follows".into())
            }
        }
    }

    /// After a mirror: countersign a certified lesson and sign a fresh
    /// statement. Returns the bulletin to publish.
    pub(crate) fn mirrored(
        &mut self,
        root: Hash,
        manifest: &Manifest,
    ) -> Option<(AuthorKey, Bulletin)> {
        self.hold(root, manifest);
        let school = manifest.credentials.as_ref()?.cert.cert.school;
        if !self.follows(&school) {
            return None;
        }
        let seen = Seen {
            author: manifest.author,
            lesson_id: manifest.lesson_id,
            version: manifest.version,
            root: *root.as_bytes(),
            first_seen: unix_now(),
        };
        if let Err(e) = self.book.countersign(&school, seen) {
            tracing::warn!("cannot keep the countersignature: {e}");
        }
        self.statement(&school)
    }

    /// A fresh statement for `school`, if this node may sign one; else
    /// the bulletin held (to serve it all the same).
    fn statement(&mut self, school: &AuthorKey) -> Option<(AuthorKey, Bulletin)> {
        let signed = match &self.config.signer {
            Some(s) if s.0.cert.school == *school && s.0.cert.roles & ROLE_MIRROR != 0 => {
                match self.book.sign_statement(school, &s.0, &s.1, unix_now()) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!("cannot sign the school statement: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let bulletin = signed.or_else(|| self.book.get(school).map(|s| s.bulletin.clone()))?;
        (bulletin != Bulletin::default()).then_some((*school, bulletin))
    }

    /// Every followed school's bulletin, with fresh statements: at start
    /// and every `statement_every`.
    pub(crate) fn statements(&mut self) -> Vec<(AuthorKey, Bulletin)> {
        let schools = self.config.schools.clone();
        schools.iter().filter_map(|s| self.statement(s)).collect()
    }

    /// A bulletin from the network: kept if newer; returns the bundles to
    /// stop serving.
    pub(crate) fn absorb(&mut self, school: AuthorKey, bulletin: Bulletin) -> Vec<Hash> {
        match self.book.absorb(school, bulletin) {
            Ok(true) => self.revoked_held(),
            Ok(false) => Vec::new(),
            Err(e) => {
                tracing::debug!("school bulletin not kept: {e}");
                Vec::new()
            }
        }
    }

    /// The followed schools whose revocation list is newer than the one
    /// last published (however it arrived: the disk, or merged in by one
    /// of the seed's own writes), with its sequence; marked published.
    pub(crate) fn unpublished(&mut self) -> Vec<(AuthorKey, u64)> {
        let mut out = Vec::new();
        for s in &self.config.schools {
            let seq = self
                .book
                .get(s)
                .and_then(|st| st.bulletin.revocations.as_ref())
                .map_or(0, |r| r.list.seq);
            let last = self.published.entry(*s).or_insert(0);
            if seq > *last {
                *last = seq;
                out.push((*s, seq));
            }
        }
        out
    }

    /// Rereads the school book if its files changed (`classe trust
    /// update` beside the running seed, or the seed's own writes, which
    /// merge with what is on disk); returns the bundles to stop serving.
    pub(crate) fn reload_if_changed(&mut self) -> Option<Vec<Hash>> {
        let now = fingerprint(&self.config.book_dir);
        if now == self.fingerprint {
            return None;
        }
        self.fingerprint = now;
        match self.book.refresh() {
            Ok(()) => Some(self.revoked_held()),
            Err(e) => {
                tracing::warn!("cannot reread the school book: {e}");
                None
            }
        }
    }

    /// Held lessons that the school's revocations now refuse.
    fn revoked_held(&mut self) -> Vec<Hash> {
        let mut out = Vec::new();
        let book = &self.book;
        self.held.retain(|(root, m)| {
            let refused = matches!(
                decide(book, false, m, *root.as_bytes(), unix_now(), u64::MAX),
                Decision::Refused(_)
            );
            if refused {
                out.push(*root);
            }
            !refused
        });
        let still: HashSet<AuthorKey> = self.held.iter().map(|(_, m)| m.author).collect();
        let book = &self.book;
        self.teachers
            .retain(|t| still.contains(t) || book.revoked_key(t).is_none());
        out
    }
}

/// Sizes and modification times of the book's files: changes when any
/// process writes it.
fn fingerprint(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut sum = 0u64;
    for e in entries.flatten() {
        if let Ok(meta) = e.metadata() {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64);
            sum = sum
                .wrapping_add(mtime)
                .wrapping_add(meta.len().rotate_left(17));
        }
    }
    sum
}
