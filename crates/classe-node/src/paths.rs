//! Which way bytes went: direct (a LAN, a public address, a port mapping
//! or a hole punched through two home routers) or through the school's
//! relay, per peer.
//!
//! ```text
//!   Endpoint hook after_handshake(conn)  (every connection, both directions)
//!     '-> watcher task per connection (ends when the connection closes)
//!           path events ─> kind of each path id (relay or IP)
//!           every second ─> live bytes of each path (QUIC path stats)
//!           on close ─> final bytes of each path, moved into `done`
//!   Paths::snapshot() = done + live, per peer
//! ```
//!
//! The counts are QUIC datagram bytes (payload plus QUIC and encryption
//! overhead, not IP/UDP headers), so they are a little larger than the
//! payload counters of [`crate::Traffic`]; they say how a peer's bytes
//! travelled, the payload counters say how many were useful.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh::endpoint::{
    AfterHandshakeOutcome, Connection, EndpointHooks, PathEvent, PathId, WeakConnectionHandle,
};
use n0_future::StreamExt;
use serde::Serialize;

/// How often live path counters are read.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Most connections watched at once; beyond, a connection is not counted
/// (the node caps connections far below this).
const MAX_WATCHED: usize = 4096;

/// Transport bytes exchanged with one peer, by path kind.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PathBytes {
    /// Received over direct (IP) paths.
    pub direct_received: u64,
    /// Sent over direct (IP) paths.
    pub direct_sent: u64,
    /// Received through a relay.
    pub relay_received: u64,
    /// Sent through a relay.
    pub relay_sent: u64,
}

impl PathBytes {
    fn add(&mut self, other: &PathBytes) {
        self.direct_received += other.direct_received;
        self.direct_sent += other.direct_sent;
        self.relay_received += other.relay_received;
        self.relay_sent += other.relay_sent;
    }
}

/// What the QUIC layer did for all connections of a node, summed over
/// every path (finished connections exactly, live ones as of their last
/// sample): the per-packet work behind the payload counters. For the
/// lab's CPU accounting (issue 11), where cost follows datagrams and
/// frames, not bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct QuicCounters {
    /// UDP datagrams sent (a GSO batch counts each segment).
    pub datagrams_sent: u64,
    /// UDP datagrams received.
    pub datagrams_received: u64,
    /// QUIC packets sent.
    pub packets_sent: u64,
    /// QUIC packets declared lost.
    pub packets_lost: u64,
    /// Congestion events (loss or ECN reactions).
    pub congestion_events: u64,
    /// ACK frames sent (ACK and PATH_ACK).
    pub acks_sent: u64,
    /// ACK frames received.
    pub acks_received: u64,
    /// STREAM frames sent.
    pub stream_frames_sent: u64,
    /// STREAM frames received.
    pub stream_frames_received: u64,
    /// Flow-control updates sent (MAX_DATA, MAX_STREAM_DATA).
    pub flow_updates_sent: u64,
    /// PING frames sent (keep-alives).
    pub pings_sent: u64,
    /// Largest MTU any path reached.
    pub max_mtu: u16,
}

impl QuicCounters {
    /// The counters of one path, as QUIC reports them.
    fn of_path(p: &iroh::endpoint::PathStats) -> Self {
        Self {
            datagrams_sent: p.udp_tx.datagrams,
            datagrams_received: p.udp_rx.datagrams,
            packets_sent: p.sent_packets,
            packets_lost: p.lost_packets,
            congestion_events: p.congestion_events,
            acks_sent: p.frame_tx.acks + p.frame_tx.path_acks,
            acks_received: p.frame_rx.acks + p.frame_rx.path_acks,
            stream_frames_sent: p.frame_tx.stream,
            stream_frames_received: p.frame_rx.stream,
            flow_updates_sent: p.frame_tx.max_data + p.frame_tx.max_stream_data,
            pings_sent: p.frame_tx.ping,
            max_mtu: p.current_mtu,
        }
    }

    fn add(&mut self, o: &QuicCounters) {
        self.datagrams_sent += o.datagrams_sent;
        self.datagrams_received += o.datagrams_received;
        self.packets_sent += o.packets_sent;
        self.packets_lost += o.packets_lost;
        self.congestion_events += o.congestion_events;
        self.acks_sent += o.acks_sent;
        self.acks_received += o.acks_received;
        self.stream_frames_sent += o.stream_frames_sent;
        self.stream_frames_received += o.stream_frames_received;
        self.flow_updates_sent += o.flow_updates_sent;
        self.pings_sent += o.pings_sent;
        self.max_mtu = self.max_mtu.max(o.max_mtu);
    }
}

#[derive(Debug)]
struct Live {
    peer: [u8; 32],
    bytes: PathBytes,
    quic: QuicCounters,
    /// Whether the path carrying application data now is the relay.
    relayed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<usize, Live>,
    done: HashMap<[u8; 32], PathBytes>,
    done_quic: QuicCounters,
}

/// The per-peer path counters of one node; also the endpoint hook that
/// starts a watcher for every connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Paths {
    inner: Arc<Mutex<Inner>>,
}

impl Paths {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // Plain counters: a panic elsewhere leaves them usable.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Bytes per peer (node id in hex), finished and live connections
    /// together.
    pub fn snapshot(&self) -> BTreeMap<String, PathBytes> {
        self.with(|inner| {
            let mut out: BTreeMap<String, PathBytes> = BTreeMap::new();
            for (peer, b) in &inner.done {
                out.entry(data_encoding::HEXLOWER.encode(peer))
                    .or_default()
                    .add(b);
            }
            for live in inner.live.values() {
                out.entry(data_encoding::HEXLOWER.encode(&live.peer))
                    .or_default()
                    .add(&live.bytes);
            }
            out
        })
    }

