//! The file phase of a fetch: piece by piece, from every peer at once.
//!
//! ```text
//!                 +------------------------ Download (one task) ------------------------+
//! sessions   -->  | Welcome, Update      -> Scheduler     -> Request  -> request task   |--> iroh-blobs
//! (swarm ALPN)    | PieceDone, Failed       which piece     Cancel   -> abort           |    range get
//! requests   -->  |                         from whom       DropPeer -> close           |
//!                 |                                                                     |
//! dials      -->  | Connected, Progress  -> PeerBook      -> Dial     -> dial task      |--> connect
//! lookups    -->  | Discovered,             which peers,    LookUp   -> lookup task     |--> DHT
//!                 | SessionEnded            when to stop    Stalled  -> warn, ask again |
//!                 |                                         GiveUp   -> end the fetch   |
//!                 +---------------------------------------------------------------------+
//! ```
//!
//! The scheduler and the peer book decide, both sans-IO and tested by the
//! class simulation in `classe-swarm`; [`Download`] only does what they
//! say over real connections and reports back, one `on_*` method per
//! event. Every piece is a range request of one blob, verified by
//! iroh-blobs while it streams; pieces we hold are announced at once to
//! everyone subscribed to us, so classmates can fetch them from us before
//! we have the whole lesson.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use classe_bundle::ProviderInfo;
use classe_swarm::{
    Action, BitSet, BookAction, BookConfig, Config, Event, FailReason, GiveUp, Lookup, PeerBook,
    PieceId, Scheduler, Verdict,
};
use iroh::{endpoint::Connection, EndpointAddr, PublicKey, TransportAddr};
use iroh_blobs::{
    api::remote::GetProgressItem,
    get::{fsm::DecodeError, GetError},
    protocol::{ChunkRanges, ChunkRangesExt, GetRequest, ERR_LIMIT, ERR_PERMISSION},
    Hash,
};
use n0_future::StreamExt;
use tokio::{
    sync::mpsc,
    task::{AbortHandle, JoinSet},
};

use crate::{
    fetch::FetchEvent,
    provider::Pacer,
    swarm::{self, BundleLayout, ClientMsg, ServerMsg},
    FetchError, Node,
};

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
    /// Providers the DHT knows of now, in answer to this lookup.
    Discovered(Lookup, Vec<ProviderInfo>),
}

/// How long one DHT lookup may take.
const LOOKUP_WITHIN: Duration = Duration::from_secs(5);

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

/// Groups piece requests into runs: same peer, same blob, contiguous, at
/// most `max_run` pieces.
fn runs(layout: &BundleLayout, mut wanted: Vec<(NodeKey, PieceId)>, max_run: usize) -> Vec<Run> {
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
                && last.pieces.len() < max_run
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
#[derive(Default)]
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
        let Ok(ranges) = store.local_ranges(*hash).await else {
            continue;
        };
        for piece in layout.layout.file_pieces(i) {
            let Some(span) = layout.layout.span(piece) else {
                continue;
            };
            let want = ChunkRanges::bytes(span.offset..span.offset + span.len);
            if covers(&ranges, &want) {
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
        let (tx, rx) = mpsc::channel::<DriverEvent>(EVENT_QUEUE);
        let mut download = Download::start(self, root, layout, events, done_before, tx).await;
        for p in providers {
            download.add_provider(p);
        }
        let remembered = self.swarm_registry().peers(root);
        download.book.remembered(keyed(remembered));
        let result = download.run(rx).await;
        result.map(|()| std::mem::take(&mut download.report))
    }
}

/// Provider infos keyed by node id, as the [`PeerBook`] takes them.
fn keyed(infos: Vec<ProviderInfo>) -> impl Iterator<Item = (NodeKey, ProviderInfo)> {
    infos.into_iter().map(|info| (info.node_id, info))
}

/// A learned provider is worth keeping: the wire allows no more addresses.
fn sane(info: &ProviderInfo) -> bool {
    info.addrs.len() <= classe_bundle::ticket::MAX_ADDRS
}

/// One download's driver: the scheduler and the peer book decide, this
/// carries their actions out over real connections and feeds back what
/// happened. Dropping it aborts every task it started, so that a classmate
/// who left cannot hold the exit up with a handshake that waits for its
/// timeout.
struct Download<'a> {
    node: &'a Node,
    root: Hash,
    layout: Arc<BundleLayout>,
    /// Time zero of the scheduler's and the book's clocks.
    started: Instant,
    sched: Scheduler<NodeKey>,
    book: PeerBook<NodeKey, ProviderInfo>,
    peers: HashMap<NodeKey, Peer>,
    requests: HashMap<(NodeKey, PieceId), Req>,
    report: Report,
    done_bytes: u64,
    /// Peers that sent bytes failing their hashes, named if we give up.
    corrupt: Vec<NodeKey>,
    /// We announced ourselves as a provider (once we hold a piece).
    providing: bool,
    pacer: Option<Arc<Pacer>>,
    events: mpsc::Sender<FetchEvent>,
    tx: mpsc::Sender<DriverEvent>,
    dials: JoinSet<()>,
    lookups: JoinSet<()>,
    last_path_check: Instant,
}

