//! What a node knows of the schools it trusts, and the decision on a
//! certified lesson.
//!
//! A [`SchoolBook`] keeps, per trusted school: its name, the newest
//! bulletin (rotation chain, revocation list, seed statement) ever
//! accepted, the lessons the school's seed node countersigned (bundle
//! root → first time seen), and the newest school-signed time seen (the
//! clock floor). It only ever moves forward: an older list, a shorter
//! chain or an older statement changes nothing.
//!
//! [`SchoolBook::judge`] is the whole chain check of a lesson, pure and
//! offline: certificate chain from a trusted identity, current school
//! key, the teacher key and role, dates against the clock floor,
//! revocation (sparing lessons countersigned before it), and the warnings
//! of freshness. [`VersionBook`] refuses rollbacks.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    keys::AuthorKey,
    keys::AuthorSecret,
    manifest::{LessonId, Manifest},
    school::{
        Bulletin, Credentials, KeyChain, SchoolError, Seen, SignedCertificate, SignedStatement,
        Statement, MAX_STATEMENT_LESSONS, ROLE_PUBLISH,
    },
};

/// Most countersigned lessons remembered per school (the oldest go first).
pub const MAX_COUNTERSIGNED: usize = 4096;
/// Default bound on the age of the school's newest statement before a
/// fetch warns: two days (a weekend offline is normal).
pub const DEFAULT_MAX_STALENESS_SECS: u64 = 2 * 24 * 3600;

/// Reading or writing the school files failed.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// Reading or writing failed.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file is damaged.
    #[error("{path} is damaged; remove it and add the school again")]
    Damaged {
        /// The file.
        path: String,
    },
    /// A bulletin does not verify against the school it claims.
    #[error("the school bulletin is refused: {0}")]
    Bulletin(#[source] SchoolError),
    /// A bulletin for a school this node does not trust.
    #[error("the bulletin is for a school you do not trust ({0}); add it with `classe trust add-school`")]
    UnknownSchool(AuthorKey),
}

/// One trusted school, as kept on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SchoolState {
    /// The school's identity.
    pub identity: AuthorKey,
    /// The name the family gave it.
    pub name: String,
    /// The newest of everything the school and its seed node signed.
    pub bulletin: Bulletin,
    /// Bundles countersigned by the school's seed node: root, first seen.
    pub countersigned: BTreeMap<[u8; 32], u64>,
    /// The newest school-signed time seen (seconds since the epoch).
    pub newest_signed: u64,
    /// On the school's seed node: the lessons it countersigned itself,
    /// newest first, one per lesson (what its statements list).
    pub own_seen: Vec<Seen>,
}

impl SchoolState {
    fn new(identity: AuthorKey, name: String) -> Self {
        Self {
            identity,
            name,
            bulletin: Bulletin::default(),
            countersigned: BTreeMap::new(),
            newest_signed: 0,
            own_seen: Vec::new(),
        }
    }

    fn chain(&self) -> KeyChain {
        // The stored chain was verified before it was kept; a damaged
        // file falls back to the identity alone.
        KeyChain::follow(self.identity, &self.bulletin.chain)
            .unwrap_or_else(|_| KeyChain::identity(self.identity))
    }

    fn seq(&self) -> u64 {
        self.bulletin.revocations.as_ref().map_or(0, |r| r.list.seq)
    }

    /// Takes what is newer in a verified `bulletin`.
    fn absorb(&mut self, bulletin: Bulletin) -> bool {
        let changed = bulletin.newer_than(&self.bulletin);
        for r in &bulletin.chain {
            self.newest_signed = self.newest_signed.max(r.rotation.unix_secs);
        }
        if let Some(r) = &bulletin.revocations {
            self.newest_signed = self.newest_signed.max(r.list.issued);
        }
        if let Some(s) = &bulletin.statement {
            self.newest_signed = self.newest_signed.max(s.statement.issued);
            // A statement by a revoked seed key adds no countersignature.
            let revoked = self
                .bulletin
                .revocations
                .iter()
                .chain(bulletin.revocations.iter())
                .any(|r| r.revokes(&s.signer.cert).is_some());
            if !revoked {
                for seen in &s.statement.lessons {
                    let at = self
                        .countersigned
                        .entry(seen.root)
                        .or_insert(seen.first_seen);
                    *at = (*at).min(seen.first_seen);
                }
                self.bound_countersigned();
            }
        }
        self.bulletin.merge(bulletin);
        changed
    }

