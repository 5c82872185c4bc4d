//! Who to connect to, when to look for more, when to give up.
//!
//! The [`Scheduler`](crate::Scheduler) decides which piece to ask of which
//! connected peer; [`PeerBook`] decides which peers to be connected to. It
//! holds the providers a download has heard of (the ticket's, the ones
//! peer exchange named, the DHT's), dials them while there is room, asks
//! the DHT for more while the swarm is small, and watches the download as
//! a whole: with nobody left to ask, or nothing received for too long, it
//! says to give up. Like the scheduler it is sans-IO: the driver reports
//! what happened (a dial succeeded or failed, a session ended, bytes
//! arrived, a lookup answered) with the current time, and does what
//! [`PeerBook::poll`] and [`PeerBook::check`] return.
//!
//! `P` names a peer; `I` is what it takes to dial one (the node's
//! `ProviderInfo`), carried through untouched.

use std::{collections::BTreeSet, fmt::Debug, time::Duration};

/// Tuning knobs of a [`PeerBook`]. The defaults are those the lab
/// measured the node with.
#[derive(Debug, Clone)]
pub struct BookConfig {
    /// Most peers connected or being dialled at once. A class of 30 with
    /// its teacher and a school seed fits, so in a class every classmate
    /// is used; beyond it each peer costs a connection, a swarm session
    /// and a share of the scheduler's work for little more bandwidth.
    pub max_peers: usize,
    /// Most learned providers kept waiting to be dialled: a peer that
    /// floods peer exchange cannot grow it without bound.
    pub backlog_cap: usize,
    /// Most providers taken from one message (a welcome, an update, a DHT
    /// answer); the same bound as the peers a node remembers per bundle.
    pub learn_cap: usize,
    /// Pause before the download's first DHT lookup (the fetch has just
    /// done one, or the ticket's providers answered); it doubles up to
    /// [`BookConfig::lookup_max_every`], counted from the end of the
    /// previous lookup. The DHT is asked again at all because pupils
    /// start later, and a seed node provides a bundle once it has
    /// mirrored it.
    pub lookup_first_every: Duration,
    /// Longest pause between two DHT lookups.
    pub lookup_max_every: Duration,
    /// DHT lookups run only while fewer peers than this are connected:
    /// with a few peers, peer exchange finds the rest, and each lookup
    /// opens discovery connections to the providers it names (the mesh
    /// this makes when every pupil looks up costs makespan:
    /// docs/benchmarks.md, "Why the scheduler's rules").
    pub lookup_below_peers: usize,
    /// With discovery running, how long a download with no peer, no dial
    /// in progress and nobody left to dial waits for a provider to turn
    /// up before it gives up. Without discovery nobody can turn up, and
    /// it gives up at once.
    pub alone_patience: Duration,
    /// A download that receives nothing for this long says so, and asks
    /// every provider it knows of again (the ticket's, the ones peer
    /// exchange and the DHT named, a fresh DHT lookup): a peer that was
    /// unreachable may be back, and one that refuses may have been
    /// dropped in the meantime.
    pub stall_warn: Duration,
    /// A download that receives nothing for this long gives up (never
    /// before [`BookConfig::stall_warn`]). Progress is the only thing
    /// that resets it: connected peers that refuse do not.
    pub stall_give_up: Duration,
}

impl Default for BookConfig {
    fn default() -> Self {
        Self {
            max_peers: 32,
            backlog_cap: 256,
            learn_cap: 64,
            lookup_first_every: Duration::from_secs(2),
            lookup_max_every: Duration::from_secs(30),
            lookup_below_peers: 4,
            alone_patience: Duration::from_secs(15),
            stall_warn: Duration::from_secs(10),
            stall_give_up: Duration::from_secs(60),
        }
    }
}

/// Which lookup a [`BookAction::LookUp`] asks for; hand it back with the
/// answer to [`PeerBook::looked_up`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The regular one: the next is timed from its end.
    Periodic,
    /// The one a stall asks for ([`PeerBook::ask_again`]).
    Again,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookAction<P, I> {
    /// Connect to this peer; report [`PeerBook::connected`] or
    /// [`PeerBook::dial_failed`].
    Dial(P, I),
    /// Ask the DHT who provides the bundle; report
    /// [`PeerBook::looked_up`].
    LookUp(Lookup),
}

/// Why to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// No peer, no dial in progress, nobody left to dial (for
    /// [`BookConfig::alone_patience`], with discovery).
    Alone,
    /// Nothing received for this long, from anybody.
    Quiet(Duration),
}

/// What [`PeerBook::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing received for this long (once per stall): say so, and call
    /// [`PeerBook::ask_again`].
    Stalled(Duration),
    /// Stop the download.
    GiveUp(GiveUp),
}

