//! The file phase of a fetch: piece by piece, from every peer at once.
//!
//! ```text
//!                 +--------------------- driver (one task) ----------------------+
//!  sessions  ---> | events ─> classe_swarm::Scheduler ─> actions                  |
//!  (swarm ALPN)   |   Welcome/Update (have, peers)        Request ─> request task |--> iroh-blobs
//!  requests  ---> |   Progress, PieceDone                 Cancel  ─> abort        |    range get
//!  connects  ---> |   Connected                           DropPeer ─> close       |
//!                 +---------------------------------------------------------------+
//! ```
//!
//! The scheduler decides; this driver only does what it says over real
//! connections and reports back. Every piece is a range request of one
//! blob, verified by iroh-blobs while it streams; pieces we hold are
//! announced at once to everyone subscribed to us, so classmates can fetch
//! them from us before we have the whole lesson.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use classe_bundle::ProviderInfo;
use classe_swarm::{Action, BitSet, Config, Event, FailReason, PieceId, Scheduler};
use iroh::{endpoint::Connection, EndpointAddr, PublicKey, TransportAddr};
use iroh_blobs::{
    api::remote::GetProgressItem,
    get::{fsm::DecodeError, GetError},
    protocol::{ChunkRanges, ChunkRangesExt, GetRequest, ERR_LIMIT, ERR_PERMISSION},
    Hash,
};
use n0_future::StreamExt;
use tokio::{sync::mpsc, task::AbortHandle};

use crate::{
    fetch::FetchEvent,
    provider::Pacer,
    swarm::{self, BundleLayout, ClientMsg, ServerMsg},
    FetchError, Node,
};

/// Most peers connected at once for one download.
const MAX_PEERS: usize = 32;
/// Bytes of progress a request accumulates before reporting them.
const PROGRESS_BATCH: u64 = 128 * 1024;
/// Events queued for the driver.
const EVENT_QUEUE: usize = 4096;

type NodeKey = [u8; 32];

/// A provider already connected for iroh-blobs before the file phase.
pub(crate) struct Connected {
    pub info: ProviderInfo,
    pub conn: Connection,
}

enum DriverEvent {
    Connected(ProviderInfo, Result<Connection, String>),
    Welcome {
        peer: NodeKey,
        pieces: u32,
        have: swarm::Have,
        peers: Vec<ProviderInfo>,
    },
    Update {
        peer: NodeKey,
        pieces: Vec<PieceId>,
        peers: Vec<ProviderInfo>,
    },
    /// The peer does not speak the swarm protocol: treat it as a plain
    /// provider of the whole bundle.
    NoSession(NodeKey),
    SessionEnded(NodeKey),
    Progress(NodeKey, u64),
    PieceDone(NodeKey, PieceId, Result<(), Outcome>),
    /// Providers the DHT knows of now.
    Discovered(Vec<ProviderInfo>),
}

/// Pause before the download's first DHT lookup (the fetch has just done
/// one, or the ticket's providers answered); it doubles up to
/// [`LOOKUP_MAX_EVERY`].
const LOOKUP_FIRST_EVERY: Duration = Duration::from_secs(2);
const LOOKUP_MAX_EVERY: Duration = Duration::from_secs(30);
/// How long one lookup may take.
const LOOKUP_WITHIN: Duration = Duration::from_secs(5);
/// DHT lookups run only while fewer peers than this are connected.
const LOOKUP_BELOW_PEERS: usize = 4;
/// With discovery running, how long a download with no peer at all waits
/// for one to turn up before giving up.
const ALONE_PATIENCE: Duration = Duration::from_secs(15);
/// A download that receives nothing for this long says so, and asks
/// every provider it knows of again (the ticket's, the ones peer exchange
/// and the DHT named, a fresh DHT lookup). It gives up after
/// [`crate::NodeConfig::stall_timeout`] without a byte.
pub(crate) const STALL_WARN: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Outcome {
    Fail(FailReason, String),
    Local(String),
}

