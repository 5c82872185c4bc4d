//! The swarm protocol: who else is fetching a bundle, and which pieces
//! each peer has.
//!
//! A ticket names only the teacher. To turn a class into a swarm, every
//! node runs this small protocol (ALPN [`ALPN`]) beside iroh-blobs:
//!
//! ```text
//! fetcher                                   any node holding or fetching the bundle
//!   | -- Hello { root, me }  ------------------> |  remembers `me` as a peer of `root`
//!   | <- Welcome { pieces, have, peers } ------- |  its pieces, and the peers it knows
//!   | <- Update { pieces, peers } ... ---------- |  new pieces it got, new peers it met
//! ```
//!
//! Peer exchange rides on it: the teacher tells each pupil about the pupils
//! who said hello before, and tells earlier pupils about later ones, so a
//! ticket with one address leads to a class-wide swarm. The data itself
//! moves over iroh-blobs range requests; this protocol only carries
//! metadata, in length-prefixed postcard frames of bounded size.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

pub(crate) use classe_bundle::swarm_wire::{ClientMsg, Have, ServerMsg};
use classe_bundle::{swarm_wire, ProviderInfo};
use classe_store::Store;
use classe_swarm::{BitSet, Layout, PieceId};
use iroh::{endpoint::Connection, protocol::AcceptError};
use iroh_blobs::Hash;
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncReadExt, sync::mpsc};

/// The protocol's ALPN.
pub const ALPN: &[u8] = b"classe/swarm/1";

/// Most peers remembered per bundle, and sent in one Welcome.
const MAX_PEERS: usize = 64;
/// Updates queued for one subscriber before it is dropped as too slow.
const SUBSCRIBER_QUEUE: usize = 256;
/// Sessions one connection may hold open at once (one per bundle).
const MAX_SESSIONS_PER_CONNECTION: usize = 8;
/// Most peers remembered per bundle as leaving when done; past it the
/// list starts again (a forgotten leaver is treated as a sharer: the
/// class's one-copy rule, at worst slower for it).
const MAX_LEAVERS: usize = 4096;

/// The seed's verdict on a request (see [`Registry::admit_piece`]).
pub(crate) enum Verdict {
    /// Not a request the seed rule applies to.
    Free,
    /// Declined: the pieces are on their way to someone, or just left.
    Declined,
    /// Admitted: the guard undoes the admission unless told it was sent.
    Admitted(Admission),
}

/// Pieces admitted by the seed rule and not yet sent. Dropping it without
/// [`Admission::sent`] gives them back: whatever ends a request early (the
/// peer left, its connection died, the task was cancelled) cannot leave
/// them "on their way" for ever. That leak once made a seed decline the
/// same pieces to a whole class until every fetch stalled.
pub(crate) struct Admission {
    registry: Arc<Registry>,
    root: Hash,
    pieces: std::ops::RangeInclusive<PieceId>,
    settled: bool,
}

impl Admission {
    /// The pieces left in full.
    pub(crate) fn sent(mut self) {
        self.settled = true;
        self.registry.sent_piece(self.root, self.pieces.clone());
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.settled {
            self.registry.undo_piece(self.root, self.pieces.clone());
        }
    }
}

pub(crate) async fn write_frame<T: Serialize>(
    send: &mut iroh::endpoint::SendStream,
    msg: &T,
) -> std::io::Result<()> {
    let frame = swarm_wire::encode(msg).map_err(std::io::Error::other)?;
    send.write_all(&frame).await?;
    Ok(())
}

