//! Fetching a bundle: connect, manifest, verify and trust, files, verify.
//!
//! Order matters. The only bytes taken from a stranger before the author is
//! trusted are the hash sequence and the manifest, both bounded in size and
//! verified against the root hash while streaming. File content is
//! requested only once the signature checks out, the signer is the author
//! the ticket named, and the trust policy said yes.
//!
//! The files then come piece by piece from every peer at once (see
//! `download.rs`); pieces already in the store are not asked for
//! again, so an interrupted fetch resumes where it stopped.

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use classe_bundle::{
    limits::{MAX_FILES, MAX_MANIFEST_BYTES},
    AuthorKey, ManifestError, ProviderInfo, SignedManifest,
};
use classe_store::ReadError;
use iroh::endpoint::Connection;
use iroh_blobs::{
    protocol::{ChunkRanges, ChunkRangesExt, GetRequest},
    Hash,
};
use tokio::sync::mpsc;

use crate::Node;

/// How long the first DHT lookup may take before the fetch goes on with
/// whatever it found.
const FIRST_LOOKUP: Duration = Duration::from_secs(10);
/// Pause before asking the DHT again after an empty answer.
const LOOKUP_RETRY: Duration = Duration::from_millis(500);
/// Once the ticket or the DHT gave a connection, how long the other may
/// still add some.
const OTHER_SIDE_GRACE: Duration = Duration::from_millis(500);

/// Rounds of connecting and asking for the manifest before a fetch gives
/// up on finding anyone (see [`Node::first_contact`]).
const FIRST_CONTACT_ATTEMPTS: u32 = 3;
/// A new first-contact round starts only if it can start within this
/// time of the first: a ticket whose teacher is really gone fails in
/// well under half a minute, lookups of up to 10 s included.
const FIRST_CONTACT_WITHIN: Duration = Duration::from_secs(25);

/// The pause before first-contact round `attempt + 1`: 2 s, then 4 s,
/// plus up to a second that depends on our node id.
fn first_contact_pause(attempt: u32, id: &[u8; 32]) -> Duration {
    let jitter = u64::from(u16::from_le_bytes([id[0], id[1]])) * 1000 / u64::from(u16::MAX);
    Duration::from_secs(2u64 << (attempt - 1).min(3)) + Duration::from_millis(jitter)
}

const NOBODY: &str = "no node holding this bundle answered: neither the ticket's providers nor any found through the seed node, the DHT or the LAN; is the teacher's classe (or a classmate's) still running and reachable?";

/// What to fetch and from whom.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The bundle's root hash.
    pub root: Hash,
    /// If set, the manifest must be signed by this key (the ticket's).
    pub expected_author: Option<AuthorKey>,
    /// Nodes to ask.
    pub providers: Vec<ProviderInfo>,
}

/// An events sender nobody reads, for a fetch whose progress nobody
/// shows (a seed's mirror): events are sent with `try_send` and dropped.
pub fn no_events() -> mpsc::Sender<FetchEvent> {
    mpsc::channel(1).0
}

/// The trust policy's answer for a manifest's signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustDecision {
    /// Go on and download the files.
    Trusted,
    /// Stop; download nothing more.
    Refused,
    /// Stop, for this reason (a revoked teacher, an expired certificate,
    /// an older version): one sentence for the user.
    RefusedBecause(String),
}

/// Progress, for a progress bar. Sent with `try_send`: a slow reader misses
/// updates rather than slowing the download.
#[derive(Debug, Clone)]
pub enum FetchEvent {
    /// Nobody answered (or everyone refused) the first contact; the fetch
    /// tries again after a pause.
    Retrying {
        /// The round that failed (1-based).
        attempt: u32,
        /// Seconds until the next round.
        seconds: f64,
    },
    /// A provider could not be reached.
    ConnectFailed {
        /// Its node id (hex).
        peer: String,
        /// Why.
        reason: String,
    },
    /// The DHT lookup for providers finished.
    Discovered {
        /// Providers found (with addresses).
        providers: usize,
        /// How long the lookup took.
        seconds: f64,
    },
    /// The manifest is verified and trusted; files are next.
    Started {
        /// Sum of file sizes.
        total_bytes: u64,
        /// Of which already in the store.
        have_bytes: u64,
        /// Providers connected.
        providers: usize,
    },
    /// Bytes of file content in the store so far (including what was there).
    Progress {
        /// Bytes done.
        done_bytes: u64,
    },
    /// A provider was given up; the others carry on.
    ProviderDropped {
        /// Its node id (hex).
        peer: String,
        /// Why.
        reason: String,
    },
    /// Nothing arrived for a while; every provider known is asked again.
    Stalled {
        /// Seconds without a byte.
        seconds: u64,
        /// Pieces still missing.
        missing_pieces: u32,
        /// Peers connected.
        peers: usize,
    },
}