    fn bound_countersigned(&mut self) {
        while self.countersigned.len() > MAX_COUNTERSIGNED {
            let oldest = self
                .countersigned
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(r, _)| *r);
            match oldest {
                Some(root) => self.countersigned.remove(&root),
                None => break,
            };
        }
    }
}

/// Why a certified lesson is refused. Each message says what is wrong and
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The credentials do not verify.
    #[error(
        "the teacher's certificate is invalid ({0}); ask the teacher to share the lesson again"
    )]
    BadCredentials(String),
    /// The certificate is for another key than the lesson's signer.
    #[error("the lesson is signed by {signer} but carries the certificate of {subject} ({name}); it was tampered with, do not use it")]
    Mismatch {
        /// The manifest's author.
        signer: AuthorKey,
        /// The certificate's subject.
        subject: AuthorKey,
        /// The certificate's name.
        name: String,
    },
    /// Signed by a school key that has been replaced.
    #[error("the certificate of {name} is signed by a retired key of {school} (key {cert_version}, the school is at key {current}); ask the teacher for a new certificate")]
    RotatedOut {
        /// Teacher.
        name: String,
        /// School.
        school: String,
        /// The key version that signed the certificate.
        cert_version: u32,
        /// The newest key version known.
        current: u32,
    },
    /// The certificate does not allow publishing.
    #[error("{name} is certified by {school} as a seed node, not to publish lessons")]
    WrongRole {
        /// Teacher.
        name: String,
        /// School.
        school: String,
    },
    /// Not valid yet.
    #[error("the certificate of {name} by {school} is not valid before {from}; check the computer's date, or ask the school")]
    NotYetValid {
        /// Teacher.
        name: String,
        /// School.
        school: String,
        /// Start, as a date.
        from: String,
    },
    /// Expired.
    #[error("the certificate of {name} by {school} expired on {until}; ask the teacher to renew it with the school")]
    Expired {
        /// Teacher.
        name: String,
        /// School.
        school: String,
        /// End, as a date.
        until: String,
    },
    /// Revoked, and not countersigned before the revocation.
    #[error("{school} revoked {name}'s key on {since} ({reason}); this lesson was not countersigned by the school before that, so it is refused")]
    Revoked {
        /// Teacher.
        name: String,
        /// School.
        school: String,
        /// Revoked since, as a date.
        since: String,
        /// The school's reason.
        reason: String,
    },
    /// An older version than one already accepted.
    #[error("this is version {offered} of \"{title}\", older than version {held} you already fetched; run again with --allow-older if you really want the old version")]
    Older {
        /// Lesson title.
        title: String,
        /// Offered version.
        offered: u64,
        /// Newest accepted.
        held: u64,
    },
}

/// A certified lesson accepted: who signed it, who certified them, and
/// what the pupil should be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endorsement {
    /// The teacher's name in the certificate.
    pub teacher: String,
    /// The school's name (the family's, else the certificate's).
    pub school: String,
    /// The school's identity.
    pub identity: AuthorKey,
    /// Things to say on stderr: no recent word from the school, a newer
    /// version exists.
    pub warnings: Vec<String>,
}

/// The decision on a lesson's signer, school first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Certified by a trusted school, and valid.
    Certified(Endorsement),
    /// Not certified by a trusted school; the signer is trusted directly.
    Direct,
    /// Neither: the caller may ask the user.
    Unknown,
    /// Refused, whatever else is trusted.
    Refused(Refusal),
}

