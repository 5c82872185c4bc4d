//! The download scheduler.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Debug,
    time::Duration,
};

use crate::{BitSet, Layout, PieceId};

/// Tuning knobs. The defaults suit a classroom LAN and home broadband.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pieces picked at random before switching to rarest first: a new
    /// peer gets something to share quickly, and peers starting together
    /// do not all chase the same rare piece.
    pub random_first: PieceId,
    /// Fewest requests kept in flight per peer. One: with more, each
    /// pupil keeps many pieces queued at classmates' slow uplinks, every
    /// uploader's line grows, pieces spread later and the endgame turns
    /// to the teacher. The measurements behind this and the rules below:
    /// docs/benchmarks.md, "Why the scheduler's rules".
    pub min_pipeline: usize,
    /// Most requests kept in flight per peer.
    pub max_pipeline: usize,
    /// Most requests kept in flight at a lone direct source (the only peer
    /// of the download, say the teacher's node on a LAN, or a fetch from
    /// the school's seed): its measured rate decides, up to this. A fast
    /// lone source then gets pieces asked in long runs that the driver
    /// sends as a few whole-range requests; iroh-blobs streams one range
    /// at its full speed but loses a fifth of it to 4 MiB requests
    /// (docs/benchmarks.md, single-peer loopback).
    pub alone_max_pipeline: usize,
    /// Most requests kept in flight at a peer reached only through the
    /// school's relay: the relay is one server shared by every home of
    /// the school, so a relayed classmate gets what its measured rate
    /// needs up to this, and direct peers take the rest.
    pub relay_pipeline: usize,
    /// Keep this much of a peer's measured rate in flight, so its link
    /// never idles between requests.
    pub pipeline_time: Duration,
    /// A request is given at least this long.
    pub min_request_timeout: Duration,
    /// ... and at least this many times the piece's expected duration at
    /// the peer's measured rate.
    pub timeout_factor: f64,
    /// Consecutive timeouts or errors before a peer is dropped.
    pub max_failures: u32,
    /// In endgame, how many peers may be asked for the same piece at once.
    pub endgame_copies: u8,
    /// How long to leave a piece alone at a peer that refused it.
    pub refuse_backoff: Duration,
    /// How long to leave a busy peer alone.
    pub busy_backoff: Duration,
    /// In endgame, how long a piece waits at classmates before a seed is
    /// asked for it too.
    pub endgame_patience: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            random_first: 4,
            min_pipeline: 1,
            max_pipeline: 32,
            alone_max_pipeline: 1024,
            relay_pipeline: 4,
            pipeline_time: Duration::from_millis(500),
            // Stalls are the driver's to detect (no bytes for a while); this
            // is the backstop for a peer that trickles.
            min_request_timeout: Duration::from_secs(120),
            timeout_factor: 4.0,
            max_failures: 3,
            endgame_copies: 2,
            refuse_backoff: Duration::from_secs(1),
            busy_backoff: Duration::from_millis(500),
            endgame_patience: Duration::from_secs(15),
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// No answer in time (the scheduler also raises this itself).
    Timeout,
    /// The peer declined for now (busy, or it prefers to send other pieces
    /// first). Not held against it.
    Refused,
    /// The peer is serving as many others as it will; ask it again later.
    /// Not held against it.
    Busy,
    /// The bytes failed verification. The peer is dropped at once.
    Corrupt,
    /// The connection or stream failed.
    Error,
}

/// What happened. `P` identifies a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    /// A peer can be asked for pieces.
    PeerJoined(P),
    /// A peer went away; its requests are void.
    PeerLeft(P),
    /// A peer has one more piece.
    Have(P, PieceId),
    /// A peer has every piece.
    HaveAll(P),
    /// A peer's full set of pieces, replacing what was known.
    HaveSet(P, BitSet),
    /// A requested piece arrived and verified.
    Received(P, PieceId),
    /// A requested piece did not arrive.
    Failed(P, PieceId, FailReason),
    /// The way to a peer changed: `true` if its bytes now go through the
    /// relay, `false` once a direct path (LAN, public address, port
    /// mapping or hole punch) carries them.
    Relayed(P, bool),
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for `piece`.
    Request(P, PieceId),
    /// Abandon the request for `piece` at `peer` (another peer delivered it,
    /// or it timed out).
    Cancel(P, PieceId),
    /// Stop using `peer`: close its connection.
    DropPeer(P, String),
}