/// The download's peers. See the module docs.
#[derive(Debug)]
pub struct PeerBook<P, I> {
    config: BookConfig,
    me: P,
    discovery: bool,
    connected: BTreeSet<P>,
    connecting: BTreeSet<P>,
    /// Peers dialled (or connected from the start), and ourselves: not
    /// dialled again until [`PeerBook::ask_again`].
    tried: BTreeSet<P>,
    /// Peers the scheduler dropped (bad bytes, failure after failure):
    /// never dialled again in this download, not even after a stall.
    /// At most one entry per peer ever connected: bounded by the dials.
    dropped: BTreeSet<P>,
    /// Learned providers, dialled last in, first out: the newest news
    /// first.
    backlog: Vec<(P, I)>,
    /// The providers the download started with (the ticket's), asked
    /// again after a stall.
    known: Vec<(P, I)>,
    /// Pause before the next periodic lookup.
    lookup_every: Duration,
    /// When the next periodic lookup is due; None while one runs (or
    /// without discovery).
    lookup_at: Option<Duration>,
    /// A lookup asked for by a stall, not emitted yet.
    lookup_now: bool,
    alone_since: Option<Duration>,
    /// When the last byte arrived (or the download started).
    last_progress: Duration,
    /// The current stall was reported.
    warned: bool,
}

impl<P: Clone + Ord + Debug, I: Clone> PeerBook<P, I> {
    /// A book for a download starting at time zero. `me` is never
    /// dialled; `discovery`: a DHT is there to ask.
    pub fn new(me: P, config: BookConfig, discovery: bool) -> Self {
        let lookup_at = discovery.then_some(config.lookup_first_every);
        Self {
            lookup_every: config.lookup_first_every,
            config,
            tried: BTreeSet::from([me.clone()]),
            me,
            discovery,
            connected: BTreeSet::new(),
            connecting: BTreeSet::new(),
            dropped: BTreeSet::new(),
            backlog: Vec::new(),
            known: Vec::new(),
            lookup_at,
            lookup_now: false,
            alone_since: None,
            last_progress: Duration::ZERO,
            warned: false,
        }
    }

    /// A provider the download starts connected to (the ticket's). True
    /// if it is a new peer.
    pub fn add_provider(&mut self, key: P, info: I) -> bool {
        self.tried.insert(key.clone());
        self.known.push((key.clone(), info));
        self.connected.insert(key)
    }

    /// Providers to dial that need no checks (the ones this node already
    /// remembers for the bundle).
    pub fn remembered(&mut self, peers: impl IntoIterator<Item = (P, I)>) {
        for entry in peers {
            if self.backlog.len() < self.config.backlog_cap {
                self.backlog.push(entry);
            }
        }
    }

    /// Providers a peer named (peer exchange). At most
    /// [`BookConfig::learn_cap`] of them are looked at; ourselves and
    /// those `sane` rejects are skipped. Returns the ones taken, for the
    /// node to remember and pass on.
    pub fn learn(
        &mut self,
        learned: impl IntoIterator<Item = (P, I)>,
        sane: impl Fn(&I) -> bool,
    ) -> Vec<(P, I)> {
        let mut taken = Vec::new();
        for (key, info) in learned.into_iter().take(self.config.learn_cap) {
            if key == self.me || !sane(&info) {
                continue;
            }
            if self.backlog.len() < self.config.backlog_cap {
                self.backlog.push((key.clone(), info.clone()));
            }
            taken.push((key, info));
        }
        taken
    }

    /// A DHT lookup answered: providers already tried are dropped, the
    /// rest learned as in [`PeerBook::learn`]. A periodic lookup's end
    /// times the next one.
    pub fn looked_up(
        &mut self,
        now: Duration,
        lookup: Lookup,
        found: impl IntoIterator<Item = (P, I)>,
        sane: impl Fn(&I) -> bool,
    ) -> Vec<(P, I)> {
        if lookup == Lookup::Periodic && self.discovery {
            self.lookup_at = Some(now + self.lookup_every);
        }
        let fresh: Vec<(P, I)> = found
            .into_iter()
            .filter(|(key, _)| !self.tried.contains(key))
            .collect();
        self.learn(fresh, sane)
    }

    /// A dial succeeded. True if it is a new peer.
    pub fn connected(&mut self, key: P) -> bool {
        self.connecting.remove(&key);
        self.connected.insert(key)
    }

    /// A dial failed (or the peer cannot be dialled at all).
    pub fn dial_failed(&mut self, key: &P) {
        self.connecting.remove(key);
    }

    /// A peer left. It may be dialled again after a stall.
    pub fn left(&mut self, key: &P) {
        self.connected.remove(key);
    }