/// Decides on `manifest` (bundle `root`): a trusted school's verdict wins
/// (a revoked teacher is refused even if trusted directly), then direct
/// trust (`trusted_directly`).
pub fn decide(
    schools: &SchoolBook,
    trusted_directly: bool,
    manifest: &Manifest,
    root: [u8; 32],
    local_now: u64,
    max_staleness: u64,
) -> Decision {
    match schools.judge(manifest, root, local_now, max_staleness) {
        Some(Ok(e)) => return Decision::Certified(e),
        Some(Err(r)) => return Decision::Refused(r),
        None => {}
    }
    if let Some((school, since)) = schools.revoked_key(&manifest.author) {
        let spared = school.countersigned.get(&root).is_some_and(|t| *t < since);
        if !spared {
            return Decision::Refused(Refusal::Revoked {
                name: manifest.author.short(),
                school: school.name.clone(),
                since: date(since),
                reason: "the lesson carries no certificate".into(),
            });
        }
    }
    if trusted_directly {
        Decision::Direct
    } else {
        Decision::Unknown
    }
}

/// The schools a node trusts, and what it knows of each.
#[derive(Debug)]
pub struct SchoolBook {
    dir: PathBuf,
    schools: BTreeMap<AuthorKey, SchoolState>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AnchorError + '_ {
    move |source| AnchorError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl SchoolBook {
    /// Loads every `*.school` file of `dir` (a missing folder: none).
    pub fn load(dir: PathBuf) -> Result<Self, AnchorError> {
        let mut schools = BTreeMap::new();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self { dir, schools });
            }
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("school") {
                continue;
            }
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let state: SchoolState =
                postcard::from_bytes(&bytes).map_err(|_| AnchorError::Damaged {
                    path: path.display().to_string(),
                })?;
            schools.insert(state.identity, state);
        }
        Ok(Self { dir, schools })
    }

    /// Takes in what other processes wrote to the folder since (a
    /// `classe trust update` beside a running seed): merged school by
    /// school, so nothing held in memory is lost.
    pub fn refresh(&mut self) -> Result<(), AnchorError> {
        let disk = Self::load(self.dir.clone())?;
        for (identity, state) in disk.schools {
            match self.schools.get_mut(&identity) {
                Some(mine) => mine.merge_from(state),
                None => {
                    self.schools.insert(identity, state);
                }
            }
        }
        Ok(())
    }

    /// The trusted schools.
    pub fn schools(&self) -> impl Iterator<Item = &SchoolState> {
        self.schools.values()
    }

    /// One school, if trusted.
    pub fn get(&self, identity: &AuthorKey) -> Option<&SchoolState> {
        self.schools.get(identity)
    }

    /// Trusts a school (or renames it). Returns false if nothing changed.
    pub fn add(&mut self, identity: AuthorKey, name: &str) -> Result<bool, AnchorError> {
        let name = crate::trust::clean_name(name);
        let state = self
            .schools
            .entry(identity)
            .or_insert_with(|| SchoolState::new(identity, String::new()));
        if state.name == name && self.dir.join(file_name(&identity)).exists() {
            return Ok(false);
        }
        state.name = name;
        self.save(&identity)?;
        Ok(true)
    }

    /// Stops trusting a school. Returns whether it was trusted.
    pub fn remove(&mut self, identity: &AuthorKey) -> Result<bool, AnchorError> {
        if self.schools.remove(identity).is_none() {
            return Ok(false);
        }
        let path = self.dir.join(file_name(identity));
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Verifies `bulletin` against `identity` and keeps what is newer.
    /// Returns whether anything changed (and was saved).
    pub fn absorb(&mut self, identity: AuthorKey, bulletin: Bulletin) -> Result<bool, AnchorError> {
        let state = self
            .schools
            .get_mut(&identity)
            .ok_or(AnchorError::UnknownSchool(identity))?;
        bulletin.verify(identity).map_err(AnchorError::Bulletin)?;
        // A bulletin whose chain forks from the one known is refused.
        let known = state.chain();
        let offered = KeyChain::follow(identity, &bulletin.chain).map_err(AnchorError::Bulletin)?;
        if !known.keys().iter().zip(offered.keys()).all(|(a, b)| a == b) {
            return Err(AnchorError::Bulletin(SchoolError::Invalid(
                "its school key chain contradicts the one known".into(),
            )));
        }
        let before = (state.newest_signed, state.countersigned.len());
        let changed =
            state.absorb(bulletin) || before != (state.newest_signed, state.countersigned.len());
        if changed {
            self.save(&identity)?;
        }
        Ok(changed)
    }

    /// Records what an accepted lesson's credentials taught: a longer
    /// chain, a later signed time.
    pub fn learn(&mut self, creds: &Credentials) -> Result<(), AnchorError> {
        let identity = creds.cert.cert.school;
        let Some(state) = self.schools.get_mut(&identity) else {
            return Ok(());
        };
        let learned = Bulletin {
            chain: creds.chain.clone(),
            ..Bulletin::default()
        };
        let floor = state.newest_signed.max(creds.cert.cert.not_before);
        if learned.newer_than(&state.bulletin) || floor != state.newest_signed {
            state.newest_signed = floor;
            state.absorb(learned);
            self.save(&identity)?;
        }
        Ok(())
    }

    /// Countersigns a lesson this node (the school's seed node) holds:
    /// remembered with the time first seen, listed in its next statement
    /// (one entry per lesson, its newest version).
    pub fn countersign(&mut self, identity: &AuthorKey, seen: Seen) -> Result<(), AnchorError> {
        let Some(state) = self.schools.get_mut(identity) else {
            return Ok(());
        };
        let at = *state
            .countersigned
            .entry(seen.root)
            .or_insert(seen.first_seen);
        state.bound_countersigned();
        let same_lesson = |s: &Seen| s.author == seen.author && s.lesson_id == seen.lesson_id;
        if state
            .own_seen
            .iter()
            .any(|s| same_lesson(s) && s.version >= seen.version)
        {
            return self.save(identity);
        }
        state.own_seen.retain(|s| !same_lesson(s));
        state.own_seen.insert(
            0,
            Seen {
                first_seen: at,
                ..seen
            },
        );
        state.own_seen.truncate(MAX_STATEMENT_LESSONS);
        self.save(identity)
    }

    /// Signs a fresh statement as the school's seed node (`key`, certified
    /// by `cert` with the mirror role) and keeps it: the bulletin to
    /// spread. `None` if the school is not trusted here.
    pub fn sign_statement(
        &mut self,
        identity: &AuthorKey,
        cert: &SignedCertificate,
        key: &AuthorSecret,
        now: u64,
    ) -> Result<Option<Bulletin>, AnchorError> {
        let Some(state) = self.schools.get_mut(identity) else {
            return Ok(None);
        };
        let statement = Statement {
            school: *identity,
            revocation_seq: state.seq(),
            issued: now.max(state.newest_signed),
            lessons: state.own_seen.clone(),
        };
        let signed =
            SignedStatement::sign(statement, cert.clone(), key).map_err(AnchorError::Bulletin)?;
        state.absorb(Bulletin {
            statement: Some(signed),
            ..Bulletin::default()
        });
        let bulletin = state.bulletin.clone();
        self.save(identity)?;
        Ok(Some(bulletin))
    }

    /// The clock: the later of `local_now` and every school-signed time
    /// seen, so that a clock set back does not bring an expired
    /// certificate back to life.
    pub fn now(&self, local_now: u64) -> u64 {
        self.schools
            .values()
            .map(|s| s.newest_signed)
            .fold(local_now, u64::max)
    }

    /// Is `author`'s key revoked by any trusted school? (A lesson stripped
    /// of its certificate must not slip through direct trust.)
    pub fn revoked_key(&self, author: &AuthorKey) -> Option<(&SchoolState, u64)> {
        self.schools.values().find_map(|s| {
            let list = s.bulletin.revocations.as_ref()?;
            list.list.entries.iter().find_map(|e| match e.what {
                crate::school::Revoked::Key(k) if k == *author => Some((s, e.since)),
                _ => None,
            })
        })
    }

    /// The whole check of a certified lesson. `None` when the lesson has
    /// no certificate, or one from a school this node does not trust: the
    /// caller then applies direct trust.
    pub fn judge(
        &self,
        manifest: &Manifest,
        root: [u8; 32],
        local_now: u64,
        max_staleness: u64,
    ) -> Option<Result<Endorsement, Refusal>> {
        let creds = manifest.credentials.as_ref()?;
        let state = self.schools.get(&creds.cert.cert.school)?;
        Some(
            self.judge_credentials(creds, &manifest.author, root, local_now)
                .map(|mut e| {
                    let now = self.now(local_now);
                    e.warnings = freshness_warnings(state, &e.school, manifest, now, max_staleness);
                    e
                }),
        )
    }

    /// The chain check of `creds` for a lesson signed by `author` (bundle
    /// `root`), without the freshness warnings: what a seed node following
    /// the school checks before it mirrors. `Err(BadCredentials)` if the
    /// school is not trusted here.
    pub fn judge_credentials(
        &self,
        creds: &Credentials,
        author: &AuthorKey,
        root: [u8; 32],
        local_now: u64,
    ) -> Result<Endorsement, Refusal> {
        let Some(state) = self.schools.get(&creds.cert.cert.school) else {
            return Err(Refusal::BadCredentials(
                "its school is not trusted here".into(),
            ));
        };
        let cert = &creds.cert.cert;
        let school = if state.name.is_empty() {
            cert.school_name.clone()
        } else {
            state.name.clone()
        };
        let name = cert.name.clone();
        let chain = creds
            .verify()
            .map_err(|e| Refusal::BadCredentials(e.to_string()))?;
        let known = state.chain();
        if !known.keys().iter().zip(chain.keys()).all(|(a, b)| a == b) {
            return Err(Refusal::BadCredentials(
                "its school key chain contradicts the one known".into(),
            ));
        }
        let current = known.version().max(chain.version());
        if cert.key_version != current {
            return Err(Refusal::RotatedOut {
                name,
                school,
                cert_version: cert.key_version,
                current,
            });
        }
        if cert.subject != *author {
            return Err(Refusal::Mismatch {
                signer: *author,
                subject: cert.subject,
                name,
            });
        }
        if cert.roles & ROLE_PUBLISH == 0 {
            return Err(Refusal::WrongRole { name, school });
        }
        let now = self.now(local_now);
        let countersigned = state.countersigned.get(&root).copied();
        if now < cert.not_before {
            return Err(Refusal::NotYetValid {
                name,
                school,
                from: date(cert.not_before),
            });
        }
        if now > cert.not_after && countersigned.is_none_or(|t| t > cert.not_after) {
            return Err(Refusal::Expired {
                name,
                school,
                until: date(cert.not_after),
            });
        }
        if let Some(entry) = state
            .bulletin
            .revocations
            .as_ref()
            .and_then(|r| r.revokes(cert))
        {
            if countersigned.is_none_or(|t| t >= entry.since) {
                return Err(Refusal::Revoked {
                    name,
                    school,
                    since: date(entry.since),
                    reason: entry.reason.clone(),
                });
            }
        }
        Ok(Endorsement {
            teacher: name,
            school,
            identity: state.identity,
            warnings: Vec::new(),
        })
    }

    /// Writes one school's file, merged first with what is on disk: two
    /// processes on one home (the seed node, and `classe trust update`
    /// run beside it) never undo each other's newer list, statement or
    /// countersignatures.
    fn save(&mut self, identity: &AuthorKey) -> Result<(), AnchorError> {
        let Some(state) = self.schools.get_mut(identity) else {
            return Ok(());
        };
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join(file_name(identity));
        if let Some(disk) = fs::read(&path)
            .ok()
            .and_then(|b| postcard::from_bytes::<SchoolState>(&b).ok())
        {
            state.merge_from(disk);
        }
        let bytes = postcard::to_stdvec(state).unwrap_or_default();
        crate::trust::write_atomic(&path, &bytes).map_err(io_err(&path))
    }
}

