//! The seed service: what `classe seed` runs on a school's always-on node
//! (or a pupil's inbox). It re-serves everything the store holds, and
//! mirrors every lesson the followed authors announce: fetched, verified
//! against the announcement, pinned, served and provided again, and
//! optionally written to a folder.
//!
//! ```text
//!   control events ──Announced──> queue (bounded) ──> mirrors (2 at once)
//!        |                           ^                    |  fetch → verify → serve
//!        '──> log: the control's     '── retries (20 s) <─┘  → write out/<title>
//!             book, written whole                             (renames, blocking thread)
//! ```
//!
//! An announcement only says where to look: the manifest must be signed
//! by the same followed author and name the same lesson and version.

use std::{
    collections::{HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use classe_bundle::{Announcement, AuthorKey, SignedAnnouncement};
use classe_control::{Control, ControlEvent};
use classe_store::ExportError;
use iroh_blobs::Hash;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    announce::AnnouncementLog,
    seed_school::{SchoolSeeding, Schools},
    FetchError, FetchRequest, Node, TrustDecision,
};

/// The seed's school state, shared with its mirror tasks.
type SharedSchools = Option<Arc<std::sync::Mutex<Schools>>>;

fn locked(s: &Arc<std::sync::Mutex<Schools>>) -> std::sync::MutexGuard<'_, Schools> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the seed service runs.
#[derive(Debug, Clone)]
pub struct SeedConfig {
    /// Authors whose announced lessons are mirrored.
    pub follow: Vec<AuthorKey>,
    /// Also write each mirrored lesson into `out/<title>`; a newer version
    /// replaces the older folder.
    pub out: Option<PathBuf>,
    /// Where the announcements known are kept across restarts.
    pub log: Option<AnnouncementLog>,
    /// Mirrors running at once.
    pub mirrors_at_once: usize,
    /// Announcements waiting for a mirror slot; more are dropped (the
    /// catch-up record brings them back later).
    pub queue: usize,
    /// A failed mirror is tried again after this...
    pub retry_after: Duration,
    /// ...at most this many times in all.
    pub attempts: u32,
    /// Schools whose certified teachers are mirrored.
    pub school: Option<SchoolSeeding>,
}

impl Default for SeedConfig {
    fn default() -> Self {
        Self {
            follow: Vec::new(),
            out: None,
            log: None,
            mirrors_at_once: 2,
            queue: 256,
            retry_after: Duration::from_secs(20),
            attempts: 5,
            school: None,
        }
    }
}

/// What the seed service did, for the operator and the school's tooling.
#[derive(Debug)]
pub enum SeedEvent {
    /// A lesson is held whole, verified and served.
    Mirrored(Mirrored),
    /// A mirror attempt failed; it is tried again if attempts remain.
    MirrorFailed {
        /// What was announced.
        announcement: Announcement,
        /// This attempt (1-based).
        attempt: u32,
        /// Why.
        error: MirrorError,
    },
    /// A held lesson is no longer served: its teacher was revoked and the
    /// school had not countersigned it before the revocation.
    Withheld {
        /// The bundle.
        root: Hash,
    },
    /// A school bulletin newer than the one held arrived.
    Bulletin {
        /// The school.
        school: AuthorKey,
        /// Its revocation list's sequence number (0: none).
        revocation_seq: u64,
        /// `gossip` or `dht`.
        via: &'static str,
    },
    /// The control plane refused something (a forged announcement, ...).
    Ignored {
        /// Why, in a few words.
        reason: String,
        /// The peer it came from, if known.
        from: Option<String>,
    },
}

/// A finished mirror.
#[derive(Debug)]
pub struct Mirrored {
    /// What was announced (and verified against the manifest).
    pub announcement: Announcement,
    /// The bundle's size.
    pub total_bytes: u64,
    /// Bytes received for it (less when part was held).
    pub received_bytes: u64,
    /// How long it took.
    pub seconds: f64,
    /// The folder it was written to, if any.
    pub out: Option<PathBuf>,
}

/// Why a mirror failed.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The manifest is signed by the author but names another lesson or
    /// version than the announcement.
    #[error("the bundle's manifest does not match its announcement (lesson or version)")]
    Mismatch,
    /// Its teacher is not (or no longer) certified by a followed school.
    #[error("{0}")]
    Refused(String),
    /// Fetching failed.
    #[error(transparent)]
    Fetch(FetchError),
    /// Exporting to the output folder failed.
    #[error("cannot write {path}: {source}")]
    Export {
        /// The folder.
        path: String,
        /// Why.
        #[source]
        source: ExportError,
    },
    /// Putting the exported folder in place failed.
    #[error("cannot replace {path}: {source}")]
    Replace {
        /// The folder.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The seed service could not start.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The node runs without a control plane, or its events were taken.
    #[error("discovery did not start")]
    NoControl,
    /// The store cannot be listed.
    #[error("cannot read the store")]
    Store(#[from] classe_store::ReadError),
    /// The output folder cannot be created.
    #[error("cannot create {path}")]
    Out {
        /// The folder.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The school book cannot be read.
    #[error(transparent)]
    Schools(#[from] classe_bundle::anchor::AnchorError),
}

/// A started seed service: held bundles served again, ready to run.
pub struct Seed {
    node: Node,
    control: Control,
    control_events: mpsc::Receiver<ControlEvent>,
    config: SeedConfig,
    complete: HashSet<Hash>,
    schools: SharedSchools,
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seed")
            .field("config", &self.config)
            .field("held", &self.complete.len())
            .finish_non_exhaustive()
    }
}

impl Seed {
    /// Takes the node's control events, creates the output folder, and
    /// serves and provides again every bundle held whole.
    pub async fn start(node: &Node, config: SeedConfig) -> Result<Self, SeedError> {
        let control = node.control().cloned().ok_or(SeedError::NoControl)?;
        let control_events = node.take_control_events().ok_or(SeedError::NoControl)?;
        if let Some(dir) = config.out.clone() {
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|e| (dir, e))
            })
            .await
            .unwrap_or_else(|e| Err((PathBuf::new(), std::io::Error::other(e))))
            .map_err(|(dir, source)| SeedError::Out {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let mut schools = match &config.school {
            Some(s) => Some(Schools::load(s.clone())?),
            None => None,
        };
        let mut complete = HashSet::new();
        for bundle in node.store().list().await? {
            if bundle.complete {
                node.serve_bundle(bundle.root, bundle.manifest.manifest());
                node.provide(bundle.root).await;
                complete.insert(bundle.root);
                if let Some(s) = &mut schools {
                    s.hold(bundle.root, bundle.manifest.manifest());
                }
            }
        }
        Ok(Self {
            node: node.clone(),
            control,
            control_events,
            config,
            complete,
            schools: schools.map(|s| Arc::new(std::sync::Mutex::new(s))),
        })
    }

    /// How many bundles it serves from before it started.
    pub fn held(&self) -> usize {
        self.complete.len()
    }

    /// Mirrors until `shutdown` is cancelled, telling `events` what it
    /// does. Announcements known from before are announced again (the seed
    /// holds their catch-up records for followers that come later); those
    /// not held whole are mirrored first.
    pub async fn run(self, events: mpsc::Sender<SeedEvent>, shutdown: CancellationToken) {
        if let Some(s) = &self.schools {
            let (followed, teachers, bulletins) = {
                let mut s = locked(s);
                // What is held at start is published now, not "newer".
                s.unpublished();
                (s.followed().to_vec(), s.teachers.clone(), s.statements())
            };
            for school in followed {
                self.control.follow_school(school).await;
            }
            for t in teachers {
                self.control.follow(t).await;
            }
            for (school, b) in bulletins {
                self.control.publish_bulletin(school, b).await;
            }
        }
        let known = self.control.book().await;
        let mut queue = VecDeque::new();
        for a in known.iter().filter(|a| self.follows(a)) {
            self.control.announce(a.clone()).await;
            if !self
                .complete
                .contains(&Hash::from_bytes(a.announcement().root))
            {
                queue.push_back((a.clone(), 0));
            }
        }
        let mut mirroring = Mirroring {
            node: self.node,
            control: self.control,
            config: self.config,
            schools: self.schools,
            events,
            queue,
            held: self.complete,
            in_flight: HashSet::new(),
            mirrors: JoinSet::new(),
            retries: JoinSet::new(),
        };
        mirroring.run(self.control_events, shutdown).await;
    }

    fn follows(&self, a: &SignedAnnouncement) -> bool {
        let author = a.announcement().author;
        self.config.follow.contains(&author)
            || self
                .schools
                .as_ref()
                .is_some_and(|s| locked(s).teachers.contains(&author))
    }
}

type MirrorResult = (SignedAnnouncement, u32, Result<Mirrored, MirrorError>);

/// The running loop's state.
struct Mirroring {
    node: Node,
    control: Control,
    config: SeedConfig,
    schools: SharedSchools,
    events: mpsc::Sender<SeedEvent>,
    queue: VecDeque<(SignedAnnouncement, u32)>,
    /// Bundles held whole (at start, and mirrored since).
    held: HashSet<Hash>,
    /// Bundles being mirrored now.
    in_flight: HashSet<Hash>,
    mirrors: JoinSet<MirrorResult>,
    retries: JoinSet<(SignedAnnouncement, u32)>,
}

impl Mirroring {
    async fn run(
        &mut self,
        mut control_events: mpsc::Receiver<ControlEvent>,
        shutdown: CancellationToken,
    ) {
        let every = self
            .config
            .school
            .as_ref()
            .map_or(Duration::from_secs(3600), |s| s.statement_every);
        let mut statements = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut reload = tokio::time::interval(Duration::from_secs(2));
        loop {
            self.start_mirrors();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = statements.tick(), if self.schools.is_some() => self.publish_statements().await,
                _ = reload.tick(), if self.schools.is_some() => self.reload_schools().await,
                Some(ev) = control_events.recv() => self.on_control(ev).await,
                Some(done) = self.mirrors.join_next(), if !self.mirrors.is_empty() => {
                    if let Ok(done) = done {
                        self.on_mirror_done(done).await;
                    }
                }
                Some(Ok(again)) = self.retries.join_next(), if !self.retries.is_empty() => {
                    self.enqueue(again);
                }
            }
        }
        self.mirrors.abort_all();
        self.retries.abort_all();
        while self.mirrors.join_next().await.is_some() {}
    }

    fn enqueue(&mut self, entry: (SignedAnnouncement, u32)) {
        let root = Hash::from_bytes(entry.0.announcement().root);
        let queued = self
            .queue
            .iter()
            .any(|(a, _)| a.announcement().root == entry.0.announcement().root);
        // Heard twice (the teacher's topic and the school's): mirror once.
        // Two fetches of one bundle in one node would stall each other.
        if self.held.contains(&root) || self.in_flight.contains(&root) || (queued && entry.1 == 0) {
            return;
        }
        if self.queue.len() < self.config.queue {
            self.queue.push_back(entry);
        } else {
            tracing::warn!("mirror queue full; the catch-up record brings this lesson back later");
        }
    }

    fn start_mirrors(&mut self) {
        while self.mirrors.len() < self.config.mirrors_at_once {
            let Some((a, attempt)) = self.queue.pop_front() else {
                break;
            };
            let root = Hash::from_bytes(a.announcement().root);
            if self.held.contains(&root) || !self.in_flight.insert(root) {
                continue;
            }
            let node = self.node.clone();
            let control = self.control.clone();
            let out = self.config.out.clone();
            let followed = self.config.follow.contains(&a.announcement().author);
            let schools = self.schools.clone();
            self.mirrors.spawn(async move {
                let trust = Trust { followed, schools };
                let result = mirror(&node, &control, &a, out.as_deref(), trust).await;
                (a, attempt, result)
            });
        }
    }

    async fn on_control(&mut self, ev: ControlEvent) {
        match ev {
            ControlEvent::Announced { announcement, via } => {
                tracing::info!(via, "announcement");
                if let Some(log) = &self.config.log {
                    if let Err(e) = log.save(self.control.book().await).await {
                        tracing::warn!("cannot keep the announcement: {e}");
                    }
                }
                self.enqueue((announcement, 0));
            }
            ControlEvent::Ignored { reason, from } => {
                self.events
                    .send(SeedEvent::Ignored { reason, from })
                    .await
                    .ok();
            }
            ControlEvent::SchoolBulletin {
                school,
                bulletin,
                via,
            } => self.on_bulletin(school, *bulletin, via).await,
            ControlEvent::Certified {
                school,
                credentials,
                announcement,
            } => self.on_certified(school, &credentials, announcement).await,
            ControlEvent::SchoolChecked { .. } => {}
        }
    }

    /// A newer bulletin: kept; the lessons it revokes are withheld.
    async fn on_bulletin(
        &mut self,
        school: AuthorKey,
        bulletin: classe_bundle::school::Bulletin,
        via: &'static str,
    ) {
        let Some(s) = &self.schools else { return };
        let revocation_seq = bulletin.revocations.as_ref().map_or(0, |r| r.list.seq);
        let withhold = {
            let mut s = locked(s);
            let w = s.absorb(school, bulletin);
            // Arrived from the network: it spreads there already.
            s.unpublished();
            w
        };
        self.events
            .send(SeedEvent::Bulletin {
                school,
                revocation_seq,
                via,
            })
            .await
            .ok();
        self.withhold(withhold).await;
    }

    /// A certified teacher's announcement on a followed school's topic:
    /// the teacher is followed from now on and the lesson mirrored.
    async fn on_certified(
        &mut self,
        school: AuthorKey,
        credentials: &classe_bundle::school::Credentials,
        announcement: SignedAnnouncement,
    ) {
        let Some(s) = &self.schools else { return };
        let a = announcement.announcement();
        let known = self
            .control
            .book()
            .await
            .iter()
            .any(|b| b.announcement().root == a.root);
        if known || self.node.store().is_withheld(Hash::from_bytes(a.root)) {
            // Heard on the teacher's own topic already, or withheld.
            return;
        }
        let verdict = locked(s).accepts(&school, credentials, &a.author, a.root);
        match verdict {
            Ok(()) => {
                let new_teacher = locked(s).teachers.insert(a.author);
                if new_teacher {
                    tracing::info!(teacher = %a.author, %school, "following a newly certified teacher");
                    self.control.follow(a.author).await;
                }
                self.enqueue((announcement, 0));
            }
            Err(reason) => {
                self.events
                    .send(SeedEvent::Ignored {
                        reason: format!("certified announcement refused: {reason}"),
                        from: None,
                    })
                    .await
                    .ok();
            }
        }
    }

    /// Stops serving and providing `roots` (a revoked teacher's lessons).
    async fn withhold(&mut self, roots: Vec<Hash>) {
        for root in roots {
            self.node.store().withhold(root);
            if let Some(c) = self.node.control() {
                c.stop_providing(*root.as_bytes()).await;
            }
            self.events.send(SeedEvent::Withheld { root }).await.ok();
        }
    }

    /// Fresh statements for every followed school, published.
    async fn publish_statements(&mut self) {
        let Some(s) = &self.schools else { return };
        let bulletins = locked(s).statements();
        for (school, b) in bulletins {
            self.control.publish_bulletin(school, b).await;
        }
    }

    /// The school book changed on disk (`classe trust update`): reread,
    /// withhold what it revokes, publish the bulletin.
    async fn reload_schools(&mut self) {
        let Some(s) = &self.schools else { return };
        let (withhold, newer) = {
            let mut s = locked(s);
            let withhold = s.reload_if_changed().unwrap_or_default();
            (withhold, s.unpublished())
        };
        for (school, seq) in &newer {
            tracing::info!(%school, seq, "newer revocation list on disk");
            self.events
                .send(SeedEvent::Bulletin {
                    school: *school,
                    revocation_seq: *seq,
                    via: "disk",
                })
                .await
                .ok();
        }
        self.withhold(withhold).await;
        if !newer.is_empty() {
            self.publish_statements().await;
        }
    }

    async fn on_mirror_done(&mut self, (a, attempt, result): MirrorResult) {
        self.in_flight
            .remove(&Hash::from_bytes(a.announcement().root));
        let event = match result {
            Ok(m) => {
                self.held.insert(Hash::from_bytes(m.announcement.root));
                SeedEvent::Mirrored(m)
            }
            Err(error) => {
                // A refusal is final: trying again would refuse again.
                let again = !matches!(error, MirrorError::Refused(_));
                if again && attempt + 1 < self.config.attempts {
                    let pause = self.config.retry_after;
                    let again = a.clone();
                    self.retries.spawn(async move {
                        tokio::time::sleep(pause).await;
                        (again, attempt + 1)
                    });
                }
                SeedEvent::MirrorFailed {
                    announcement: a.announcement().clone(),
                    attempt: attempt + 1,
                    error,
                }
            }
        };
        self.events.send(event).await.ok();
    }
}

/// Fetches, verifies, pins and serves one announced bundle; writes it to
/// `out` if given and no newer version of the lesson is known.
/// Who a mirror accepts: the followed author, or a currently certified
/// teacher of a followed school (never a revoked one).
struct Trust {
    followed: bool,
    schools: SharedSchools,
}

impl Trust {
    fn accepts(&self, m: &classe_bundle::Manifest, root: Hash) -> Result<(), String> {
        match &self.schools {
            Some(s) => locked(s).trusts(m, root, self.followed),
            None if self.followed => Ok(()),
            None => Err("not followed".into()),
        }
    }
}

async fn mirror(
    node: &Node,
    control: &Control,
    a: &SignedAnnouncement,
    out: Option<&Path>,
    trusted: Trust,
) -> Result<Mirrored, MirrorError> {
    let ann = a.announcement().clone();
    let root = Hash::from_bytes(ann.root);
    let started = Instant::now();
    let request = FetchRequest {
        root,
        expected_author: Some(ann.author),
        providers: ann.providers.clone(),
    };
    let (author, lesson, version) = (ann.author, ann.lesson_id, ann.version);
    let check = &trusted;
    let trust = move |m: classe_bundle::SignedManifest| async move {
        let m = m.manifest();
        if m.author == author && m.lesson_id == lesson && m.version == version {
            match check.accepts(m, root) {
                Ok(()) => TrustDecision::Trusted,
                Err(why) => TrustDecision::RefusedBecause(why),
            }
        } else {
            TrustDecision::Refused
        }
    };
    let report = node
        .fetch(request, trust, crate::fetch::no_events())
        .await
        .map_err(|e| match e {
            FetchError::Untrusted(_) => MirrorError::Mismatch,
            FetchError::Refused(why) => MirrorError::Refused(why),
            e => MirrorError::Fetch(e),
        })?;
    let manifest = report.manifest.manifest();
    node.serve_bundle(root, manifest);
    node.provide(root).await;
    if let Some(s) = &trusted.schools {
        let publish = locked(s).mirrored(root, manifest);
        if let Some((school, bulletin)) = publish {
            control.publish_bulletin(school, bulletin).await;
        }
    }
    // An older version that finishes mirroring after a newer one is kept
    // in the store but not written over the newer folder.
    let newest = control
        .book()
        .await
        .iter()
        .map(SignedAnnouncement::announcement)
        .filter(|b| b.author == author && b.lesson_id == lesson)
        .all(|b| b.version <= version);
    let written = match out {
        Some(dir) if newest => Some(write_lesson(node, root, &manifest.title, dir).await?),
        _ => None,
    };
    Ok(Mirrored {
        announcement: ann,
        total_bytes: report.total_bytes,
        received_bytes: report.received_bytes,
        seconds: started.elapsed().as_secs_f64(),
        out: written,
    })
}

/// Writes the lesson to `dir/<title>`: exported beside it first, then put
/// in place by renames on a blocking thread, so the folder is always a
/// whole version.
async fn write_lesson(
    node: &Node,
    root: Hash,
    title: &str,
    dir: &Path,
) -> Result<PathBuf, MirrorError> {
    let name = classe_bundle::path::folder_name(title, root.as_bytes());
    let target = dir.join(&name);
    let pid = std::process::id();
    let fresh = dir.join(format!(".{name}.classe-new-{pid}"));
    let old = dir.join(format!(".{name}.classe-old-{pid}"));
    let stale = fresh.clone();
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&stale))
        .await
        .ok();
    node.store()
        .export(root, &fresh)
        .await
        .map_err(|source| MirrorError::Export {
            path: target.display().to_string(),
            source,
        })?;
    let put = target.clone();
    tokio::task::spawn_blocking(move || replace_dir(&fresh, &put, &old))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|source| MirrorError::Replace {
            path: target.display().to_string(),
            source,
        })?;
    Ok(target)
}

/// Puts folder `fresh` at `target` by renames, moving a `target` that
/// exists to `old` first and removing it after; on failure the old folder
/// is put back and `fresh` removed.
pub(crate) fn replace_dir(fresh: &Path, target: &Path, old: &Path) -> std::io::Result<()> {
    let had_old = target.exists();
    if had_old {
        std::fs::rename(target, old)?;
    }
    if let Err(e) = std::fs::rename(fresh, target) {
        if had_old {
            let _ = std::fs::rename(old, target);
        }
        let _ = std::fs::remove_dir_all(fresh);
        return Err(e);
    }
    if had_old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}