/// What a finished fetch did.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// The bundle root.
    pub root: Hash,
    /// Its verified manifest.
    pub manifest: SignedManifest,
    /// Sum of file sizes.
    pub total_bytes: u64,
    /// File bytes already in the store when this fetch started.
    pub already_had_bytes: u64,
    /// Payload bytes received over the network in this fetch (manifest
    /// included).
    pub received_bytes: u64,
    /// Payload bytes received per provider node id (hex).
    pub per_provider: BTreeMap<String, u64>,
    /// Seconds from the start of the fetch to the first byte from each
    /// provider.
    pub first_byte_secs: BTreeMap<String, f64>,
    /// Wall time of the fetch.
    pub elapsed: Duration,
}

/// Why a fetch failed. The CLI maps each variant to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No provider could be reached, or every provider failed before the
    /// bundle was complete.
    #[error("no provider could deliver the bundle: {0}")]
    NoProvider(String),
    /// The manifest is signed by a key other than the ticket's.
    #[error("the bundle is signed by {actual}, not by {expected} as the ticket says")]
    WrongAuthor {
        /// The ticket's key.
        expected: AuthorKey,
        /// The manifest's key.
        actual: AuthorKey,
    },
    /// The manifest's signature is invalid.
    #[error("the manifest's signature is invalid")]
    InvalidSignature,
    /// The signer is not trusted.
    #[error("the bundle is signed by {0}, which you do not trust")]
    Untrusted(AuthorKey),
    /// The trust policy refused the lesson, saying why.
    #[error("{0}")]
    Refused(String),
    /// The manifest is well signed but unsafe or over a limit.
    #[error("the manifest is unsafe: {0}")]
    UnsafeManifest(String),
    /// Data did not verify: bad manifest encoding, hash sequence not
    /// matching the manifest, sizes not matching.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The local store failed (disk full, permissions).
    #[error("local store error: {0}")]
    Store(String),
}

impl From<ReadError> for FetchError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Manifest(ManifestError::BadSignature) => FetchError::InvalidSignature,
            ReadError::Manifest(
                e @ (ManifestError::UnsafePath(_)
                | ManifestError::Limit(_)
                | ManifestError::TooLarge(_)),
            ) => FetchError::UnsafeManifest(e.to_string()),
            ReadError::Manifest(e) => FetchError::Verification(e.to_string()),
            e @ (ReadError::BadHashSeq
            | ReadError::Mismatch
            | ReadError::MissingManifest
            | ReadError::NotFound(_)) => FetchError::Verification(e.to_string()),
            e @ ReadError::Store(_) => FetchError::Store(e.to_string()),
        }
    }
}

struct Provider {
    peer: String,
    info: ProviderInfo,
    conn: Connection,
}

