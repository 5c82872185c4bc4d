//! The control plane of classe: how nodes find each other and learn about
//! new lessons without the teacher online. libp2p over TCP + noise + yamux:
//!
//! - **Kademlia**, a private DHT under `/classe/kad/1.0.0` (never the
//!   public IPFS one). Provider records map a bundle root to the nodes that
//!   hold it; each author has a catch-up record holding the latest signed
//!   announcement of each of their lessons.
//! - **gossipsub**, one topic per author key, carrying signed
//!   announcements ([`classe_bundle::announce`]).
//! - **mDNS** on a LAN: no seed, no configuration.
//! - **identify**: how a node learns a peer's data-plane (iroh) addresses,
//!   which every node advertises as `/ipX/A/udp/P/quic-v1` external
//!   addresses beside its TCP ones. A peer's iroh node id is its libp2p
//!   peer id: both come from the same ed25519 node key.
//!
//! ```text
//!   Control (handle) --commands (bounded)--> task: Swarm<Behaviour>
//!        ^                                    |  kad / gossipsub / mdns / identify
//!        '----------events (bounded)----------'  book of latest announcements
//! ```
//!
//! Everything that arrives is checked before it is kept or passed on:
//! announcements (signature, followed author, newer version), catch-up
//! records (every entry signed by the record's author), provider records
//! (our key space, bounded addresses). What fails is dropped, counted in
//! [`Stats`] and logged; nothing from here triggers a download by itself.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod behaviour;
mod ids;
mod task;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use classe_bundle::{AuthorKey, ProviderInfo, SignedAnnouncement};
pub use ids::{node_id_of, peer_id_of};
pub use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

/// Kademlia protocol name: our own DHT, not the public one.
pub const KAD_PROTOCOL: &str = "/classe/kad/1.0.0";
/// identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/classe/id/1.0.0";
/// Commands waiting for the control task.
const COMMAND_QUEUE: usize = 64;
/// Events waiting for the node.
pub const EVENT_QUEUE: usize = 256;

/// How the control plane runs.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// TCP address to listen on (port 0: any).
    pub listen: SocketAddr,
    /// Nodes to join through (a school's seed node).
    pub bootstrap: Vec<Multiaddr>,
    /// Look for peers on the LAN with mDNS.
    pub mdns: bool,
    /// This node's data-plane (iroh) addresses, advertised to peers.
    pub data_addrs: Vec<SocketAddr>,
    /// The relay this node is reachable through, advertised beside them.
    pub relay_url: Option<String>,
    /// Authors whose announcements are accepted.
    pub follow: Vec<AuthorKey>,
    /// Schools whose bulletins (and certified teachers' announcements) are
    /// received: their gossip topic and DHT record.
    pub schools: Vec<AuthorKey>,
    /// Announcements known from an earlier run: the starting book, so a
    /// replay of something older is recognised after a restart.
    pub known: Vec<SignedAnnouncement>,
    /// How long a provider record lives without being refreshed.
    pub provider_ttl: Duration,
    /// How often held bundles are announced again.
    pub provider_refresh: Duration,
    /// How often followed authors' catch-up records are read again.
    pub catch_up_every: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            bootstrap: Vec::new(),
            mdns: true,
            data_addrs: Vec::new(),
            relay_url: None,
            follow: Vec::new(),
            schools: Vec::new(),
            known: Vec::new(),
            provider_ttl: Duration::from_secs(30 * 60),
            provider_refresh: Duration::from_secs(10 * 60),
            catch_up_every: Duration::from_secs(60),
        }
    }
}

/// What the control plane tells the node.
#[derive(Debug, Clone)]
pub enum ControlEvent {
    /// A verified announcement by a followed author, newer than anything
    /// known of its lesson.
    Announced {
        /// The announcement.
        announcement: SignedAnnouncement,
        /// Where it came from: `gossip`, `dht` or `local`.
        via: &'static str,
    },
    /// A school bulletin newer than the one held, verified against the
    /// school's identity (its chain, list and statement signatures).
    SchoolBulletin {
        /// The school's identity.
        school: AuthorKey,
        /// The bulletin.
        bulletin: Box<classe_bundle::school::Bulletin>,
        /// `gossip` or `dht`.
        via: &'static str,
    },
    /// A read of a school's DHT record is over (its bulletin, if newer,
    /// was reported before).
    SchoolChecked {
        /// The school's identity.
        school: AuthorKey,
    },
    /// A teacher's announcement on a school's topic, with a certificate of
    /// that school for its signer (chain and signature checked; dates,
    /// roles and revocation are the receiver's to check).
    Certified {
        /// The school's identity.
        school: AuthorKey,
        /// The teacher's credentials.
        credentials: Box<classe_bundle::school::Credentials>,
        /// The announcement (signature checked).
        announcement: SignedAnnouncement,
    },
    /// Something was refused (already counted in [`Stats`]).
    Ignored {
        /// Why, in a few words.
        reason: String,
        /// The peer it came from, if known.
        from: Option<String>,
    },
}