    /// The scheduler dropped a peer: it left, and is not dialled again in
    /// this download, whoever names it (else a stall's ask-again would
    /// bring it back to hold a place under the cap, count towards the
    /// below-4 lookup rule and keep the alone patience from running).
    pub fn dropped(&mut self, key: &P) {
        self.connected.remove(key);
        self.dropped.insert(key.clone());
    }

    /// Bytes arrived: the download is not stalled.
    pub fn progress(&mut self, now: Duration) {
        self.last_progress = now;
        self.warned = false;
    }

    /// After a stall: every provider known of may be dialled again (the
    /// ticket's, and `also`: the ones peer exchange and the DHT named,
    /// which the node remembers), and the DHT is asked at once.
    pub fn ask_again(&mut self, also: impl IntoIterator<Item = (P, I)>) {
        let (connected, dropped, me) = (&self.connected, &self.dropped, &self.me);
        self.tried
            .retain(|k| connected.contains(k) || dropped.contains(k) || k == me);
        let known = self.known.clone();
        for (key, info) in known.into_iter().chain(also) {
            if !self.connected.contains(&key) && self.backlog.len() < self.config.backlog_cap {
                self.backlog.push((key, info));
            }
        }
        self.lookup_now = self.discovery;
    }

    /// What to do now: dial while there is room, look up when due.
    pub fn poll(&mut self, now: Duration) -> Vec<BookAction<P, I>> {
        let mut out = Vec::new();
        while self.connected.len() + self.connecting.len() < self.config.max_peers {
            let Some((key, info)) = self.backlog.pop() else {
                break;
            };
            if !self.tried.insert(key.clone()) {
                continue;
            }
            self.connecting.insert(key.clone());
            out.push(BookAction::Dial(key, info));
        }
        if std::mem::take(&mut self.lookup_now) {
            out.push(BookAction::LookUp(Lookup::Again));
        }
        if self.lookup_at.is_some_and(|at| now >= at) {
            self.lookup_every = (self.lookup_every * 2).min(self.config.lookup_max_every);
            if self.connected.len() >= self.config.lookup_below_peers {
                self.lookup_at = Some(now + self.lookup_every);
            } else {
                self.lookup_at = None;
                out.push(BookAction::LookUp(Lookup::Periodic));
            }
        }
        out
    }

    /// Whether to go on. Call it after [`PeerBook::poll`]'s dials have
    /// been started (or reported failed), while pieces are missing.
    pub fn check(&mut self, now: Duration) -> Option<Verdict> {
        if !self.is_alone() {
            self.alone_since = None;
        } else if !self.discovery {
            return Some(Verdict::GiveUp(GiveUp::Alone));
        } else {
            let since = *self.alone_since.get_or_insert(now);
            if now.saturating_sub(since) >= self.config.alone_patience {
                return Some(Verdict::GiveUp(GiveUp::Alone));
            }
        }
        let quiet = now.saturating_sub(self.last_progress);
        if quiet >= self.give_up_after() {
            Some(Verdict::GiveUp(GiveUp::Quiet(quiet)))
        } else if quiet >= self.config.stall_warn && !self.warned {
            self.warned = true;
            Some(Verdict::Stalled(quiet))
        } else {
            None
        }
    }

    /// The earliest time at which [`PeerBook::poll`] or
    /// [`PeerBook::check`] has something new to say, if any.
    pub fn next_deadline(&self) -> Option<Duration> {
        let room = self.connected.len() + self.connecting.len() < self.config.max_peers;
        let now = (self.lookup_now || (room && !self.backlog.is_empty())).then_some(Duration::ZERO);
        let alone = self.alone_since.map(|t| t + self.config.alone_patience);
        let stall = if self.warned {
            self.last_progress + self.give_up_after()
        } else {
            self.last_progress + self.config.stall_warn
        };
        [now, self.lookup_at, alone, Some(stall)]
            .into_iter()
            .flatten()
            .min()
    }

    fn give_up_after(&self) -> Duration {
        self.config.stall_give_up.max(self.config.stall_warn)
    }

    /// No peer, no dial in progress, nobody left to dial.
    fn is_alone(&self) -> bool {
        self.connected.is_empty() && self.connecting.is_empty() && self.backlog.is_empty()
    }

    /// Peers connected now.
    pub fn peer_count(&self) -> usize {
        self.connected.len()
    }

    /// Dials in progress.
    pub fn connecting_count(&self) -> usize {
        self.connecting.len()
    }

    /// Learned providers waiting to be dialled.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// True if `key` is connected.
    pub fn is_connected(&self, key: &P) -> bool {
        self.connected.contains(key)
    }

    /// True if `key` will not be dialled again before
    /// [`PeerBook::ask_again`].
    pub fn is_tried(&self, key: &P) -> bool {
        self.tried.contains(key)
    }
}