impl SchoolState {
    /// Takes in what another process wrote of the same school: the newer
    /// parts of its bulletin (verified), its countersignatures (earliest
    /// time kept), its clock floor and its own countersignatures.
    fn merge_from(&mut self, disk: SchoolState) {
        if disk.identity != self.identity {
            return;
        }
        let known = self.chain();
        let consistent = disk
            .bulletin
            .verify(self.identity)
            .is_ok_and(|chain| known.keys().iter().zip(chain.keys()).all(|(a, b)| a == b));
        if consistent {
            self.absorb(disk.bulletin);
        }
        for (root, at) in disk.countersigned {
            let t = self.countersigned.entry(root).or_insert(at);
            *t = (*t).min(at);
        }
        self.bound_countersigned();
        self.newest_signed = self.newest_signed.max(disk.newest_signed);
        for seen in disk.own_seen {
            let same = |s: &Seen| s.author == seen.author && s.lesson_id == seen.lesson_id;
            match self.own_seen.iter_mut().find(|s| same(s)) {
                Some(mine) if mine.version == seen.version => {
                    mine.first_seen = mine.first_seen.min(seen.first_seen);
                }
                Some(mine) if mine.version > seen.version => {}
                Some(mine) => *mine = seen,
                None => self.own_seen.push(seen),
            }
        }
        self.own_seen
            .sort_by_key(|s| std::cmp::Reverse(s.first_seen));
        self.own_seen.truncate(MAX_STATEMENT_LESSONS);
    }
}