impl Node {
    /// Fetches a bundle into the store and pins it. Does not write any
    /// output folder: see [`classe_store::Store::export`].
    ///
    /// `trust` is asked once, after the manifest's signature verified and
    /// before any file is requested.
    pub async fn fetch<F, Fut>(
        &self,
        request: FetchRequest,
        trust: F,
        events: mpsc::Sender<FetchEvent>,
    ) -> Result<FetchReport, FetchError>
    where
        F: FnOnce(SignedManifest) -> Fut,
        Fut: Future<Output = TrustDecision>,
    {
        let started = Instant::now();
        let root = request.root;
        let store = self.store().clone();
        let mut per_provider: BTreeMap<String, u64> = BTreeMap::new();
        let mut first_byte_secs: BTreeMap<String, f64> = BTreeMap::new();
        let mut received = 0u64;

        // Ticket providers and the DHT at once, then the manifest (from the
        // store if an earlier run got it); tried again while nobody answers.
        let (mut providers, manifest, first) = self.first_contact(&request, &events).await?;
        if let Some((peer, bytes)) = first {
            *per_provider.entry(peer.clone()).or_default() += bytes;
            first_byte_secs.insert(peer.clone(), started.elapsed().as_secs_f64());
            self.traffic_handle().add_received(&peer, root, bytes);
            received += bytes;
        }

        // 2. Who signed it, and do we accept them.
        let author = manifest.manifest().author;
        if let Some(expected) = request.expected_author {
            if expected != author {
                return Err(FetchError::WrongAuthor {
                    expected,
                    actual: author,
                });
            }
        }
        match trust(manifest.clone()).await {
            TrustDecision::Trusted => {}
            TrustDecision::Refused => return Err(FetchError::Untrusted(author)),
            TrustDecision::RefusedBecause(why) => return Err(FetchError::Refused(why)),
        }

        // 3. Pin, then the files that are not complete yet. The DHT hears
        // that we hold it once we hold a piece (see download.rs), or now
        // if the store already has some of it.
        store.pin(root).await?;
        let files = &manifest.manifest().files;
        self.account_bundle(root, files.iter().map(|f| Hash::from_bytes(f.hash)));
        let total_bytes = manifest.manifest().total_size();
        let (already, needed) = self.held_and_needed(manifest.manifest()).await?;
        if already > 0 {
            self.provide(root).await;
        }
        events
            .try_send(FetchEvent::Started {
                total_bytes,
                have_bytes: already,
                providers: providers.len(),
            })
            .ok();

        if needed > 0 {
            if providers.is_empty()
                && self.swarm_registry().peers(root).is_empty()
                && self.control().is_none()
            {
                return Err(FetchError::NoProvider(NOBODY.into()));
            }
            let layout = Arc::new(crate::swarm::BundleLayout::from_manifest(
                manifest.manifest(),
            ));
            let connected = providers
                .drain(..)
                .map(|p| crate::download::Connected {
                    info: p.info,
                    conn: p.conn,
                })
                .collect();
            let report = self
                .download(root, layout, connected, events.clone(), already)
                .await?;
            for (peer, bytes) in report.per_provider {
                *per_provider.entry(peer).or_default() += bytes;
            }
            for (peer, at) in report.first_byte {
                first_byte_secs
                    .entry(peer)
                    .or_insert_with(|| at.duration_since(started).as_secs_f64());
            }
            received += report.received;
        }

        // 4. Everything verified while streaming; check completeness and
        // sizes against the signed manifest before calling it done.
        self.check_complete(manifest.manifest()).await?;
        Ok(FetchReport {
            root,
            manifest,
            total_bytes,
            already_had_bytes: already,
            received_bytes: received,
            per_provider,
            first_byte_secs,
            elapsed: started.elapsed(),
        })
    }

    /// What the store holds of the manifest's files already (bytes, capped
    /// at the total), and the bytes of distinct blobs still to come;
    /// refuses up front when the disk lacks the room for them.
    async fn held_and_needed(
        &self,
        manifest: &classe_bundle::Manifest,
    ) -> Result<(u64, u64), FetchError> {
        let store = self.store();
        let mut already = 0u64;
        let mut needed = 0u64;
        let mut seen = HashSet::new();
        for f in &manifest.files {
            let hash = Hash::from_bytes(f.hash);
            if f.size == 0 {
                if hash != Hash::EMPTY {
                    return Err(FetchError::Verification(format!(
                        "{} is empty but its hash is not the empty hash",
                        f.path
                    )));
                }
                continue;
            }
            let have = store.blob_local_bytes(hash, f.size).await?;
            already += have;
            // What the store already holds of a blob takes no new space.
            if !store.blob_complete(hash, f.size).await? && seen.insert(hash) {
                needed += f.size.saturating_sub(have);
            }
        }
        if let Some(free) = free_space(store.dir()).await {
            // Data plus its BLAKE3 outboard (about 1/256 of it) and slack.
            let want = needed + needed / 128 + 1024 * 1024;
            if free < want {
                return Err(FetchError::Store(format!(
                    "not enough disk space in {}: {} MB needed, {} MB free",
                    store.dir().display(),
                    want.div_ceil(1_000_000),
                    free / 1_000_000
                )));
            }
        }
        // Duplicate contents were counted once per path; cap at the total.
        Ok((already.min(manifest.total_size()), needed))
    }

    /// Every file of the manifest complete in the store, with its size.
    async fn check_complete(&self, manifest: &classe_bundle::Manifest) -> Result<(), FetchError> {
        let mut incomplete = 0;
        for f in &manifest.files {
            if f.size > 0
                && !self
                    .store()
                    .blob_complete(Hash::from_bytes(f.hash), f.size)
                    .await?
            {
                incomplete += 1;
            }
        }
        if incomplete > 0 {
            return Err(FetchError::NoProvider(format!(
                "{incomplete} file(s) still missing after every provider was tried"
            )));
        }
        Ok(())
    }