pub(crate) async fn read_frame<T: for<'a> Deserialize<'a>>(
    recv: &mut iroh::endpoint::RecvStream,
) -> std::io::Result<Option<T>> {
    let len = match recv.read_u32().await {
        Ok(len) => swarm_wire::check_len(len).map_err(std::io::Error::other)?,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; len];
    AsyncReadExt::read_exact(recv, &mut buf).await?;
    swarm_wire::decode(&buf)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// The pieces of a bundle: its distinct non-empty file blobs, in manifest
/// order, cut into [`classe_swarm::DEFAULT_PIECE_SIZE`] pieces. Both sides
/// compute it from the signed manifest, so they agree on piece numbers.
#[derive(Debug, Clone)]
pub(crate) struct BundleLayout {
    pub layout: Layout,
    /// Blob of each layout file.
    pub blobs: Vec<Hash>,
    /// Blob → index in `blobs`.
    pub index: HashMap<Hash, usize>,
}

impl BundleLayout {
    pub fn from_manifest(manifest: &classe_bundle::Manifest) -> Self {
        let mut blobs = Vec::new();
        let mut sizes = Vec::new();
        let mut index = HashMap::new();
        for f in &manifest.files {
            let hash = Hash::from_bytes(f.hash);
            if f.size == 0 || index.contains_key(&hash) {
                continue;
            }
            index.insert(hash, blobs.len());
            blobs.push(hash);
            sizes.push(f.size);
        }
        Self {
            layout: Layout::new(&sizes, classe_swarm::DEFAULT_PIECE_SIZE),
            blobs,
            index,
        }
    }
}

#[derive(Debug)]
struct RootState {
    layout: Option<Arc<BundleLayout>>,
    have: BitSet,
    /// Set once we hold the whole bundle: the seed's resend rule, and
    /// when it started (its clock).
    policy: Option<(classe_swarm::SeedPolicy, std::time::Instant)>,
    peers: VecDeque<ProviderInfo>,
    subscribers: Vec<(iroh::EndpointId, mpsc::Sender<ServerMsg>)>,
    /// Peers that said they stop serving once done (bounded by
    /// [`MAX_LEAVERS`]).
    leavers: HashSet<iroh::EndpointId>,
}

impl RootState {
    fn new() -> Self {
        Self {
            layout: None,
            have: BitSet::new(0),
            policy: None,
            peers: VecDeque::new(),
            subscribers: Vec::new(),
            leavers: HashSet::new(),
        }
    }

    fn check_complete(&mut self) {
        if self.policy.is_none() && self.layout.is_some() && self.have.is_full() {
            self.policy = Some((
                classe_swarm::SeedPolicy::new(self.have.len()),
                std::time::Instant::now(),
            ));
        }
    }

    fn broadcast(&mut self, msg: ServerMsg, except: Option<iroh::EndpointId>) {
        self.subscribers.retain(|(id, tx)| {
            if Some(*id) == except {
                return !tx.is_closed();
            }
            // A subscriber too slow to keep up is dropped, not waited for.
            tx.try_send(msg.clone()).is_ok()
        });
    }
}

/// What this node knows about each bundle's swarm. Shared by the protocol
/// handler (answering others) and the fetch driver (our own progress).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    roots: Mutex<HashMap<Hash, RootState>>,
}

impl Registry {
    fn with<R>(&self, root: Hash, f: impl FnOnce(&mut RootState) -> R) -> R {
        let mut roots = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        f(roots.entry(root).or_insert_with(RootState::new))
    }

    /// Starts tracking our own progress on `root`.
    pub fn start(&self, root: Hash, layout: Arc<BundleLayout>, have: BitSet) {
        self.with(root, |s| {
            s.layout = Some(layout);
            s.have = have;
            s.check_complete();
        });
    }

    /// We hold all of `root` (we shared it, or finished fetching it).
    pub fn serve(&self, root: Hash, layout: Arc<BundleLayout>) {
        let have = BitSet::full(layout.layout.piece_count());
        self.start(root, layout, have);
    }