#[derive(Debug)]
struct Peer {
    has: BitSet,
    /// It had every piece when we first heard what it has: the teacher or
    /// a school seed, whose uplink the class spares. A classmate who
    /// finished while we watched is not one: its uplink is as free as
    /// anyone's (treating finished pupils as seeds sent slow pupils to
    /// each other's slow uplinks while finished classmates sat idle;
    /// docs/benchmarks.md, "Why the scheduler's rules").
    seed: bool,
    /// piece → when it was requested
    in_flight: BTreeMap<PieceId, Duration>,
    /// Measured delivery rate, bytes per second.
    rate: Option<f64>,
    /// Deliveries in the last [`RATE_WINDOW`]: (when, bytes).
    recent: std::collections::VecDeque<(Duration, u64)>,
    /// When this peer last went from idle to busy.
    busy_since: Option<Duration>,
    failures: u32,
    /// piece → leave it alone until then
    refused: HashMap<PieceId, Duration>,
    /// Leave the whole peer alone until then.
    busy_until: Duration,
    /// Reached through the relay only (see [`Config::relay_pipeline`]).
    relayed: bool,
}

/// The scheduler. See the crate docs.
#[derive(Debug)]
pub struct Scheduler<P> {
    layout: Layout,
    config: Config,
    have: BitSet,
    /// How many known peers have each piece.
    availability: Vec<u32>,
    /// How many requests are in flight for each piece.
    requested: Vec<u8>,
    peers: BTreeMap<P, Peer>,
    dropped: BTreeSet<P>,
    actions: Vec<Action<P>>,
    rng: u64,
}

