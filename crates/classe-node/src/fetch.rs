//! Fetching a bundle: connect, manifest, verify and trust, files, verify.
//!
//! Order matters. The only bytes taken from a stranger before the author is
//! trusted are the hash sequence and the manifest, both bounded in size and
//! verified against the root hash while streaming. File content is
//! requested only once the signature checks out, the signer is the author
//! the ticket named, and the trust policy said yes.
//!
//! Files are spread over all providers that answered: each provider works
//! through a shared queue of missing files, one at a time; a provider that
//! fails (disconnects, stalls, or sends bytes that fail BLAKE3 verification)
//! is dropped and its file goes back to the queue for the others.
//! iroh-blobs asks only for ranges not already in the store, so an
//! interrupted fetch resumes where it stopped.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use classe_bundle::{
    limits::{MAX_FILES, MAX_MANIFEST_BYTES},
    AuthorKey, ManifestError, ProviderInfo, SignedManifest,
};
use classe_store::ReadError;
use iroh::{endpoint::Connection, EndpointAddr, PublicKey, TransportAddr};
use iroh_blobs::{
    api::remote::GetProgressItem,
    get::GetError,
    protocol::{ChunkRanges, ChunkRangesExt, GetRequest},
    Hash, HashAndFormat,
};
use n0_future::StreamExt;
use tokio::sync::mpsc;

use crate::{provider::Pacer, Node};

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

/// The trust policy's answer for a manifest's signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustDecision {
    /// Go on and download the files.
    Trusted,
    /// Stop; download nothing more.
    Refused,
}

/// Progress, for a progress bar. Sent with `try_send`: a slow reader misses
/// updates rather than slowing the download.
#[derive(Debug, Clone)]
pub enum FetchEvent {
    /// A provider could not be reached.
    ConnectFailed {
        /// Its node id (hex).
        peer: String,
        /// Why.
        reason: String,
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
            e @ (ReadError::BadHashSeq | ReadError::Mismatch | ReadError::MissingManifest) => {
                FetchError::Verification(e.to_string())
            }
            ReadError::Store(e) => FetchError::Store(e),
        }
    }
}

struct Provider {
    peer: String,
    conn: Connection,
}

/// Shared state of the file phase.
struct Work {
    /// Files nobody is fetching yet, and how many are being fetched.
    queue: Mutex<Queue>,
    /// Wakes idle workers when a file is put back or the last one ends.
    changed: tokio::sync::Notify,
    done_bytes: std::sync::atomic::AtomicU64,
    per_provider: Mutex<BTreeMap<String, u64>>,
    /// Set when writing to our own store failed (disk full, permissions):
    /// no provider can fix that, so everyone stops.
    local_failure: Mutex<Option<String>>,
}

#[derive(Default)]
struct Queue {
    todo: VecDeque<(Hash, u64)>,
    active: usize,
}