    /// Dials the ticket's providers and, at once, those the DHT names.
    /// Whichever side connects first wins (the DHT side waits a moment for
    /// the ticket's); the other is left behind: a dead teacher in the
    /// ticket must not hold up a fetch the seed node can serve, and the
    /// download asks the DHT again as soon as it starts.
    async fn connect_ticket_and_dht(
        &self,
        control: &classe_control::Control,
        request: &FetchRequest,
        events: &mpsc::Sender<FetchEvent>,
    ) -> Vec<Provider> {
        let root = *request.root.as_bytes();
        let ticket = self.connect_all(&request.providers, events);
        let dht = async {
            let started = Instant::now();
            // An empty answer may only mean the routing table is still
            // filling (mDNS, bootstrap dials): ask again until the time
            // is up.
            let mut found = Vec::new();
            while started.elapsed() < FIRST_LOOKUP {
                let left = FIRST_LOOKUP.saturating_sub(started.elapsed());
                found = control.find_providers(root, left).await;
                if !found.is_empty() {
                    break;
                }
                tokio::time::sleep(LOOKUP_RETRY.min(left)).await;
            }
            events
                .try_send(FetchEvent::Discovered {
                    providers: found.len(),
                    seconds: started.elapsed().as_secs_f64(),
                })
                .ok();
            let fresh: Vec<ProviderInfo> = found
                .into_iter()
                .filter(|f| !request.providers.iter().any(|p| p.node_id == f.node_id))
                .collect();
            self.connect_all(&fresh, events).await
        };
        tokio::pin!(ticket, dht);
        let mut from_ticket: Option<Vec<Provider>> = None;
        let mut from_dht: Option<Vec<Provider>> = None;
        while from_ticket.is_none() || from_dht.is_none() {
            tokio::select! {
                r = &mut ticket, if from_ticket.is_none() => from_ticket = Some(r),
                r = &mut dht, if from_dht.is_none() => from_dht = Some(r),
            }
            // The ticket's providers answered: go (the download asks the
            // DHT again at once). Only the DHT answered: give the ticket a
            // moment, its providers are the ones the teacher named.
            if from_ticket.as_ref().is_some_and(|v| !v.is_empty()) {
                break;
            }
            if from_dht.as_ref().is_some_and(|v| !v.is_empty()) {
                let grace = tokio::time::sleep(OTHER_SIDE_GRACE);
                tokio::pin!(grace);
                while from_ticket.is_none() || from_dht.is_none() {
                    tokio::select! {
                        r = &mut ticket, if from_ticket.is_none() => from_ticket = Some(r),
                        r = &mut dht, if from_dht.is_none() => from_dht = Some(r),
                        _ = &mut grace => break,
                    }
                }
                break;
            }
        }
        let mut all = from_ticket.unwrap_or_default();
        all.extend(from_dht.unwrap_or_default());
        all
    }