impl<P: Clone + Ord + Debug> Scheduler<P> {
    /// A scheduler for `layout`, of which the pieces in `have` are already
    /// local. `seed` makes the random choices repeatable.
    pub fn new(layout: Layout, have: BitSet, config: Config, seed: u64) -> Self {
        let n = layout.piece_count() as usize;
        let mut have = have;
        if have.len() != layout.piece_count() {
            have = BitSet::new(layout.piece_count());
        }
        Self {
            layout,
            config,
            have,
            availability: vec![0; n],
            requested: vec![0; n],
            peers: BTreeMap::new(),
            dropped: BTreeSet::new(),
            actions: Vec::new(),
            // SplitMix64 must not start at zero for xorshift below.
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// The layout it schedules.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The pieces we have.
    pub fn have(&self) -> &BitSet {
        &self.have
    }

    /// True once every piece is here.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// How many known peers have `piece`.
    pub fn availability(&self, piece: PieceId) -> u32 {
        self.availability.get(piece as usize).copied().unwrap_or(0)
    }

    /// Requests in flight at `peer`.
    pub fn in_flight(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |p| p.in_flight.len())
    }

    /// Total requests in flight.
    pub fn total_in_flight(&self) -> usize {
        self.peers.values().map(|p| p.in_flight.len()).sum()
    }

    /// Peers currently in use.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The peer's measured rate in bytes per second, once known.
    pub fn rate(&self, peer: &P) -> Option<f64> {
        self.peers.get(peer).and_then(|p| p.rate)
    }

    /// True if the peer was dropped and will not be used again.
    pub fn is_dropped(&self, peer: &P) -> bool {
        self.dropped.contains(peer)
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Duration, event: Event<P>) {
        match event {
            Event::PeerJoined(p) => {
                if !self.dropped.contains(&p) && !self.peers.contains_key(&p) {
                    self.peers.insert(
                        p,
                        Peer {
                            has: BitSet::new(self.layout.piece_count()),
                            seed: false,
                            in_flight: BTreeMap::new(),
                            rate: None,
                            recent: std::collections::VecDeque::new(),
                            busy_since: None,
                            failures: 0,
                            refused: HashMap::new(),
                            busy_until: Duration::ZERO,
                            relayed: false,
                        },
                    );
                }
            }
            Event::PeerLeft(p) => self.remove_peer(&p),
            Event::Have(p, piece) => {
                if let Some(peer) = self.peers.get_mut(&p) {
                    if peer.has.insert(piece) {
                        self.availability[piece as usize] += 1;
                    }
                }
            }
            Event::HaveAll(p) => {
                let n = self.layout.piece_count();
                self.replace_have(&p, BitSet::full(n));
            }
            Event::HaveSet(p, set) => {
                if set.len() == self.layout.piece_count() {
                    self.replace_have(&p, set);
                }
            }
            Event::Received(p, piece) => self.received(now, &p, piece),
            Event::Failed(p, piece, reason) => self.failed(now, &p, piece, reason),
            Event::Relayed(p, relayed) => {
                if let Some(peer) = self.peers.get_mut(&p) {
                    peer.relayed = relayed;
                }
            }
        }
    }

    /// Whether `peer` is known to be reached through the relay only.
    pub fn is_relayed(&self, peer: &P) -> bool {
        self.peers.get(peer).is_some_and(|p| p.relayed)
    }

    /// Checks timeouts and fills every peer's pipeline; returns what to do.
    pub fn poll(&mut self, now: Duration) -> Vec<Action<P>> {
        self.expire(now);
        if !self.is_complete() {
            let alone = self.peers.len() == 1;
            let mut order: Vec<P> = self
                .peers
                .iter()
                // A single source is refilled in batches, once half its
                // pipeline has drained: consecutive pieces asked at once go
                // as one range request (the driver joins them), and one
                // request per piece costs a fifth of loopback throughput.
                .filter(|(_, peer)| !alone || peer.in_flight.len() <= self.pipeline(peer) / 2)
                .map(|(k, _)| k.clone())
                .collect();
            self.shuffle(&mut order);
            // Round-robin one request per peer per pass, so that when pieces
            // are scarce every peer gets a share. A peer that gets nothing
            // in a pass will get nothing later in this poll either.
            while !order.is_empty() {
                let mut next_round = Vec::with_capacity(order.len());
                for p in order {
                    if self.fill_one(now, &p) {
                        next_round.push(p);
                    }
                }
                order = next_round;
            }
        }
        std::mem::take(&mut self.actions)
    }

    /// The earliest time at which [`Scheduler::poll`] has something to
    /// expire, if any.
    pub fn next_deadline(&self) -> Option<Duration> {
        let mut best: Option<Duration> = None;
        for peer in self.peers.values() {
            for (&piece, &started) in &peer.in_flight {
                let t = started + self.timeout_for(peer, piece);
                best = Some(best.map_or(t, |b| b.min(t)));
            }
            for &until in peer.refused.values() {
                best = Some(best.map_or(until, |b| b.min(until)));
            }
        }
        best
    }

    fn replace_have(&mut self, p: &P, set: BitSet) {
        let Some(peer) = self.peers.get_mut(p) else {
            return;
        };
        for i in 0..self.layout.piece_count() {
            match (peer.has.contains(i), set.contains(i)) {
                (false, true) => self.availability[i as usize] += 1,
                (true, false) => self.availability[i as usize] -= 1,
                _ => {}
            }
        }
        if peer.has.count() == 0 {
            peer.seed = set.is_full();
        } else if !set.is_full() {
            peer.seed = false;
        }
        peer.has = set;
    }

    fn remove_peer(&mut self, p: &P) {
        if let Some(peer) = self.peers.remove(p) {
            for piece in peer.has.iter() {
                self.availability[piece as usize] -= 1;
            }
            for piece in peer.in_flight.keys() {
                self.requested[*piece as usize] -= 1;
            }
        }
    }

    fn drop_peer(&mut self, p: &P, reason: String) {
        if self.dropped.insert(p.clone()) {
            self.remove_peer(p);
            self.actions.push(Action::DropPeer(p.clone(), reason));
        }
    }

    fn received(&mut self, now: Duration, p: &P, piece: PieceId) {
        let len = self.layout.piece_len(piece);
        if let Some(peer) = self.peers.get_mut(p) {
            if peer.in_flight.remove(&piece).is_some() {
                self.requested[piece as usize] -= 1;
                // Rate = bytes delivered over the last RATE_WINDOW (or since
                // the peer got busy, if later). Per-piece durations would
                // mislead: pieces in flight together finish together.
                peer.recent.push_back((now, len));
                while peer
                    .recent
                    .front()
                    .is_some_and(|(t, _)| now.saturating_sub(*t) > RATE_WINDOW)
                {
                    peer.recent.pop_front();
                }
                let since = peer
                    .busy_since
                    .unwrap_or(now)
                    .max(now.saturating_sub(RATE_WINDOW));
                let span = now.saturating_sub(since).max(Duration::from_millis(50));
                let bytes: u64 = peer.recent.iter().map(|(_, b)| b).sum();
                peer.rate = Some(bytes as f64 / span.as_secs_f64());
                if peer.in_flight.is_empty() {
                    peer.busy_since = None;
                }
                peer.failures = 0;
            }
        }
        if self.have.insert(piece) {
            // Endgame duplicates are now useless.
            let losers: Vec<P> = self
                .peers
                .iter()
                .filter(|(_, peer)| peer.in_flight.contains_key(&piece))
                .map(|(k, _)| k.clone())
                .collect();
            for loser in losers {
                if let Some(peer) = self.peers.get_mut(&loser) {
                    peer.in_flight.remove(&piece);
                    self.requested[piece as usize] -= 1;
                }
                self.actions.push(Action::Cancel(loser, piece));
            }
        }
    }

    fn failed(&mut self, now: Duration, p: &P, piece: PieceId, reason: FailReason) {
        let Some(peer) = self.peers.get_mut(p) else {
            return;
        };
        if peer.in_flight.remove(&piece).is_some() {
            self.requested[piece as usize] -= 1;
        }
        match reason {
            FailReason::Corrupt => self.drop_peer(p, "sent data that failed verification".into()),
            FailReason::Refused => {
                peer.refused.insert(piece, now + self.config.refuse_backoff);
            }
            FailReason::Busy => peer.busy_until = now + self.config.busy_backoff,
            FailReason::Timeout | FailReason::Error => {
                peer.failures += 1;
                // Try this piece elsewhere first.
                peer.refused.insert(piece, now + self.config.refuse_backoff);
                if peer.failures >= self.config.max_failures {
                    let n = peer.failures;
                    self.drop_peer(p, format!("{n} requests in a row failed"));
                }
            }
        }
    }

    fn timeout_for(&self, peer: &Peer, piece: PieceId) -> Duration {
        request_timeout(&self.config, &self.layout, peer, piece)
    }

    fn expire(&mut self, now: Duration) {
        let mut timed_out = Vec::new();
        for (k, peer) in &mut self.peers {
            peer.refused.retain(|_, until| *until > now);
            for (&piece, &started) in &peer.in_flight {
                let limit = request_timeout(&self.config, &self.layout, peer, piece);
                if now.saturating_sub(started) > limit {
                    timed_out.push((k.clone(), piece));
                }
            }
        }
        for (p, piece) in timed_out {
            self.actions.push(Action::Cancel(p.clone(), piece));
            self.failed(now, &p, piece, FailReason::Timeout);
        }
    }

    fn pipeline(&self, peer: &Peer) -> usize {
        let depth = peer.rate.map_or(self.config.min_pipeline, |r| {
            (r * self.config.pipeline_time.as_secs_f64() / self.layout.piece_size() as f64).ceil()
                as usize
        });
        let max = if peer.relayed {
            self.config.relay_pipeline.max(self.config.min_pipeline)
        } else if self.peers.len() == 1 {
            self.config.alone_max_pipeline.max(self.config.max_pipeline)
        } else {
            self.config.max_pipeline
        };
        depth.clamp(self.config.min_pipeline, max)
    }

    /// Issues one request to `p` if it has room and something useful.
    fn fill_one(&mut self, now: Duration, p: &P) -> bool {
        let Some(peer) = self.peers.get(p) else {
            return false;
        };
        if peer.in_flight.len() >= self.pipeline(peer) || peer.busy_until > now {
            return false;
        }
        let mut rng = self.rng;
        let picked = self.pick(now, peer, &mut rng);
        self.rng = rng;
        let Some(piece) = picked else {
            return false;
        };
        if let Some(peer) = self.peers.get_mut(p) {
            if peer.in_flight.is_empty() && peer.busy_since.is_none() {
                peer.busy_since = Some(now);
            }
            peer.in_flight.insert(piece, now);
        }
        self.requested[piece as usize] += 1;
        self.actions.push(Action::Request(p.clone(), piece));
        true
    }

    fn pick(&self, now: Duration, peer: &Peer, rng: &mut u64) -> Option<PieceId> {
        let usable = |i: PieceId| {
            !self.have.contains(i)
                && peer.has.contains(i)
                && !peer.in_flight.contains_key(&i)
                && peer.refused.get(&i).is_none_or(|until| *until <= now)
        };
        let random_phase = self.have.count() < self.config.random_first;
        // A peer with every piece (the teacher, the school's seed) is asked
        // only for pieces no other peer has: classmates carry the rest, and
        // the seed's uplink, usually the scarcest, sends each piece about
        // once. Endgame lifts this.
        let full_peers = self
            .peers
            .values()
            .filter(|p| p.seed && p.has.is_full())
            .count() as u32;
        let seed_only = peer.seed && peer.has.is_full();
        let alone = self.peers.len() == 1;
        // Normal mode: pieces nobody is fetching yet.
        let mut best: Option<(u32, PieceId)> = None;
        let mut ties = 0u64;
        for i in peer.has.iter() {
            if self.requested[i as usize] != 0 || !usable(i) {
                continue;
            }
            if seed_only && self.availability[i as usize] > full_peers {
                continue;
            }
            if alone {
                // A single source: nobody to diversify for, and iroh-blobs
                // reads a file faster in order than in random order
                // (docs/benchmarks.md, single-peer loopback).
                best = Some((0, i));
                break;
            }
            let key = if random_phase {
                0
            } else {
                self.availability[i as usize]
            };
            match best {
                Some((k, _)) if key > k => {}
                Some((k, _)) if key == k => {
                    // Reservoir sampling: each tie equally likely.
                    ties += 1;
                    if next(rng).is_multiple_of(ties) {
                        best = Some((key, i));
                    }
                }
                _ => {
                    best = Some((key, i));
                    ties = 1;
                }
            }
        }
        if best.is_none() && self.endgame() {
            // Endgame: every missing piece is being fetched; ask this peer
            // too for the least-duplicated one it has.
            for i in peer.has.iter() {
                let copies = self.requested[i as usize] as u32;
                if copies >= self.config.endgame_copies as u32 || !usable(i) {
                    continue;
                }
                // Duplicates from a seed only for pieces no classmate has,
                // or that have waited long at the classmates asked.
                if seed_only
                    && self.availability[i as usize] > full_peers
                    && !self.waited(now, i, self.config.endgame_patience)
                {
                    continue;
                }
                match best {
                    Some((k, _)) if copies > k => {}
                    Some((k, _)) if copies == k => {
                        ties += 1;
                        if next(rng).is_multiple_of(ties) {
                            best = Some((copies, i));
                        }
                    }
                    _ => {
                        best = Some((copies, i));
                        ties = 1;
                    }
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// True if the oldest request in flight for `piece` is older than
    /// `patience`.
    fn waited(&self, now: Duration, piece: PieceId, patience: Duration) -> bool {
        self.peers
            .values()
            .filter_map(|p| p.in_flight.get(&piece))
            .any(|started| now.saturating_sub(*started) > patience)
    }

    /// True when every missing piece has a request in flight.
    fn endgame(&self) -> bool {
        (0..self.layout.piece_count())
            .all(|i| self.have.contains(i) || self.requested[i as usize] > 0)
    }

    fn shuffle(&mut self, items: &mut [P]) {
        for i in (1..items.len()).rev() {
            let j = (next(&mut self.rng) % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Deliveries older than this do not count towards a peer's rate.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// How long a request may take: a multiple of its expected duration at the
/// peer's measured rate (queued requests wait for those ahead of them), and
/// never less than the configured floor.
fn request_timeout(config: &Config, layout: &Layout, peer: &Peer, piece: PieceId) -> Duration {
    let expected = peer.rate.map_or(Duration::ZERO, |r| {
        let queued = peer.in_flight.len().max(1) as f64;
        Duration::from_secs_f64(config.timeout_factor * queued * layout.piece_len(piece) as f64 / r)
    });
    expected.max(config.min_request_timeout)
}

/// SplitMix64: tiny, fast, good enough to break ties.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