/// Counters, for logs and `--stats`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Announcements refused: bad signature, undecodable, oversized, wrong
    /// topic, unfollowed author.
    pub bad_announcements: AtomicU64,
    /// Validly signed announcements not newer than what is known.
    pub stale_announcements: AtomicU64,
    /// Catch-up records refused.
    pub bad_records: AtomicU64,
    /// Provider records refused.
    pub bad_provider_records: AtomicU64,
    /// Connections refused over the limit.
    pub refused_connections: AtomicU64,
}

/// A snapshot of [`Counters`] plus the peers connected now.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// See [`Counters::bad_announcements`].
    pub bad_announcements: u64,
    /// See [`Counters::stale_announcements`].
    pub stale_announcements: u64,
    /// See [`Counters::bad_records`].
    pub bad_records: u64,
    /// See [`Counters::bad_provider_records`].
    pub bad_provider_records: u64,
    /// See [`Counters::refused_connections`].
    pub refused_connections: u64,
}

/// Starting the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The TCP listener could not be opened.
    #[error("cannot listen for discovery on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// libp2p refused the setup (a bug, or the system lacks something).
    #[error("cannot start discovery: {0}")]
    Setup(String),
}

pub(crate) enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Provide([u8; 32]),
    StopProviding([u8; 32]),
    FindProviders {
        root: [u8; 32],
        within: Duration,
        reply: oneshot::Sender<Vec<ProviderInfo>>,
    },
    AddPeers(Vec<ProviderInfo>),
    SetDataAddrs {
        addrs: Vec<SocketAddr>,
        relay_url: Option<String>,
    },
    Follow(AuthorKey),
    FollowSchool(AuthorKey),
    PublishBulletin(AuthorKey, Box<classe_bundle::school::Bulletin>),
    PublishCertified(AuthorKey, Box<classe_bundle::school::SchoolMsg>),
    Announce(SignedAnnouncement),
    PublishRaw(AuthorKey, Vec<u8>),
    Book(oneshot::Sender<Vec<SignedAnnouncement>>),
    ConnectedPeers(oneshot::Sender<usize>),
    Shutdown(oneshot::Sender<()>),
}

/// A running control plane. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    tcp_port: u16,
    counters: Arc<Counters>,
}

impl Control {
    /// Starts the control plane with the node key (the same 32 bytes as the
    /// iroh secret key). Events go to `events`; a full queue drops them
    /// with a log line rather than stall the network.
    pub async fn spawn(
        node_key: &[u8; 32],
        config: ControlConfig,
        events: mpsc::Sender<ControlEvent>,
    ) -> Result<Self, ControlError> {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (peer_id, tcp_port) =
            task::spawn(node_key, config, events, rx, counters.clone()).await?;
        Ok(Self {
            commands: tx,
            peer_id,
            tcp_port,
            counters,
        })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The TCP port discovery listens on.
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Addresses others can bootstrap from: `/ip4/A/tcp/P/p2p/ID`.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.ask(Command::ListenAddrs).await.unwrap_or_default()
    }

    /// Announces in the DHT that this node holds (part of) `root`, and
    /// keeps the record fresh until [`Control::stop_providing`].
    pub async fn provide(&self, root: [u8; 32]) {
        self.commands.send(Command::Provide(root)).await.ok();
    }

    /// Stops refreshing the provider record of `root`.
    pub async fn stop_providing(&self, root: [u8; 32]) {
        self.commands.send(Command::StopProviding(root)).await.ok();
    }

    /// Nodes the DHT says hold `root`, with their data-plane addresses.
    /// Returns when the lookup is over or `within` has passed.
    pub async fn find_providers(&self, root: [u8; 32], within: Duration) -> Vec<ProviderInfo> {
        self.ask(|reply| Command::FindProviders {
            root,
            within,
            reply,
        })
        .await
        .unwrap_or_default()
    }

    /// Replaces the data-plane addresses and relay URL this node
    /// advertises (identify, and so DHT lookups that reach it).
    pub async fn set_data_addrs(&self, addrs: Vec<SocketAddr>, relay_url: Option<String>) {
        self.commands
            .send(Command::SetDataAddrs { addrs, relay_url })
            .await
            .ok();
    }