fn file_name(identity: &AuthorKey) -> String {
    format!("{identity}.school")
}

/// What a pupil should hear about the freshness of the school's word.
fn freshness_warnings(
    state: &SchoolState,
    school: &str,
    manifest: &Manifest,
    now: u64,
    max_staleness: u64,
) -> Vec<String> {
    let mut warnings = Vec::new();
    match &state.bulletin.statement {
        None => warnings.push(format!(
            "no word yet from the seed node of {school}: revoked teachers cannot be checked to date. Connect to the school network once (classe fetch, with --bootstrap) or import the school's bulletin with `classe trust update FILE`"
        )),
        Some(s) => {
            let s = &s.statement;
            let age = now.saturating_sub(s.issued);
            if age > max_staleness {
                warnings.push(format!(
                    "the latest word from the seed node of {school} is {} old: a teacher revoked since then would not be noticed. Connect to the school network to bring it up to date",
                    duration(age)
                ));
            }
            if s.revocation_seq > state.seq() {
                warnings.push(format!(
                    "{school} has issued a newer revocation list than the one this computer holds; connect to the school network to receive it"
                ));
            }
            if let Some(newer) = s.lessons.iter().find(|l| {
                l.author == manifest.author
                    && l.lesson_id == manifest.lesson_id
                    && l.version > manifest.version
            }) {
                warnings.push(format!(
                    "a newer version (version {}) of \"{}\" exists; ask for its ticket",
                    newer.version, manifest.title
                ));
            }
        }
    }
    warnings
}