impl Work {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next file to fetch. An idle worker waits while others are still
    /// busy, since a file they fail on comes back to the queue; it gets
    /// `None` only once nothing is queued and nothing is in progress.
    async fn next(&self) -> Option<(Hash, u64)> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register before looking, so a wake-up between the look and
            // the wait is not lost.
            notified.as_mut().enable();
            {
                let mut q = self.lock();
                if let Some(item) = q.todo.pop_front() {
                    q.active += 1;
                    return Some(item);
                }
                if q.active == 0 {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// A worker is done with a file; `retry` puts it back for others.
    fn finish(&self, item: (Hash, u64), retry: bool) {
        {
            let mut q = self.lock();
            q.active -= 1;
            if retry {
                q.todo.push_back(item);
            }
        }
        self.changed.notify_waiters();
    }

    /// Stops everyone: a local failure no provider can fix.
    fn abort(&self, reason: String) {
        *self.local_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        {
            let mut q = self.lock();
            q.todo.clear();
            q.active = q.active.saturating_sub(1);
        }
        self.changed.notify_waiters();
    }
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
        let mut received = 0u64;

        let mut providers = self.connect_all(&request.providers, &events).await;

        // 1. The manifest: from the store if an earlier run got it.
        let manifest = match store.manifest(root).await {
            Ok(m) => m,
            Err(_) => {
                if providers.is_empty() {
                    return Err(FetchError::NoProvider(
                        "none of the ticket's providers answered; is the teacher's classe still running and reachable?".into(),
                    ));
                }
                let (peer, bytes) = self.fetch_manifest(root, &mut providers).await?;
                *per_provider.entry(peer.clone()).or_default() += bytes;
                self.traffic_handle().add_received(&peer, root, bytes);
                received += bytes;
                store.manifest(root).await?
            }
        };

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
        }

        // 3. Pin, then the files that are not complete yet.
        store.pin(root).await?;
        let files = &manifest.manifest().files;
        self.account_bundle(root, files.iter().map(|f| Hash::from_bytes(f.hash)));
        let total_bytes = manifest.manifest().total_size();
        let mut already = 0u64;
        let mut missing = VecDeque::new();
        let mut seen = HashSet::new();
        for f in files {
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
            if !store.blob_complete(hash, f.size).await? && seen.insert(hash) {
                missing.push_back((hash, f.size));
            }
        }
        // Duplicate contents were counted once per path; cap at the total.
        already = already.min(total_bytes);
        let needed: u64 = missing.iter().map(|(_, size)| *size).sum();
        if let Some(free) = available_space(store.dir()) {
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
        events
            .try_send(FetchEvent::Started {
                total_bytes,
                have_bytes: already,
                providers: providers.len(),
            })
            .ok();

        if !missing.is_empty() {
            if providers.is_empty() {
                return Err(FetchError::NoProvider(
                    "none of the ticket's providers answered; is the teacher's classe still running and reachable?".into(),
                ));
            }
            // Largest first: the long transfers start early and the small
            // ones fill the gaps at the end.
            let mut missing: Vec<_> = missing.into_iter().collect();
            missing.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
            let work = Arc::new(Work {
                queue: Mutex::new(Queue {
                    todo: missing.into_iter().collect(),
                    active: 0,
                }),
                changed: tokio::sync::Notify::new(),
                done_bytes: std::sync::atomic::AtomicU64::new(already),
                per_provider: Mutex::new(BTreeMap::new()),
                local_failure: Mutex::new(None),
            });
            let pacer = self.config().max_download.map(|r| Arc::new(Pacer::new(r)));
            let mut workers = tokio::task::JoinSet::new();
            for provider in providers.drain(..) {
                let work = work.clone();
                let store = store.clone();
                let events = events.clone();
                let traffic = self.traffic_handle().clone();
                let idle = self.config().idle_timeout;
                let pacer = pacer.clone();
                workers.spawn(async move {
                    provider_worker(provider, root, work, store, events, traffic, idle, pacer).await
                });
            }
            while workers.join_next().await.is_some() {}
            let work = Arc::try_unwrap(work)
                .map_err(|_| FetchError::Store("internal: fetch workers still running".into()))?;
            if let Some(reason) = work
                .local_failure
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
            {
                return Err(FetchError::Store(reason));
            }
            for (peer, bytes) in work
                .per_provider
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
            {
                received += bytes;
                *per_provider.entry(peer).or_default() += bytes;
            }
        }

        // 4. Everything verified while streaming; check completeness and
        // sizes against the signed manifest before calling it done.
        let mut incomplete = 0;
        for f in files {
            if f.size > 0
                && !store
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
        Ok(FetchReport {
            root,
            manifest,
            total_bytes,
            already_had_bytes: already,
            received_bytes: received,
            per_provider,
            elapsed: started.elapsed(),
        })
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
            let endpoint = self.endpoint().clone();
            let info = info.clone();
            let timeout = self.config().connect_timeout;
            set.spawn(async move {
                let peer = data_encoding::HEXLOWER.encode(&info.node_id);
                let result = async {
                    let id = PublicKey::from_bytes(&info.node_id)
                        .map_err(|_| "invalid node id in ticket".to_string())?;
                    let mut addrs: Vec<TransportAddr> =
                        info.addrs.iter().copied().map(TransportAddr::Ip).collect();
                    if let Some(url) = &info.relay_url {
                        if let Ok(url) = url.parse() {
                            addrs.push(TransportAddr::Relay(url));
                        }
                    }
                    let addr = EndpointAddr::from_parts(id, addrs);
                    match tokio::time::timeout(timeout, endpoint.connect(addr, iroh_blobs::ALPN))
                        .await
                    {
                        Ok(Ok(conn)) => Ok(conn),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
                    }
                }
                .await;
                (peer, result)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = set.join_next().await {
            let Ok((peer, result)) = joined else { continue };
            match result {
                Ok(conn) => out.push(Provider { peer, conn }),
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
            let get = self
                .store()
                .blobs()
                .remote()
                .execute_get(p.conn.clone(), request.clone());
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

#[allow(clippy::too_many_arguments)]
async fn provider_worker(
    provider: Provider,
    root: Hash,
    work: Arc<Work>,
    store: classe_store::Store,
    events: mpsc::Sender<FetchEvent>,
    traffic: Arc<crate::Traffic>,
    idle: Duration,
    pacer: Option<Arc<Pacer>>,
) {
    while let Some((hash, size)) = work.next().await {
        let progress = store
            .blobs()
            .remote()
            .fetch(provider.conn.clone(), HashAndFormat::raw(hash));
        let mut stream = std::pin::pin!(progress.stream());
        let mut last = 0u64;
        let outcome: Result<(), String> = loop {
            match tokio::time::timeout(idle, stream.next()).await {
                Err(_) => break Err(format!("no data for {}s", idle.as_secs())),
                Ok(None) => break Err("transfer ended without a result".into()),
                Ok(Some(GetProgressItem::Progress(n))) => {
                    let delta = n.saturating_sub(last);
                    last = n;
                    account(&work, &traffic, &provider.peer, root, delta, &events);
                    if let Some(pacer) = &pacer {
                        tokio::time::sleep_until(pacer.reserve(delta)).await;
                    }
                }
                Ok(Some(GetProgressItem::Done(stats))) => {
                    let delta = stats.payload_bytes_read.saturating_sub(last);
                    account(&work, &traffic, &provider.peer, root, delta, &events);
                    break Ok(());
                }
                Ok(Some(GetProgressItem::Error(GetError::LocalFailure { source, .. }))) => {
                    work.abort(format!("cannot write to the local store: {source}"));
                    return;
                }
                Ok(Some(GetProgressItem::Error(e))) => break Err(e.to_string()),
            }
        };
        let complete = store.blob_complete(hash, size).await.unwrap_or(false);
        match outcome {
            Ok(()) if complete => work.finish((hash, size), false),
            Ok(()) => {
                // The provider claimed success but the blob is not whole
                // (it does not have it all). Let someone else try.
                work.finish((hash, size), true);
                drop_provider(&provider, "does not have the whole file", &events);
                return;
            }
            Err(reason) => {
                work.finish((hash, size), !complete);
                drop_provider(&provider, &reason, &events);
                return;
            }
        }
    }
}

/// Free bytes on the file system holding `path`.
fn available_space(path: &std::path::Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

fn account(
    work: &Work,
    traffic: &crate::Traffic,
    peer: &str,
    root: Hash,
    delta: u64,
    events: &mpsc::Sender<FetchEvent>,
) {
    if delta == 0 {
        return;
    }
    *work
        .per_provider
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(peer.to_string())
        .or_default() += delta;
    traffic.add_received(peer, root, delta);
    let done = work
        .done_bytes
        .fetch_add(delta, std::sync::atomic::Ordering::Relaxed)
        + delta;
    events
        .try_send(FetchEvent::Progress { done_bytes: done })
        .ok();
}

fn drop_provider(provider: &Provider, reason: &str, events: &mpsc::Sender<FetchEvent>) {
    tracing::warn!(peer = %provider.peer, %reason, "dropping provider");
    provider.conn.close(0u32.into(), b"dropped");
    events
        .try_send(FetchEvent::ProviderDropped {
            peer: provider.peer.clone(),
            reason: reason.to_string(),
        })
        .ok();
}