struct Peer {
    conn: Connection,
    session: AbortHandle,
}

/// A request in flight, by piece.
struct Req {
    handle: AbortHandle,
    /// The only piece of its request (so it may be cancelled alone).
    alone: bool,
}

/// Most pieces one range request may carry (4 MiB at 256 KiB pieces):
/// long enough that per-request setup is noise, short enough that a slow
/// peer's run does not hold many pieces hostage.
const MAX_RUN: usize = 16;

/// Consecutive pieces of one blob, asked of one peer in one request.
struct Run {
    peer: NodeKey,
    hash: Hash,
    /// (piece, offset, len), ascending and contiguous.
    pieces: Vec<(PieceId, (u64, u64))>,
}

/// Groups piece requests into runs: same peer, same blob, contiguous.
fn runs(layout: &BundleLayout, mut wanted: Vec<(NodeKey, PieceId)>) -> Vec<Run> {
    wanted.sort_unstable();
    let mut out: Vec<Run> = Vec::new();
    for (peer, piece) in wanted {
        let Some(span) = layout.layout.span(piece) else {
            continue;
        };
        let hash = layout.blobs[span.file];
        if let Some(last) = out.last_mut() {
            let (prev_id, (prev_off, prev_len)) = last.pieces[last.pieces.len() - 1];
            if last.peer == peer
                && last.hash == hash
                && prev_id + 1 == piece
                && prev_off + prev_len == span.offset
                && last.pieces.len() < MAX_RUN
            {
                last.pieces.push((piece, (span.offset, span.len)));
                continue;
            }
        }
        out.push(Run {
            peer,
            hash,
            pieces: vec![(piece, (span.offset, span.len))],
        });
    }
    out
}

/// What the file phase did.
pub(crate) struct Report {
    pub per_provider: BTreeMap<String, u64>,
    /// When the first byte from each provider arrived.
    pub first_byte: BTreeMap<String, Instant>,
    pub received: u64,
}

fn hex(key: &NodeKey) -> String {
    data_encoding::HEXLOWER.encode(key)
}

pub(crate) fn endpoint_addr(info: &ProviderInfo) -> Option<EndpointAddr> {
    let id = PublicKey::from_bytes(&info.node_id).ok()?;
    let mut addrs: Vec<TransportAddr> = info.addrs.iter().copied().map(TransportAddr::Ip).collect();
    if let Some(url) = info.relay_url.as_ref().and_then(|u| u.parse().ok()) {
        addrs.push(TransportAddr::Relay(url));
    }
    Some(EndpointAddr::from_parts(id, addrs))
}

/// True if `have` includes all of `want`.
fn covers(have: &ChunkRanges, want: &ChunkRanges) -> bool {
    let both: ChunkRanges = want & have;
    both == *want
}

/// Which pieces of the layout are complete in the store.
async fn local_pieces(store: &classe_store::Store, layout: &BundleLayout) -> BitSet {
    let mut have = BitSet::new(layout.layout.piece_count());
    for (i, hash) in layout.blobs.iter().enumerate() {
        let Ok(bitfield) = store.blobs().blobs().observe(*hash).await else {
            continue;
        };
        for piece in layout.layout.file_pieces(i) {
            let Some(span) = layout.layout.span(piece) else {
                continue;
            };
            let want = ChunkRanges::bytes(span.offset..span.offset + span.len);
            if covers(&bitfield.ranges, &want) {
                have.insert(piece);
            }
        }
    }
    have
}