/// `secs` since the epoch as `YYYY-MM-DD` (UTC).
pub fn date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to seconds since the epoch at 00:00 UTC.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DD` as 00:00 UTC that day, in seconds since the epoch.
pub fn parse_date(text: &str) -> Option<u64> {
    let mut parts = text.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let secs = days_from_civil(y, m, d) * 86_400;
    // 31 February does not round-trip.
    u64::try_from(secs).ok().filter(|s| date(*s) == text.trim())
}

/// The end of the school year that `now` is in: 31 August, 23:59:59 UTC
/// (of next year from September on).
pub fn end_of_school_year(now: u64) -> u64 {
    let (y, m, _) = civil_from_days((now / 86_400) as i64);
    let year = if m >= 9 { y + 1 } else { y };
    (days_from_civil(year, 8, 31) * 86_400 + 86_399) as u64
}

fn duration(secs: u64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 7200 => format!("{} hours", s / 3600),
        s => format!("{} minutes", s / 60),
    }
}

/// The newest version accepted of each lesson: a fetch of an older one is
/// refused (rollback), unless the user insists.
#[derive(Debug)]
pub struct VersionBook {
    path: PathBuf,
    newest: BTreeMap<(AuthorKey, LessonId), (u64, [u8; 32])>,
}

impl VersionBook {
    /// Loads the file (lines `author lesson version root`); missing: empty.
    pub fn load(path: PathBuf) -> Result<Self, AnchorError> {
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut newest = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let parsed = parse_version_line(line).ok_or_else(|| AnchorError::Damaged {
                path: path.display().to_string(),
            })?;
            newest.insert((parsed.0, parsed.1), (parsed.2, parsed.3));
        }
        Ok(Self { path, newest })
    }

    /// The newest version accepted of a lesson.
    pub fn newest(&self, author: &AuthorKey, lesson: &LessonId) -> Option<u64> {
        self.newest.get(&(*author, *lesson)).map(|(v, _)| *v)
    }

    /// Refuses a version older than the newest accepted.
    pub fn check(&self, manifest: &Manifest) -> Result<(), Refusal> {
        match self.newest(&manifest.author, &manifest.lesson_id) {
            Some(held) if held > manifest.version => Err(Refusal::Older {
                title: manifest.title.clone(),
                offered: manifest.version,
                held,
            }),
            _ => Ok(()),
        }
    }

    /// Records an accepted version (keeps the newest) and saves.
    pub fn accept(&mut self, manifest: &Manifest, root: [u8; 32]) -> Result<(), AnchorError> {
        let key = (manifest.author, manifest.lesson_id);
        if self
            .newest
            .get(&key)
            .is_some_and(|(v, _)| *v >= manifest.version)
        {
            return Ok(());
        }
        self.newest.insert(key, (manifest.version, root));
        let mut text =
            String::from("# Newest version accepted of each lesson: author lesson version root\n");
        for ((author, lesson), (version, root)) in &self.newest {
            text.push_str(&format!(
                "{author} {lesson} {version} {}\n",
                data_encoding::HEXLOWER.encode(root)
            ));
        }
        if let Some(parent) = self.path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        crate::trust::write_atomic(&self.path, text.as_bytes()).map_err(io_err(&self.path))
    }
}

fn parse_version_line(line: &str) -> Option<(AuthorKey, LessonId, u64, [u8; 32])> {
    let mut parts = line.split_whitespace();
    let author: AuthorKey = parts.next()?.parse().ok()?;
    let lesson = data_encoding::HEXLOWER
        .decode(parts.next()?.as_bytes())
        .ok()?;
    let version = parts.next()?.parse().ok()?;
    let root = data_encoding::HEXLOWER
        .decode(parts.next()?.as_bytes())
        .ok()?;
    Some((
        author,
        LessonId(lesson.try_into().ok()?),
        version,
        root.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_584_316_800), "2020-03-16");
        let secs = days_from_civil(2027, 8, 31) * 86_400;
        assert_eq!(date(secs as u64), "2027-08-31");
        assert_eq!(parse_date("2020-03-16"), Some(1_584_316_800));
        assert_eq!(parse_date("2021-02-30"), None);
        assert_eq!(parse_date("16/03/2020"), None);
        // 2 December 2026 is in the school year ending 31 August 2027.
        assert_eq!(date(end_of_school_year(1_796_256_000)), "2027-08-31");
        assert_eq!(date(end_of_school_year(1_783_728_000)), "2026-08-31");
    }
}