    /// The seed's rule for a request from `from`: [`Verdict::Free`] if the
    /// request is not for pieces of a bundle we hold whole; otherwise
    /// declined or admitted. A request for a run of pieces is admitted
    /// only if every piece is.
    pub fn admit_piece(
        self: &Arc<Self>,
        request: &iroh_blobs::protocol::GetRequest,
        from: Option<iroh::EndpointId>,
    ) -> Verdict {
        let Some((start, end)) = single_range(request) else {
            return Verdict::Free;
        };
        let mut roots = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        for (root, state) in roots.iter_mut() {
            let (Some(layout), Some((policy, clock))) = (&state.layout, &mut state.policy) else {
                continue;
            };
            let Some(&file) = layout.index.get(&request.hash) else {
                continue;
            };
            // One downloader (or none in a swarm session): nobody to spread
            // pieces for, and a pupil resuming after a crash asks again for
            // pieces it lost; no rule.
            let live = state
                .subscribers
                .iter()
                .filter(|(_, tx)| !tx.is_closed())
                .count();
            if live <= 1 {
                tracing::debug!(live, "seed policy: no rule");
                return Verdict::Free;
            }
            let Some(first) = layout.layout.piece_at(file, start) else {
                return Verdict::Free;
            };
            let last = layout
                .layout
                .piece_at(file, end.saturating_sub(1))
                .unwrap_or(first);
            // A peer that leaves when done (it said so) passes nothing on:
            // holding pieces back from it only makes it wait (the class
            // simulation: 40 such pupils took 3.6 times longer under the
            // rule, half of them unfinished after two minutes without
            // it), and its copy does not count as one for the class.
            if from.is_some_and(|id| state.leavers.contains(&id)) {
                tracing::debug!(first, last, "seed policy: a leaver, no rule");
                return Verdict::Free;
            }
            let admitted = policy.admit_run(first..=last, clock.elapsed());
            tracing::debug!(first, last, admitted, "seed policy");
            if !admitted {
                return Verdict::Declined;
            }
            return Verdict::Admitted(Admission {
                registry: self.clone(),
                root: *root,
                pieces: first..=last,
                settled: false,
            });
        }
        Verdict::Free
    }

    /// Admitted pieces were not sent after all.
    fn undo_piece(&self, root: Hash, pieces: std::ops::RangeInclusive<PieceId>) {
        self.with(root, |s| {
            if let Some((policy, _)) = &mut s.policy {
                policy.undo(pieces);
            }
        });
    }

    /// Admitted pieces have been sent.
    fn sent_piece(&self, root: Hash, pieces: std::ops::RangeInclusive<PieceId>) {
        self.with(root, |s| {
            if let Some((policy, clock)) = &mut s.policy {
                policy.finished(pieces, clock.elapsed());
            }
        });
    }

    /// We now have `piece` of `root`: tell subscribers.
    pub fn piece_done(&self, root: Hash, piece: PieceId) {
        self.with(root, |s| {
            if s.have.insert(piece) {
                s.check_complete();
                s.broadcast(
                    ServerMsg::Update {
                        pieces: vec![piece],
                        peers: vec![],
                    },
                    None,
                );
            }
        });
    }

    /// Remembers a peer of `root` (learned from a session), without
    /// announcing it.
    pub fn remember(&self, root: Hash, info: ProviderInfo) {
        self.with(root, |s| remember(&mut s.peers, info));
    }

    /// Forgets a peer of `root` that has left.
    fn forget(&self, root: Hash, id: iroh::EndpointId) {
        self.with(root, |s| {
            s.peers.retain(|p| p.node_id != *id.as_bytes());
            s.leavers.remove(&id);
        });
    }

    /// The peers known for `root`.
    pub fn peers(&self, root: Hash) -> Vec<ProviderInfo> {
        self.with(root, |s| s.peers.iter().cloned().collect())
    }