impl Node {
    /// Downloads every missing piece of `root` from `providers` and from
    /// every peer they lead to.
    pub(crate) async fn download(
        &self,
        root: Hash,
        layout: Arc<BundleLayout>,
        providers: Vec<Connected>,
        events: mpsc::Sender<FetchEvent>,
        done_before: u64,
    ) -> Result<Report, FetchError> {
        let store = self.store().clone();
        let started = Instant::now();
        let have = local_pieces(&store, &layout).await;
        self.swarm_registry()
            .start(root, layout.clone(), have.clone());
        let seed = u64::from_le_bytes(self.id()[..8].try_into().unwrap_or([0; 8]))
            ^ started.elapsed().as_nanos() as u64;
        let mut sched: Scheduler<NodeKey> =
            Scheduler::new(layout.layout.clone(), have, Config::default(), seed);
        let (tx, mut rx) = mpsc::channel::<DriverEvent>(EVENT_QUEUE);
        let mut peers: HashMap<NodeKey, Peer> = HashMap::new();
        let mut connecting: HashSet<NodeKey> = HashSet::new();
        let mut tried: HashSet<NodeKey> = HashSet::new();
        let mut backlog: Vec<ProviderInfo> = Vec::new();
        let mut requests: HashMap<(NodeKey, PieceId), Req> = HashMap::new();
        let mut report = Report {
            per_provider: BTreeMap::new(),
            first_byte: BTreeMap::new(),
            received: 0,
        };
        let mut done_bytes = done_before;
        let pacer = self.config().max_download.map(|r| Arc::new(Pacer::new(r)));
        let idle = self.config().idle_timeout;
        tried.insert(self.id());
        let mut known: Vec<ProviderInfo> = Vec::new();

        for p in providers {
            tried.insert(p.info.node_id);
            known.push(p.info.clone());
            self.add_peer(&mut peers, &mut sched, started, root, p.info, p.conn, &tx);
        }
        for info in self.swarm_registry().peers(root) {
            backlog.push(info);
        }
        // Keep asking the DHT for providers: pupils who start later, or
        // the seed node once it has mirrored the bundle.
        // Only while the swarm is small: with a few peers, peer exchange
        // finds the rest, and each DHT lookup opens discovery connections
        // to the providers it names (the lab measured the mesh this makes
        // in a class of 30 at ~+12 % makespan when every pupil looked up).
        let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let lookups = self.control().cloned().map(|control| {
            let tx = tx.clone();
            let root = *root.as_bytes();
            let connected = connected.clone();
            tokio::spawn(async move {
                let mut every = LOOKUP_FIRST_EVERY;
                loop {
                    tokio::time::sleep(every).await;
                    every = (every * 2).min(LOOKUP_MAX_EVERY);
                    if connected.load(std::sync::atomic::Ordering::Relaxed) >= LOOKUP_BELOW_PEERS {
                        continue;
                    }
                    let found = control.find_providers(root, LOOKUP_WITHIN).await;
                    if tx.send(DriverEvent::Discovered(found)).await.is_err() {
                        break;
                    }
                }
            })
        });
        let mut alone_since: Option<Instant> = None;
        let mut stall = Stall::new(self.config().stall_timeout);
        let mut corrupt: Vec<NodeKey> = Vec::new();
        let mut providing = done_before > 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_path_check = Instant::now();
        // Dials in progress: aborted when the download ends, so that a
        // classmate who left cannot hold the exit up with a handshake
        // that waits for its timeout.
        let mut dials = tokio::task::JoinSet::new();
        let result = loop {
            while dials.try_join_next().is_some() {}
            // Dial learned peers while there is room.
            while peers.len() + connecting.len() < MAX_PEERS {
                let Some(info) = backlog.pop() else { break };
                if !tried.insert(info.node_id) {
                    continue;
                }
                let Some(info) = self.dialable(info) else {
                    continue;
                };
                connecting.insert(info.node_id);
                let endpoint = self.endpoint().clone();
                let timeout = self.config().connect_timeout;
                let tx = tx.clone();
                dials.spawn(async move {
                    let result = match endpoint_addr(&info) {
                        None => Err("invalid node id".to_string()),
                        Some(addr) => match tokio::time::timeout(
                            timeout,
                            endpoint.connect(addr, iroh_blobs::ALPN),
                        )
                        .await
                        {
                            Ok(Ok(conn)) => Ok(conn),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("no answer".into()),
                        },
                    };
                    tx.send(DriverEvent::Connected(info, result)).await.ok();
                });
            }

            let now = started.elapsed();
            let mut wanted: Vec<(NodeKey, PieceId)> = Vec::new();
            for action in sched.poll(now) {
                match action {
                    Action::Request(peer, piece) => wanted.push((peer, piece)),
                    Action::Cancel(peer, piece) => {
                        // A piece that shares its request with others is
                        // left to finish: aborting would lose the others.
                        if let Some(r) = requests.remove(&(peer, piece)) {
                            if r.alone {
                                r.handle.abort();
                            }
                        }
                    }
                    Action::DropPeer(peer, reason) => {
                        if let Some(p) = peers.remove(&peer) {
                            p.session.abort();
                            p.conn.close(0u32.into(), b"dropped");
                        }
                        requests.retain(|(q, _), r| {
                            if *q == peer {
                                r.handle.abort();
                            }
                            *q != peer
                        });
                        tracing::warn!(peer = %hex(&peer), %reason, "dropping peer");
                        events
                            .try_send(FetchEvent::ProviderDropped {
                                peer: hex(&peer),
                                reason,
                            })
                            .ok();
                    }
                }
            }
            // Consecutive pieces of one file asked of one peer go as one
            // range request: each request costs iroh-blobs a round of
            // setup, which at loopback speed is a fifth of the throughput.
            for run in runs(&layout, wanted) {
                let Some(p) = peers.get(&run.peer) else {
                    continue;
                };
                let peer = run.peer;
                let alone = run.pieces.len() == 1;
                let keys: Vec<PieceId> = run.pieces.iter().map(|(id, _)| *id).collect();
                let handle = tokio::spawn(request_run(
                    store.clone(),
                    p.conn.clone(),
                    run,
                    idle,
                    pacer.clone(),
                    tx.clone(),
                ))
                .abort_handle();
                for piece in keys {
                    requests.insert(
                        (peer, piece),
                        Req {
                            handle: handle.clone(),
                            alone,
                        },
                    );
                }
            }
            if sched.is_complete() {
                break Ok(());
            }
            connected.store(peers.len(), std::sync::atomic::Ordering::Relaxed);
            let alone = peers.is_empty() && connecting.is_empty() && backlog.is_empty();
            let waited = match (alone, lookups.is_some()) {
                (false, _) => {
                    alone_since = None;
                    false
                }
                (true, false) => true,
                (true, true) => {
                    alone_since.get_or_insert_with(Instant::now).elapsed() >= ALONE_PATIENCE
                }
            };
            let missing = layout.layout.piece_count() - sched.have().count();
            if waited {
                break Err(gave_up(
                    &corrupt,
                    format!(
                        "every peer failed or left with {missing} of {} pieces still missing",
                        layout.layout.piece_count()
                    ),
                ));
            }
            match stall.check(missing) {
                StallCheck::Fine => {}
                StallCheck::Warn(quiet) => {
                    tracing::info!(
                        "nothing received for {} s ({missing} of {} pieces missing, {} peer(s) connected); asking every provider known again",
                        quiet.as_secs(),
                        layout.layout.piece_count(),
                        peers.len()
                    );
                    events
                        .try_send(FetchEvent::Stalled {
                            seconds: quiet.as_secs(),
                            missing_pieces: missing,
                            peers: peers.len(),
                        })
                        .ok();
                    self.ask_again(root, &known, &peers, &mut tried, &mut backlog, &tx);
                }
                StallCheck::GiveUp(quiet) => {
                    break Err(gave_up(
                        &corrupt,
                        format!(
                            "nothing received from any of {} peer(s) for {} s with {missing} of {} pieces still missing: the peers that hold them refuse, do not answer, or hold a damaged copy (its log says so)",
                            peers.len(),
                            quiet.as_secs(),
                            layout.layout.piece_count()
                        ),
                    ));
                }
            }

            let event = tokio::select! {
                e = rx.recv() => e,
                _ = tick.tick() => {
                    // The scheduler keeps a relayed peer's pipeline short;
                    // tell it when a hole punch (or a lost path) changes
                    // the way to a peer. The path counters refresh once a
                    // second.
                    if last_path_check.elapsed() >= Duration::from_secs(1) {
                        last_path_check = Instant::now();
                        for key in peers.keys() {
                            let relayed = self.relayed(key).unwrap_or(false);
                            if relayed != sched.is_relayed(key) {
                                tracing::debug!(peer = %hex(key), relayed, "path changed");
                                sched.handle(started.elapsed(), Event::Relayed(*key, relayed));
                            }
                        }
                    }
                    continue;
                }
            };
            let Some(event) = event else { continue };
            let now = started.elapsed();
            match event {
                DriverEvent::Connected(info, Ok(conn)) => {
                    connecting.remove(&info.node_id);
                    self.add_peer(&mut peers, &mut sched, started, root, info, conn, &tx);
                }
                DriverEvent::Connected(info, Err(reason)) => {
                    connecting.remove(&info.node_id);
                    tracing::debug!(peer = %hex(&info.node_id), %reason, "peer unreachable");
                }
                DriverEvent::Welcome {
                    peer,
                    pieces,
                    have,
                    peers: learned,
                } => {
                    if pieces == layout.layout.piece_count() {
                        if let Some(set) = swarm::have_set(&have, pieces) {
                            sched.handle(now, Event::HaveSet(peer, set));
                        }
                    }
                    self.learn(root, learned, &mut backlog);
                }
                DriverEvent::Update {
                    peer,
                    pieces,
                    peers: learned,
                } => {
                    for piece in pieces {
                        if piece < layout.layout.piece_count() {
                            sched.handle(now, Event::Have(peer, piece));
                        }
                    }
                    self.learn(root, learned, &mut backlog);
                }
                DriverEvent::NoSession(peer) => sched.handle(now, Event::HaveAll(peer)),
                DriverEvent::Discovered(found) => {
                    let fresh: Vec<ProviderInfo> = found
                        .into_iter()
                        .filter(|f| !tried.contains(&f.node_id))
                        .collect();
                    if !fresh.is_empty() {
                        tracing::debug!(count = fresh.len(), "providers found in the DHT");
                    }
                    self.learn(root, fresh, &mut backlog);
                }
                DriverEvent::SessionEnded(peer) => {
                    // It left the swarm; its requests fail on their own.
                    if let Some(p) = peers.remove(&peer) {
                        p.conn.close(0u32.into(), b"left");
                    }
                    sched.handle(now, Event::PeerLeft(peer));
                }
                DriverEvent::Progress(peer, bytes) => {
                    stall.progress();
                    let key = hex(&peer);
                    *report.per_provider.entry(key.clone()).or_default() += bytes;
                    report
                        .first_byte
                        .entry(key.clone())
                        .or_insert_with(Instant::now);
                    report.received += bytes;
                    self.traffic_handle().add_received(&key, root, bytes);
                    done_bytes += bytes;
                    events.try_send(FetchEvent::Progress { done_bytes }).ok();
                }
                DriverEvent::PieceDone(peer, piece, result) => {
                    requests.remove(&(peer, piece));
                    match result {
                        Ok(()) => {
                            let had = sched.have().contains(piece);
                            sched.handle(now, Event::Received(peer, piece));
                            if !had {
                                self.swarm_registry().piece_done(root, piece);
                                if !providing {
                                    // A node with no piece yet would only
                                    // draw classmates to an empty store.
                                    providing = true;
                                    self.provide(root).await;
                                }
                            }
                        }
                        Err(Outcome::Fail(reason, detail)) => {
                            tracing::debug!(peer = %hex(&peer), piece, ?reason, %detail, "piece failed");
                            if reason == FailReason::Corrupt && !corrupt.contains(&peer) {
                                tracing::warn!(peer = %hex(&peer), %detail, "a peer sent data that does not match the lesson's hashes");
                                corrupt.push(peer);
                            }
                            sched.handle(now, Event::Failed(peer, piece, reason));
                        }
                        Err(Outcome::Local(reason)) => {
                            break Err(FetchError::Store(reason));
                        }
                    }
                }
            }
        };
        if let Some(task) = lookups {
            task.abort();
        }
        dials.abort_all();
        for (_, r) in requests.drain() {
            r.handle.abort();
        }
        for (_, p) in peers.drain() {
            p.session.abort();
        }
        result.map(|()| report)
    }