impl<'a> Download<'a> {
    async fn start(
        node: &'a Node,
        root: Hash,
        layout: Arc<BundleLayout>,
        events: mpsc::Sender<FetchEvent>,
        done_before: u64,
        tx: mpsc::Sender<DriverEvent>,
    ) -> Download<'a> {
        let started = Instant::now();
        let have = local_pieces(node.store(), &layout).await;
        node.swarm_registry()
            .start(root, layout.clone(), have.clone());
        let seed = u64::from_le_bytes(node.id()[..8].try_into().unwrap_or([0; 8]))
            ^ started.elapsed().as_nanos() as u64;
        let sched = Scheduler::new(layout.layout.clone(), have, Config::default(), seed);
        let book_config = BookConfig {
            stall_give_up: node.config().stall_timeout,
            ..BookConfig::default()
        };
        Download {
            node,
            root,
            layout,
            started,
            sched,
            book: PeerBook::new(node.id(), book_config, node.control().is_some()),
            peers: HashMap::new(),
            requests: HashMap::new(),
            report: Report::default(),
            done_bytes: done_before,
            corrupt: Vec::new(),
            providing: done_before > 0,
            pacer: node.config().max_download.map(|r| Arc::new(Pacer::new(r))),
            events,
            tx,
            dials: JoinSet::new(),
            lookups: JoinSet::new(),
            last_path_check: Instant::now(),
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn piece_count(&self) -> u32 {
        self.layout.layout.piece_count()
    }

    fn missing(&self) -> u32 {
        self.piece_count() - self.sched.have().count()
    }

    /// Until every piece is here, or the book says to give up.
    async fn run(&mut self, mut rx: mpsc::Receiver<DriverEvent>) -> Result<(), FetchError> {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while self.dials.try_join_next().is_some() {}
            while self.lookups.try_join_next().is_some() {}
            let now = self.now();
            self.poll_book(now);
            self.poll_scheduler(now);
            if self.sched.is_complete() {
                return Ok(());
            }
            match self.book.check(now) {
                None => {}
                Some(Verdict::Stalled(quiet)) => {
                    self.on_stalled(quiet);
                    continue;
                }
                Some(Verdict::GiveUp(why)) => return Err(self.give_up(why)),
            }
            let wake = self.started
                + self
                    .book
                    .next_deadline()
                    .unwrap_or(Duration::from_secs(3600));
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = tick.tick() => {
                    self.on_tick();
                    continue;
                }
                _ = tokio::time::sleep_until(wake.into()) => continue,
            };
            if let Some(event) = event {
                self.on_event(event).await?;
            }
        }
    }

    async fn on_event(&mut self, event: DriverEvent) -> Result<(), FetchError> {
        match event {
            DriverEvent::Connected(info, result) => self.on_connected(info, result),
            DriverEvent::Welcome {
                peer,
                pieces,
                have,
                peers,
            } => self.on_welcome(peer, pieces, have, peers),
            DriverEvent::Update {
                peer,
                pieces,
                peers,
            } => self.on_update(peer, pieces, peers),
            DriverEvent::NoSession(peer) => self.sched.handle(self.now(), Event::HaveAll(peer)),
            DriverEvent::Discovered(lookup, found) => self.on_discovered(lookup, found),
            DriverEvent::SessionEnded(peer) => self.on_session_ended(peer),
            DriverEvent::Progress(peer, bytes) => self.on_progress(peer, bytes),
            DriverEvent::PieceDone(peer, piece, result) => {
                return self.on_piece_done(peer, piece, result).await;
            }
        }
        Ok(())
    }

    /// Starts the dials and lookups the book asks for. A provider that
    /// cannot be dialled at all is reported failed at once, and the book
    /// asked again, so that it takes no place among the peers.
    fn poll_book(&mut self, now: Duration) {
        loop {
            let mut undialable = false;
            for action in self.book.poll(now) {
                match action {
                    BookAction::Dial(key, info) => match self.node.dialable(info) {
                        Some(info) => self.dial(info),
                        None => {
                            self.book.dial_failed(&key);
                            undialable = true;
                        }
                    },
                    BookAction::LookUp(lookup) => self.look_up(lookup),
                }
            }
            if !undialable {
                return;
            }
        }
    }

    fn dial(&mut self, info: ProviderInfo) {
        let endpoint = self.node.endpoint().clone();
        let timeout = self.node.config().connect_timeout;
        let tx = self.tx.clone();
        self.dials.spawn(async move {
            let result = match endpoint_addr(&info) {
                None => Err("invalid node id".to_string()),
                Some(addr) => {
                    match tokio::time::timeout(timeout, endpoint.connect(addr, iroh_blobs::ALPN))
                        .await
                    {
                        Ok(Ok(conn)) => Ok(conn),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("no answer".into()),
                    }
                }
            };
            tx.send(DriverEvent::Connected(info, result)).await.ok();
        });
    }

    fn look_up(&mut self, lookup: Lookup) {
        let Some(control) = self.node.control().cloned() else {
            return;
        };
        let tx = self.tx.clone();
        let root = *self.root.as_bytes();
        self.lookups.spawn(async move {
            let found = control.find_providers(root, LOOKUP_WITHIN).await;
            tx.send(DriverEvent::Discovered(lookup, found)).await.ok();
        });
    }

    /// Carries out the scheduler's actions: cancels, drops, and requests,
    /// consecutive pieces of one file asked of one peer going as one range
    /// request (each request costs iroh-blobs a round of setup, which at
    /// loopback speed is a fifth of the throughput).
    fn poll_scheduler(&mut self, now: Duration) {
        let mut wanted: Vec<(NodeKey, PieceId)> = Vec::new();
        for action in self.sched.poll(now) {
            match action {
                Action::Request(peer, piece) => wanted.push((peer, piece)),
                Action::Cancel(peer, piece) => {
                    // A piece that shares its request with others is
                    // left to finish: aborting would lose the others.
                    if let Some(r) = self.requests.remove(&(peer, piece)) {
                        if r.alone {
                            r.handle.abort();
                        }
                    }
                }
                Action::DropPeer(peer, reason) => self.drop_peer(peer, reason),
            }
        }
        // A lone source gets whole ranges: nobody else could take over a
        // piece it holds up, and the scheduler sizes its pipeline by its
        // rate.
        let max_run = if self.sched.peer_count() == 1 {
            usize::MAX
        } else {
            MAX_RUN
        };
        for run in runs(&self.layout, wanted, max_run) {
            let Some(p) = self.peers.get(&run.peer) else {
                continue;
            };
            let peer = run.peer;
            let alone = run.pieces.len() == 1;
            let keys: Vec<PieceId> = run.pieces.iter().map(|(id, _)| *id).collect();
            let handle = tokio::spawn(request_run(
                self.node.store().clone(),
                p.conn.clone(),
                run,
                self.node.config().idle_timeout,
                self.pacer.clone(),
                self.tx.clone(),
            ))
            .abort_handle();
            for piece in keys {
                let handle = handle.clone();
                self.requests.insert((peer, piece), Req { handle, alone });
            }
        }
    }

    fn drop_peer(&mut self, peer: NodeKey, reason: String) {
        if let Some(p) = self.peers.remove(&peer) {
            p.session.abort();
            p.conn.close(0u32.into(), b"dropped");
        }
        self.book.dropped(&peer);
        self.requests.retain(|(q, _), r| {
            if *q == peer {
                r.handle.abort();
            }
            *q != peer
        });
        tracing::warn!(peer = %hex(&peer), %reason, "dropping peer");
        self.events
            .try_send(FetchEvent::ProviderDropped {
                peer: hex(&peer),
                reason,
            })
            .ok();
    }

    /// Nothing received for `quiet`: say so, and ask every provider known
    /// of again.
    fn on_stalled(&mut self, quiet: Duration) {
        let missing = self.missing();
        tracing::info!(
            "nothing received for {} s ({missing} of {} pieces missing, {} peer(s) connected); asking every provider known again",
            quiet.as_secs(),
            self.piece_count(),
            self.peers.len()
        );
        self.events
            .try_send(FetchEvent::Stalled {
                seconds: quiet.as_secs(),
                missing_pieces: missing,
                peers: self.peers.len(),
            })
            .ok();
        let remembered = self.node.swarm_registry().peers(self.root);
        self.book.ask_again(keyed(remembered));
    }

    fn give_up(&self, why: GiveUp) -> FetchError {
        let (missing, pieces) = (self.missing(), self.piece_count());
        let why = match why {
            GiveUp::Alone => format!(
                "every peer failed or left with {missing} of {pieces} pieces still missing"
            ),
            GiveUp::Quiet(quiet) => format!(
                "nothing received from any of {} peer(s) for {} s with {missing} of {pieces} pieces still missing: the peers that hold them refuse, do not answer, or hold a damaged copy (its log says so)",
                self.peers.len(),
                quiet.as_secs(),
            ),
        };
        gave_up(&self.corrupt, why)
    }

    /// The scheduler keeps a relayed peer's pipeline short; tell it when a
    /// hole punch (or a lost path) changes the way to a peer. The path
    /// counters refresh once a second.
    fn on_tick(&mut self) {
        if self.last_path_check.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_path_check = Instant::now();
        let now = self.now();
        for key in self.peers.keys() {
            let relayed = self.node.relayed(key).unwrap_or(false);
            if relayed != self.sched.is_relayed(key) {
                tracing::debug!(peer = %hex(key), relayed, "path changed");
                self.sched.handle(now, Event::Relayed(*key, relayed));
            }
        }
    }

    /// A provider the download starts connected to (the ticket's).
    fn add_provider(&mut self, p: Connected) {
        if self.book.add_provider(p.info.node_id, p.info.clone()) {
            self.add_peer(p.info, p.conn);
        }
    }

    fn on_connected(&mut self, info: ProviderInfo, result: Result<Connection, String>) {
        match result {
            Ok(conn) => {
                if self.book.connected(info.node_id) {
                    self.add_peer(info, conn);
                }
            }
            Err(reason) => {
                self.book.dial_failed(&info.node_id);
                tracing::debug!(peer = %hex(&info.node_id), %reason, "peer unreachable");
            }
        }
    }

    /// Starts using a connected peer: the scheduler hears of it, and a
    /// swarm session asks it what it has.
    fn add_peer(&mut self, info: ProviderInfo, conn: Connection) {
        let key = info.node_id;
        self.sched.handle(self.now(), Event::PeerJoined(key));
        let session = tokio::spawn(session(
            self.node.endpoint().clone(),
            info,
            self.root,
            // Our addresses as of now: the public one and a port mapping
            // may have been learnt since the download started.
            self.node.provider_info(),
            self.node.config().leaves_when_done,
            self.node.config().connect_timeout,
            self.tx.clone(),
        ))
        .abort_handle();
        self.peers.insert(key, Peer { conn, session });
    }

    fn on_welcome(
        &mut self,
        peer: NodeKey,
        pieces: u32,
        have: swarm::Have,
        learned: Vec<ProviderInfo>,
    ) {
        if pieces == self.piece_count() {
            if let Some(set) = swarm::have_set(&have, pieces) {
                self.sched.handle(self.now(), Event::HaveSet(peer, set));
            }
        }
        self.learn(learned);
    }

    fn on_update(&mut self, peer: NodeKey, pieces: Vec<PieceId>, learned: Vec<ProviderInfo>) {
        let now = self.now();
        for piece in pieces {
            if piece < self.piece_count() {
                self.sched.handle(now, Event::Have(peer, piece));
            }
        }
        self.learn(learned);
    }

    /// Providers a peer named: to dial, and to remember for peer
    /// exchange.
    fn learn(&mut self, learned: Vec<ProviderInfo>) {
        for (_, info) in self.book.learn(keyed(learned), sane) {
            self.node.swarm_registry().remember(self.root, info);
        }
    }

    fn on_discovered(&mut self, lookup: Lookup, found: Vec<ProviderInfo>) {
        let fresh = self.book.looked_up(self.now(), lookup, keyed(found), sane);
        if !fresh.is_empty() {
            tracing::debug!(count = fresh.len(), "providers found in the DHT");
        }
        for (_, info) in fresh {
            self.node.swarm_registry().remember(self.root, info);
        }
    }

    /// The peer left the swarm; its requests fail on their own.
    fn on_session_ended(&mut self, peer: NodeKey) {
        if let Some(p) = self.peers.remove(&peer) {
            p.conn.close(0u32.into(), b"left");
        }
        self.book.left(&peer);
        self.sched.handle(self.now(), Event::PeerLeft(peer));
    }

    fn on_progress(&mut self, peer: NodeKey, bytes: u64) {
        self.book.progress(self.now());
        let key = hex(&peer);
        *self.report.per_provider.entry(key.clone()).or_default() += bytes;
        self.report
            .first_byte
            .entry(key.clone())
            .or_insert_with(Instant::now);
        self.report.received += bytes;
        self.node
            .traffic_handle()
            .add_received(&key, self.root, bytes);
        self.done_bytes += bytes;
        self.events
            .try_send(FetchEvent::Progress {
                done_bytes: self.done_bytes,
            })
            .ok();
    }

    async fn on_piece_done(
        &mut self,
        peer: NodeKey,
        piece: PieceId,
        result: Result<(), Outcome>,
    ) -> Result<(), FetchError> {
        self.requests.remove(&(peer, piece));
        let now = self.now();
        match result {
            Ok(()) => {
                let had = self.sched.have().contains(piece);
                self.sched.handle(now, Event::Received(peer, piece));
                if !had {
                    self.node.swarm_registry().piece_done(self.root, piece);
                    if !self.providing {
                        // A node with no piece yet would only draw
                        // classmates to an empty store.
                        self.providing = true;
                        self.node.provide(self.root).await;
                    }
                }
            }
            Err(Outcome::Fail(reason, detail)) => {
                tracing::debug!(peer = %hex(&peer), piece, ?reason, %detail, "piece failed");
                if reason == FailReason::Corrupt && !self.corrupt.contains(&peer) {
                    tracing::warn!(peer = %hex(&peer), %detail, "a peer sent data that does not match the lesson's hashes");
                    self.corrupt.push(peer);
                }
                self.sched.handle(now, Event::Failed(peer, piece, reason));
            }
            Err(Outcome::Local(reason)) => return Err(FetchError::Store(reason)),
        }
        Ok(())
    }
}

impl Drop for Download<'_> {
    fn drop(&mut self) {
        self.dials.abort_all();
        self.lookups.abort_all();
        for (_, r) in self.requests.drain() {
            r.handle.abort();
        }
        for (_, p) in self.peers.drain() {
            p.session.abort();
        }
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
    let progress = store.execute_get(conn, request);
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
    settle(&store, run.hash, peer, pending, result, &tx).await;
}

/// Reports each piece of a finished run request. A provider that lacks
/// part of the range ends early without an error on some paths: believe
/// the store, not the stream.
async fn settle(
    store: &classe_store::Store,
    hash: Hash,
    peer: NodeKey,
    pending: std::collections::VecDeque<(PieceId, (u64, u64))>,
    result: Result<(), Outcome>,
    tx: &mpsc::Sender<DriverEvent>,
) {
    let bitfield = match &result {
        Ok(()) => match store.local_ranges(hash).await {
            Ok(ranges) => Some(ranges),
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