    fn hello(
        &self,
        root: Hash,
        from: iroh::EndpointId,
        me: Option<ProviderInfo>,
        leaves_when_done: bool,
        complete: Option<Arc<BundleLayout>>,
    ) -> (ServerMsg, mpsc::Receiver<ServerMsg>) {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let welcome = self.with(root, |s| {
            if s.layout.is_none() {
                if let Some(layout) = complete {
                    s.have = BitSet::full(layout.layout.piece_count());
                    s.layout = Some(layout);
                    s.check_complete();
                }
            }
            let peers: Vec<ProviderInfo> = s
                .peers
                .iter()
                .filter(|p| p.node_id != *from.as_bytes())
                .take(MAX_PEERS)
                .cloned()
                .collect();
            if let Some(me) = me {
                // Tell the others about the newcomer: peer exchange.
                s.broadcast(
                    ServerMsg::Update {
                        pieces: vec![],
                        peers: vec![me.clone()],
                    },
                    Some(from),
                );
                remember(&mut s.peers, me);
            }
            s.subscribers.retain(|(id, _)| *id != from);
            s.subscribers.push((from, tx));
            if leaves_when_done {
                if s.leavers.len() >= MAX_LEAVERS {
                    s.leavers.clear();
                }
                s.leavers.insert(from);
            } else {
                s.leavers.remove(&from);
            }
            let (pieces, have) = match &s.layout {
                None => (0, Have::None),
                Some(l) if s.have.is_full() => (l.layout.piece_count(), Have::All),
                Some(l) => (l.layout.piece_count(), Have::Some(words(&s.have))),
            };
            ServerMsg::Welcome {
                pieces,
                have,
                peers,
            }
        });
        (welcome, rx)
    }
}

/// The byte range of a request for one bounded range of one blob.
fn single_range(request: &iroh_blobs::protocol::GetRequest) -> Option<(u64, u64)> {
    if !request.ranges.is_blob() {
        tracing::debug!(?request, "seed policy: not a blob request");
        return None;
    }
    let ranges = request.ranges.iter().next()?;
    let mut iter = ranges.iter();
    let first = iter.next()?;
    if iter.next().is_some() {
        tracing::debug!(?request, "seed policy: several ranges");
        return None;
    }
    let range_collections::range_set::RangeSetRange::Range(r) = first else {
        tracing::debug!(?request, "seed policy: open range");
        return None;
    };
    Some((r.start.0 * 1024, r.end.0 * 1024))
}

fn remember(peers: &mut VecDeque<ProviderInfo>, info: ProviderInfo) {
    peers.retain(|p| p.node_id != info.node_id);
    peers.push_front(info);
    peers.truncate(MAX_PEERS);
}

fn words(set: &BitSet) -> Vec<u64> {
    let mut words = vec![0u64; (set.len() as usize).div_ceil(64)];
    for i in set.iter() {
        words[i as usize / 64] |= 1 << (i % 64);
    }
    words
}

/// Decodes a [`Have`] for a layout of `pieces` pieces; None if it does not
/// fit.
pub(crate) fn have_set(have: &Have, pieces: u32) -> Option<BitSet> {
    match have {
        Have::None => Some(BitSet::new(pieces)),
        Have::All => Some(BitSet::full(pieces)),
        Have::Some(words) => {
            if words.len() != (pieces as usize).div_ceil(64) {
                return None;
            }
            let mut set = BitSet::new(pieces);
            for (w, word) in words.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let b = bits.trailing_zeros();
                    bits &= bits - 1;
                    let i = w as u32 * 64 + b;
                    if i >= pieces {
                        return None;
                    }
                    set.insert(i);
                }
            }
            Some(set)
        }
    }
}

/// Serves the swarm protocol.
#[derive(Debug, Clone)]
pub(crate) struct Handler {
    pub registry: Arc<Registry>,
    pub store: Store,
}

impl iroh::protocol::ProtocolHandler for Handler {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let from = connection.remote_id();
        let sessions = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS_PER_CONNECTION));
        loop {
            let Ok((send, recv)) = connection.accept_bi().await else {
                return Ok(());
            };
            let Ok(permit) = sessions.clone().try_acquire_owned() else {
                // Too many sessions on one connection: refuse this one.
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.session(from, send, recv).await {
                    tracing::debug!(peer = %from.fmt_short(), "swarm session ended: {e}");
                }
                drop(permit);
            });
        }
    }
}