    /// QUIC counters of every connection, finished and live.
    pub fn quic(&self) -> QuicCounters {
        self.with(|inner| {
            let mut q = inner.done_quic;
            for live in inner.live.values() {
                q.add(&live.quic);
            }
            q
        })
    }

    /// True if every open connection to `peer` sends its data through the
    /// relay now; None if there is no open connection to it.
    pub fn relayed(&self, peer: &[u8; 32]) -> Option<bool> {
        self.with(|inner| {
            let mut any = None;
            for live in inner.live.values().filter(|l| &l.peer == peer) {
                if !live.relayed {
                    return Some(false);
                }
                any = Some(true);
            }
            any
        })
    }

    fn start(&self, conn: &Connection) {
        let id = conn.stable_id();
        let peer = *conn.remote_id().as_bytes();
        let admitted = self.with(|inner| {
            if inner.live.len() >= MAX_WATCHED {
                return false;
            }
            inner.live.insert(
                id,
                Live {
                    peer,
                    bytes: PathBytes::default(),
                    quic: QuicCounters::default(),
                    relayed: false,
                },
            );
            true
        });
        if !admitted {
            tracing::debug!("too many connections to count their paths");
            return;
        }
        let mut per_path = PerPath::default();
        let relayed = sample(conn, &mut per_path);
        self.set_live(id, &per_path, relayed);
        let events = conn.path_events();
        let weak = conn.weak_handle();
        let paths = self.clone();
        let span =
            tracing::debug_span!("paths", peer = %data_encoding::HEXLOWER.encode(&peer[..5]));
        tokio::spawn(tracing::Instrument::instrument(
            async move { paths.watch(id, peer, weak, events, per_path).await },
            span,
        ));
    }

    fn set_live(&self, id: usize, per_path: &PerPath, relayed: bool) {
        let (bytes, quic) = (per_path.total(), per_path.quic());
        self.with(|inner| {
            if let Some(l) = inner.live.get_mut(&id) {
                l.bytes = bytes;
                l.quic = quic;
                l.relayed = relayed;
            }
        });
    }

    async fn watch(
        self,
        id: usize,
        peer: [u8; 32],
        weak: WeakConnectionHandle,
        mut events: iroh::endpoint::PathEventStream,
        mut per_path: PerPath,
    ) {
        let closed = weak.closed();
        tokio::pin!(closed);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events_open = true;
        loop {
            tokio::select! {
                biased;
                closed = &mut closed => {
                    // Final stats of every path still known: exact totals.
                    if let Some(closed) = closed {
                        for (path, stats) in &closed.path_stats {
                            per_path.record(*path, None, stats);
                        }
                    }
                    break;
                }
                ev = events.next(), if events_open => match ev {
                    Some(PathEvent::Opened { id, remote_addr, .. }) => {
                        per_path.kind(id, remote_addr.is_relay());
                    }
                    Some(PathEvent::Closed { id, remote_addr, last_stats, .. }) => {
                        per_path.record(id, Some(remote_addr.is_relay()), &last_stats);
                    }
                    Some(_) => {}
                    None => events_open = false,
                },
                _ = tick.tick() => {
                    let Some(conn) = weak.upgrade() else { break };
                    let relayed = sample(&conn, &mut per_path);
                    drop(conn);
                    self.set_live(id, &per_path, relayed);
                }
            }
        }
        let quic = per_path.quic();
        self.with(|inner| {
            inner.live.remove(&id);
            inner.done.entry(peer).or_default().add(&per_path.total());
            inner.done_quic.add(&quic);
        });
    }
}

/// Per path of one connection: its kind (relay or not), its latest byte
/// counts (live, or final once it closed) and its latest QUIC counters.
#[derive(Debug, Default)]
struct PerPath(
    HashMap<PathId, (bool, u64, u64)>,
    HashMap<PathId, QuicCounters>,
);

impl PerPath {
    fn kind(&mut self, path: PathId, relay: bool) {
        self.0.entry(path).or_insert((relay, 0, 0)).0 = relay;
    }

    /// Counters only grow: a stale reading never lowers what was seen.
    fn record(&mut self, path: PathId, relay: Option<bool>, stats: &iroh::endpoint::PathStats) {
        let e = self.0.entry(path).or_insert((false, 0, 0));
        if let Some(r) = relay {
            e.0 = r;
        }
        e.1 = e.1.max(stats.udp_rx.bytes);
        e.2 = e.2.max(stats.udp_tx.bytes);
        let q = QuicCounters::of_path(stats);
        let old = self.1.entry(path).or_default();
        if q.datagrams_sent + q.datagrams_received >= old.datagrams_sent + old.datagrams_received {
            *old = q;
        }
    }

    fn quic(&self) -> QuicCounters {
        let mut q = QuicCounters::default();
        for c in self.1.values() {
            q.add(c);
        }
        q
    }

    fn total(&self) -> PathBytes {
        let mut b = PathBytes::default();
        for (relay, rx, tx) in self.0.values() {
            if *relay {
                b.relay_received += rx;
                b.relay_sent += tx;
            } else {
                b.direct_received += rx;
                b.direct_sent += tx;
            }
        }
        b
    }
}

/// Reads the live counters of every path of `conn` into `per_path`;
/// returns whether the selected path is the relay.
fn sample(conn: &Connection, per_path: &mut PerPath) -> bool {
    let mut relayed = false;
    let list = conn.paths();
    for p in list.iter() {
        per_path.record(p.id(), Some(p.is_relay()), &p.stats());
        if p.is_selected() {
            relayed = p.is_relay();
        }
    }
    relayed
}

impl EndpointHooks for Paths {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        self.start(conn);
        AfterHandshakeOutcome::accept()
    }
}