    /// Connects to the ticket's providers and the DHT's, and gets the
    /// manifest (from the store when an earlier run got it). When nobody
    /// answers, or everyone refuses (a teacher's node busy with a class
    /// arriving at once: handshakes that time out, the connection limit),
    /// it tries again after a pause, [`FIRST_CONTACT_ATTEMPTS`] times in
    /// all, as long as a round can start within [`FIRST_CONTACT_WITHIN`]:
    /// a flash crowd must not turn into a crowd of failed fetches.
    /// The pauses differ from pupil to pupil, so that the retries do not
    /// arrive together either.
    async fn first_contact(
        &self,
        request: &FetchRequest,
        events: &mpsc::Sender<FetchEvent>,
    ) -> Result<(Vec<Provider>, SignedManifest, Option<(String, u64)>), FetchError> {
        let root = request.root;
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let mut providers = match self.control() {
                None => self.connect_all(&request.providers, events).await,
                Some(control) => {
                    control.add_peers(request.providers.clone()).await;
                    self.connect_ticket_and_dht(control, request, events).await
                }
            };
            if let Ok(m) = self.store().manifest(root).await {
                return Ok((providers, m, None));
            }
            let got = if providers.is_empty() {
                Err(FetchError::NoProvider(NOBODY.into()))
            } else {
                self.fetch_manifest(root, &mut providers).await
            };
            match got {
                Ok(first) => {
                    let m = self.store().manifest(root).await?;
                    return Ok((providers, m, Some(first)));
                }
                Err(FetchError::NoProvider(why)) if attempt < FIRST_CONTACT_ATTEMPTS => {
                    let pause = first_contact_pause(attempt, &self.id());
                    if started.elapsed() + pause >= FIRST_CONTACT_WITHIN {
                        return Err(FetchError::NoProvider(why));
                    }
                    tracing::info!(attempt, ?pause, %why, "nobody answered; trying again");
                    events
                        .try_send(FetchEvent::Retrying {
                            attempt,
                            seconds: pause.as_secs_f64(),
                        })
                        .ok();
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Dials every provider at once, each with the connect timeout.
    async fn connect_all(
        &self,
        infos: &[ProviderInfo],
        events: &mpsc::Sender<FetchEvent>,
    ) -> Vec<Provider> {
        let mut set = tokio::task::JoinSet::new();
        let own_id = self.id();
        let mut seen = HashSet::new();
        for info in infos {
            if info.node_id == own_id || !seen.insert(info.node_id) {
                continue;
            }
            let Some(info) = self.dialable(info.clone()) else {
                continue;
            };
            let endpoint = self.endpoint().clone();
            let timeout = self.config().connect_timeout;
            set.spawn(async move {
                let peer = data_encoding::HEXLOWER.encode(&info.node_id);
                let result = async {
                    let addr = crate::download::endpoint_addr(&info)
                        .ok_or_else(|| "invalid node id in ticket".to_string())?;
                    match tokio::time::timeout(timeout, endpoint.connect(addr, iroh_blobs::ALPN))
                        .await
                    {
                        Ok(Ok(conn)) => Ok(conn),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
                    }
                }
                .await;
                (peer, info, result)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = set.join_next().await {
            let Ok((peer, info, result)) = joined else {
                continue;
            };
            match result {
                Ok(conn) => out.push(Provider { peer, info, conn }),
                Err(reason) => {
                    tracing::warn!(%peer, %reason, "provider unreachable");
                    events
                        .try_send(FetchEvent::ConnectFailed { peer, reason })
                        .ok();
                }
            }
        }
        out
    }

    /// Gets the hash sequence and the manifest, bounded in size, from the
    /// first provider that delivers them. Returns who and how many bytes.
    async fn fetch_manifest(
        &self,
        root: Hash,
        providers: &mut Vec<Provider>,
    ) -> Result<(String, u64), FetchError> {
        // A hash sequence of MAX_FILES + 1 hashes, a manifest of at most
        // MAX_MANIFEST_BYTES: anything larger arrives incomplete and is
        // refused below.
        let root_chunks = (32 * (MAX_FILES as u64 + 1)).div_ceil(1024);
        let manifest_chunks = (MAX_MANIFEST_BYTES as u64).div_ceil(1024);
        let request = GetRequest::builder()
            .root(ChunkRanges::chunks(..root_chunks))
            .child(0, ChunkRanges::chunks(..manifest_chunks))
            .build(root);
        let mut errors = Vec::new();
        // Try providers in turn; one that fails is removed from the list.
        while let Some(p) = providers.first() {
            let get = self.store().execute_get(p.conn.clone(), request.clone());
            match tokio::time::timeout(self.config().idle_timeout, get.complete()).await {
                Ok(Ok(stats)) => {
                    if !self.store().has_complete(root).await? {
                        return Err(FetchError::UnsafeManifest(
                            "the bundle lists more files than allowed".into(),
                        ));
                    }
                    return Ok((p.peer.clone(), stats.payload_bytes_read));
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = %p.peer, "manifest fetch failed: {e}");
                    errors.push(format!("{}: {e}", &p.peer[..10]));
                    providers.remove(0);
                }
                Err(_) => {
                    errors.push(format!("{}: timed out", &p.peer[..10]));
                    providers.remove(0);
                }
            }
        }
        Err(FetchError::NoProvider(format!(
            "could not get the manifest from any provider ({})",
            errors.join("; ")
        )))
    }
}

/// Free bytes on the file system holding `path`, or its nearest existing
/// ancestor (a folder about to be created). None if none can be read.
pub fn available_space(path: &std::path::Path) -> Option<u64> {
    let mut p = Some(path);
    while let Some(candidate) = p {
        if candidate.exists() {
            let stat = nix::sys::statvfs::statvfs(candidate).ok()?;
            return Some(stat.blocks_available() as u64 * stat.fragment_size() as u64);
        }
        p = candidate.parent();
    }
    None
}

/// [`available_space`] on a blocking thread, for async code.
pub async fn free_space(path: &std::path::Path) -> Option<u64> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || available_space(&path))
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_contact_pauses_grow_and_differ_between_pupils() {
        let a = first_contact_pause(1, &[0; 32]);
        let b = first_contact_pause(1, &[255; 32]);
        assert_eq!(a, Duration::from_secs(2));
        assert_eq!(b, Duration::from_secs(3));
        assert_eq!(first_contact_pause(2, &[0; 32]), Duration::from_secs(4));
        assert!(first_contact_pause(9, &[0; 32]) <= Duration::from_secs(17));
    }
}