    /// Adds nodes named in a ticket or an announcement to the routing table
    /// (those with a discovery port) and dials them.
    pub async fn add_peers(&self, peers: Vec<ProviderInfo>) {
        self.commands.send(Command::AddPeers(peers)).await.ok();
    }

    /// Starts accepting `author`'s announcements.
    pub async fn follow(&self, author: AuthorKey) {
        self.commands.send(Command::Follow(author)).await.ok();
    }

    /// Starts receiving `school`'s bulletins and its certified teachers'
    /// announcements.
    pub async fn follow_school(&self, school: AuthorKey) {
        self.commands.send(Command::FollowSchool(school)).await.ok();
    }

    /// Publishes a school bulletin (on the school's seed node): on the
    /// school's topic and in its DHT record, which this node then serves.
    pub async fn publish_bulletin(
        &self,
        school: AuthorKey,
        bulletin: classe_bundle::school::Bulletin,
    ) {
        self.commands
            .send(Command::PublishBulletin(school, Box::new(bulletin)))
            .await
            .ok();
    }

    /// Publishes a certified teacher's announcement on the school's topic,
    /// where the school's seed node hears of teachers it does not know yet.
    pub async fn announce_certified(
        &self,
        credentials: classe_bundle::school::Credentials,
        announcement: &SignedAnnouncement,
    ) {
        let school = credentials.cert.cert.school;
        let msg = classe_bundle::school::SchoolMsg::Announce {
            credentials,
            announcement: announcement.to_bytes(),
        };
        self.commands
            .send(Command::PublishCertified(school, Box::new(msg)))
            .await
            .ok();
    }

    /// Publishes an announcement of ours: on the author's topic (retried
    /// for a minute while nobody listens yet) and in the author's catch-up
    /// record.
    pub async fn announce(&self, announcement: SignedAnnouncement) {
        self.commands
            .send(Command::Announce(announcement))
            .await
            .ok();
    }

    /// Publishes arbitrary bytes on `author`'s topic, unchecked, once
    /// somebody listens (retried for a minute). For adversary tests only:
    /// a forged announcement must be refused by every receiver.
    #[doc(hidden)]
    pub async fn publish_raw(&self, author: AuthorKey, bytes: Vec<u8>) {
        self.commands
            .send(Command::PublishRaw(author, bytes))
            .await
            .ok();
    }

    /// Every announcement currently known (followed authors and our own).
    pub async fn book(&self) -> Vec<SignedAnnouncement> {
        self.ask(Command::Book).await.unwrap_or_default()
    }

    /// Counters and connected peers.
    pub async fn stats(&self) -> Stats {
        let connected_peers = self.ask(Command::ConnectedPeers).await.unwrap_or(0);
        let c = &self.counters;
        Stats {
            connected_peers,
            bad_announcements: c.bad_announcements.load(Ordering::Relaxed),
            stale_announcements: c.stale_announcements.load(Ordering::Relaxed),
            bad_records: c.bad_records.load(Ordering::Relaxed),
            bad_provider_records: c.bad_provider_records.load(Ordering::Relaxed),
            refused_connections: c.refused_connections.load(Ordering::Relaxed),
        }
    }

    /// Stops the task (bounded: at most `limit`).
    pub async fn shutdown(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.ask(Command::Shutdown)).await;
    }
}

/// Parses a bootstrap address: a multiaddr (`/ip4/10.0.0.1/tcp/4100/p2p/…`)
/// or a plain `IP:PORT` (the peer id is then learned on connect).
pub fn parse_bootstrap(text: &str) -> Result<Multiaddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(ids::tcp_multiaddr(addr));
    }
    let addr: Multiaddr = text.parse().map_err(|_| {
        format!("{text:?} is not a bootstrap address: expected /ip4/A/tcp/PORT/p2p/ID (as `classe seed` prints it) or IP:PORT")
    })?;
    let has_tcp = addr
        .iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)));
    if !has_tcp {
        return Err(format!(
            "{text:?} is not a bootstrap address: it has no TCP port"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_addresses_parse() {
        assert!(parse_bootstrap("10.0.0.1:4100").is_ok());
        assert!(parse_bootstrap("/ip4/10.0.0.1/tcp/4100").is_ok());
        assert!(parse_bootstrap(
            "/ip4/10.0.0.1/tcp/4100/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
        )
        .is_ok());
        assert!(parse_bootstrap("/ip4/10.0.0.1/udp/4100").is_err());
        assert!(parse_bootstrap("seed.example").is_err());
    }
}