impl Handler {
    async fn session(
        &self,
        from: iroh::EndpointId,
        mut send: iroh::endpoint::SendStream,
        mut recv: iroh::endpoint::RecvStream,
    ) -> std::io::Result<()> {
        let Some(ClientMsg::Hello {
            root,
            me,
            leaves_when_done,
        }) = read_frame(&mut recv).await?
        else {
            return Ok(());
        };
        // A peer may describe only itself.
        let me = me.filter(|m| {
            m.node_id == *from.as_bytes() && m.addrs.len() <= classe_bundle::ticket::MAX_ADDRS
        });
        let root = Hash::from_bytes(root);
        let complete = self.complete_layout(root).await;
        let (welcome, mut updates) =
            self.registry
                .hello(root, from, me, leaves_when_done, complete);
        let result = async {
            write_frame(&mut send, &welcome).await?;
            loop {
                tokio::select! {
                    msg = updates.recv() => match msg {
                        Some(msg) => write_frame(&mut send, &msg).await?,
                        None => return Ok(()),
                    },
                    // The fetcher closes its side when it is done.
                    r = recv.read_u8() => {
                        if r.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        .await;
        // A peer that leaves when done is gone with its session: handing
        // it out would send classmates to dial an address nobody answers
        // (and hold their exit up while the handshake times out).
        if leaves_when_done {
            self.registry.forget(root, from);
        }
        result
    }

    /// The layout of `root` if the store holds it complete.
    async fn complete_layout(&self, root: Hash) -> Option<Arc<BundleLayout>> {
        let info = self.store.info(root).await.ok()??;
        info.complete
            .then(|| Arc::new(BundleLayout::from_manifest(info.manifest.manifest())))
    }
}

#[cfg(test)]
mod tests {
    use iroh_blobs::protocol::{ChunkRanges, ChunkRangesExt, GetRequest};

    use super::*;

    /// A registry holding one bundle of one 1 MiB file whole, with two
    /// pupils in session (so the seed rule applies), and a request for its
    /// first piece.
    fn class() -> (Arc<Registry>, GetRequest, Vec<mpsc::Receiver<ServerMsg>>) {
        let file = Hash::new(b"file");
        let layout = Arc::new(BundleLayout {
            layout: Layout::new(&[1 << 20], classe_swarm::DEFAULT_PIECE_SIZE),
            blobs: vec![file],
            index: HashMap::from([(file, 0)]),
        });
        let root = Hash::new(b"root");
        let registry = Arc::new(Registry::default());
        registry.serve(root, layout);
        let mut sessions = Vec::new();
        for k in 1..=2u8 {
            let id = iroh::SecretKey::from_bytes(&[k; 32]).public();
            let (_, rx) = registry.hello(root, id, None, false, None);
            sessions.push(rx);
        }
        let request = GetRequest::blob_ranges(
            file,
            ChunkRanges::bytes(0..classe_swarm::DEFAULT_PIECE_SIZE),
        );
        (registry, request, sessions)
    }

    #[test]
    fn an_admission_dropped_unsent_gives_its_piece_back() {
        let (registry, request, _sessions) = class();
        let Verdict::Admitted(first) = registry.admit_piece(&request, None) else {
            panic!("the first request for a piece is admitted");
        };
        assert!(
            matches!(registry.admit_piece(&request, None), Verdict::Declined),
            "a piece on its way is not sent twice"
        );
        // The request ends early by any path (the peer left while it
        // waited in line, the task was cancelled): nothing was sent.
        drop(first);
        assert!(
            matches!(registry.admit_piece(&request, None), Verdict::Admitted(_)),
            "the piece stays 'on its way' for ever"
        );
    }

    #[test]
    fn a_sent_piece_waits_and_a_leaver_is_served_anyway() {
        let (registry, request, _sessions) = class();
        let Verdict::Admitted(first) = registry.admit_piece(&request, None) else {
            panic!("the first request for a piece is admitted");
        };
        first.sent();
        assert!(matches!(
            registry.admit_piece(&request, None),
            Verdict::Declined
        ));
        // A pupil that said it leaves when done passes nothing on: no rule.
        let leaver = iroh::SecretKey::from_bytes(&[9; 32]).public();
        let root = Hash::new(b"root");
        let (_, _rx) = registry.hello(root, leaver, None, true, None);
        assert!(matches!(
            registry.admit_piece(&request, Some(leaver)),
            Verdict::Free
        ));
    }
}