    /// After a stall: every provider known of may be dialled again (the
    /// ticket's, peer exchange's, the DHT's), and the DHT is asked now.
    fn ask_again(
        &self,
        root: Hash,
        known: &[ProviderInfo],
        peers: &HashMap<NodeKey, Peer>,
        tried: &mut HashSet<NodeKey>,
        backlog: &mut Vec<ProviderInfo>,
        tx: &mpsc::Sender<DriverEvent>,
    ) {
        tried.retain(|k| peers.contains_key(k) || *k == self.id());
        for info in known
            .iter()
            .cloned()
            .chain(self.swarm_registry().peers(root))
        {
            if !peers.contains_key(&info.node_id) && backlog.len() < 256 {
                backlog.push(info);
            }
        }
        if let Some(control) = self.control().cloned() {
            let tx = tx.clone();
            let root = *root.as_bytes();
            tokio::spawn(async move {
                let found = control.find_providers(root, LOOKUP_WITHIN).await;
                tx.send(DriverEvent::Discovered(found)).await.ok();
            });
        }
    }

    fn learn(&self, root: Hash, learned: Vec<ProviderInfo>, backlog: &mut Vec<ProviderInfo>) {
        for info in learned.into_iter().take(64) {
            if info.node_id == self.id() || info.addrs.len() > classe_bundle::ticket::MAX_ADDRS {
                continue;
            }
            self.swarm_registry().remember(root, info.clone());
            if backlog.len() < 256 {
                backlog.push(info);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_peer(
        &self,
        peers: &mut HashMap<NodeKey, Peer>,
        sched: &mut Scheduler<NodeKey>,
        started: Instant,
        root: Hash,
        info: ProviderInfo,
        conn: Connection,
        tx: &mpsc::Sender<DriverEvent>,
    ) {
        let key = info.node_id;
        if peers.contains_key(&key) {
            return;
        }
        sched.handle(started.elapsed(), Event::PeerJoined(key));
        let session = tokio::spawn(session(
            self.endpoint().clone(),
            info.clone(),
            root,
            // Our addresses as of now: the public one and a port mapping
            // may have been learnt since the download started.
            self.provider_info(),
            self.config().leaves_when_done,
            self.config().connect_timeout,
            tx.clone(),
        ))
        .abort_handle();
        peers.insert(key, Peer { conn, session });
    }
}

/// Holds a swarm session open with one peer, forwarding what it says.
async fn session(
    endpoint: iroh::Endpoint,
    info: ProviderInfo,
    root: Hash,
    me: ProviderInfo,
    leaves_when_done: bool,
    timeout: Duration,
    tx: mpsc::Sender<DriverEvent>,
) {
    let peer = info.node_id;
    let opened = async {
        let addr = endpoint_addr(&info).ok_or_else(|| "invalid node id".to_string())?;
        let conn = tokio::time::timeout(timeout, endpoint.connect(addr, swarm::ALPN))
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        swarm::write_frame(
            &mut send,
            &ClientMsg::Hello {
                root: *root.as_bytes(),
                me: Some(me),
                leaves_when_done,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok::<_, String>((conn, send, recv))
    }
    .await;
    let (_conn, _send, mut recv) = match opened {
        Ok(x) => x,
        Err(reason) => {
            tracing::debug!(peer = %hex(&peer), %reason, "no swarm session");
            tx.send(DriverEvent::NoSession(peer)).await.ok();
            return;
        }
    };
    loop {
        match swarm::read_frame::<ServerMsg>(&mut recv).await {
            Ok(Some(ServerMsg::Welcome {
                pieces,
                have,
                peers,
            })) => {
                let ev = DriverEvent::Welcome {
                    peer,
                    pieces,
                    have,
                    peers,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            Ok(Some(ServerMsg::Update { pieces, peers })) => {
                if tx
                    .send(DriverEvent::Update {
                        peer,
                        pieces,
                        peers,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                tx.send(DriverEvent::SessionEnded(peer)).await.ok();
                return;
            }
        }
    }
}

/// Watches a download for time without a byte.
struct Stall {
    last: Instant,
    warned: bool,
    give_up: Duration,
}

enum StallCheck {
    Fine,
    /// Quiet for this long: say so and ask again (once per stall).
    Warn(Duration),
    /// Quiet for this long: give up.
    GiveUp(Duration),
}

impl Stall {
    fn new(give_up: Duration) -> Self {
        Self {
            last: Instant::now(),
            warned: false,
            give_up: give_up.max(STALL_WARN),
        }
    }

    fn progress(&mut self) {
        self.last = Instant::now();
        self.warned = false;
    }

    fn check(&mut self, missing: u32) -> StallCheck {
        let quiet = self.last.elapsed();
        if missing == 0 {
            StallCheck::Fine
        } else if quiet >= self.give_up {
            StallCheck::GiveUp(quiet)
        } else if quiet >= STALL_WARN && !self.warned {
            self.warned = true;
            StallCheck::Warn(quiet)
        } else {
            StallCheck::Fine
        }
    }
}

/// The error a download ends with: a verification error when a peer sent
/// bytes that failed their hashes (its copy is damaged, or it lies), so
/// the cause is named rather than "no provider".
fn gave_up(corrupt: &[NodeKey], why: String) -> FetchError {
    match corrupt.first() {
        Some(peer) => FetchError::Verification(format!(
            "peer {} sent data that does not match the lesson's hashes (its copy is damaged, or it is not honest); {why}",
            &hex(peer)[..10]
        )),
        None => FetchError::NoProvider(why),
    }
}

fn classify(e: &GetError, store_dir: &std::path::Path) -> Outcome {
    // iroh-blobs reports both "cannot open a stream to the peer" (a peer
    // that left) and store failures as LocalFailure; only a full disk is
    // ours to report. Treating every LocalFailure as local aborted whole
    // fetches in the lab when a third of the class left at once.
    if matches!(e, GetError::LocalFailure { .. }) || e.local_write().is_some() {
        let full = crate::fetch::available_space(store_dir).is_some_and(|free| free < 4 << 20);
        if full {
            return Outcome::Local(format!("cannot write to the local store (disk full): {e}"));
        }
        return Outcome::Fail(FailReason::Error, e.to_string());
    }
    if let GetError::Decode { source, .. } = e {
        if matches!(
            source,
            DecodeError::LeafHashMismatch { .. } | DecodeError::ParentHashMismatch { .. }
        ) {
            return Outcome::Fail(FailReason::Corrupt, e.to_string());
        }
    }
    match e.iroh_error_code() {
        Some(code) if code == ERR_LIMIT => Outcome::Fail(FailReason::Busy, e.to_string()),
        Some(code) if code == ERR_PERMISSION => Outcome::Fail(FailReason::Refused, e.to_string()),
        _ => Outcome::Fail(FailReason::Error, e.to_string()),
    }
}

/// Fetches a run of pieces with one range request, verified while
/// streaming. Each piece is reported done as soon as the bytes up to its
/// end are in the store, so classmates can ask us for it before the run
/// ends.
async fn request_run(
    store: classe_store::Store,
    conn: Connection,
    run: Run,
    idle: Duration,
    pacer: Option<Arc<Pacer>>,
    tx: mpsc::Sender<DriverEvent>,
) {
    let peer = run.peer;
    let start = run.pieces[0].1 .0;
    let end = run
        .pieces
        .last()
        .map_or(start, |(_, (offset, len))| offset + len);
    let ranges = ChunkRanges::bytes(start..end);
    let request = GetRequest::blob_ranges(run.hash, ranges.clone());
    let progress = store.blobs().remote().execute_get(conn, request);
    let mut stream = std::pin::pin!(progress.stream());
    let mut last = 0u64;
    let mut reported = 0u64;
    // Pieces not reported yet, with their (offset, len) in the blob.
    let mut pending = std::collections::VecDeque::from(run.pieces);
    // Whole once `n` bytes from `start` have arrived.
    let whole_at = |(offset, len): (u64, u64)| offset + len - start;
    let result = loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                break Err(Outcome::Fail(
                    FailReason::Timeout,
                    format!("no data for {}s", idle.as_secs()),
                ))
            }
            Ok(None) => break Err(Outcome::Fail(FailReason::Error, "stream ended".into())),
            Ok(Some(GetProgressItem::Progress(n))) => {
                let delta = n.saturating_sub(last);
                last = n;
                if let Some(p) = &pacer {
                    tokio::time::sleep_until(p.reserve(delta)).await;
                }
                // Report in batches: one event per 16 KiB chunk group is
                // measurable CPU at loopback speed.
                if n - reported >= PROGRESS_BATCH {
                    tx.send(DriverEvent::Progress(peer, n - reported))
                        .await
                        .ok();
                    reported = n;
                }
                // The last piece waits for the end of the request and the
                // store check below.
                while pending.len() > 1
                    && pending
                        .front()
                        .is_some_and(|(_, span)| whole_at(*span) <= n)
                {
                    if let Some((id, _)) = pending.pop_front() {
                        tx.send(DriverEvent::PieceDone(peer, id, Ok(()))).await.ok();
                    }
                }
            }
            Ok(Some(GetProgressItem::Done(stats))) => {
                let total = stats.payload_bytes_read.max(last);
                if total > reported {
                    tx.send(DriverEvent::Progress(peer, total - reported))
                        .await
                        .ok();
                }
                break Ok(());
            }
            Ok(Some(GetProgressItem::Error(e))) => {
                if last > reported {
                    tx.send(DriverEvent::Progress(peer, last - reported))
                        .await
                        .ok();
                }
                break Err(classify(&e, store.dir()));
            }
        }
    };
    // A provider that lacks part of the range ends early without an error
    // on some paths: believe the store, not the stream.
    let bitfield = match &result {
        Ok(()) => match store.blobs().blobs().observe(run.hash).await {
            Ok(b) => Some(b.ranges),
            Err(e) => {
                let reason = format!("cannot read the local store: {e}");
                for (id, _) in pending {
                    tx.send(DriverEvent::PieceDone(
                        peer,
                        id,
                        Err(Outcome::Local(reason.clone())),
                    ))
                    .await
                    .ok();
                }
                return;
            }
        },
        Err(_) => None,
    };
    // One failed request is one failure for the peer's score, not one per
    // piece it carried: the first piece takes the real reason, the others
    // are only steered to other peers first.
    let mut first = true;
    for (id, (offset, len)) in pending {
        let outcome = match (&result, &bitfield) {
            (Err(Outcome::Fail(_, detail)), _) if !first => {
                Err(Outcome::Fail(FailReason::Refused, detail.clone()))
            }
            (Ok(()), Some(have)) => {
                if covers(have, &ChunkRanges::bytes(offset..offset + len)) {
                    Ok(())
                } else {
                    Err(Outcome::Fail(FailReason::Error, "piece incomplete".into()))
                }
            }
            (Err(Outcome::Fail(reason, detail)), _) => Err(Outcome::Fail(*reason, detail.clone())),
            (Err(Outcome::Local(detail)), _) => Err(Outcome::Local(detail.clone())),
            (Ok(()), None) => Err(Outcome::Fail(FailReason::Error, "piece incomplete".into())),
        };
        first = false;
        tx.send(DriverEvent::PieceDone(peer, id, outcome))
            .await
            .ok();
    }
}
