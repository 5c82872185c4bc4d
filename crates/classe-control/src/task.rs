//! The control task: owns the libp2p swarm and the book of announcements,
//! answers commands, checks everything that arrives.
//!
//! One actor, one `State`; its methods are split by concern:
//!
//! - this file: start (listen, bootstrap), the select loop, commands,
//!   swarm events and the periodic tick;
//! - `dht`: provider lookups and catch-up records in the DHT (kad);
//! - `gossip`: followed authors, announcements that arrive, the book;
//! - `publish`: our own announcements, retried while nobody listens;
//! - `peers`: what peers tell of themselves (identify: data addresses, relay),
//!   the addresses we advertise, peers to dial (bootstrap, tickets, mDNS);
//! - `school`: the schools' topics and DHT records (bulletins, certified
//!   teachers' announcements).

mod dht;
mod gossip;
mod peers;
mod publish;
mod school;

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use classe_bundle::{AuthorKey, Book};
use futures::StreamExt;
use libp2p::{identify, kad, mdns, swarm::SwarmEvent, Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;

use crate::{
    behaviour::{self, Behaviour, BehaviourEvent},
    ids, Command, ControlConfig, ControlError, ControlEvent, Counters,
};
use dht::Lookup;
use peers::PeerInfo;
use publish::Publication;

/// Most connections at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 256;
/// Most lookups or publications in flight.
const MAX_PENDING: usize = 64;
/// How long to wait for the TCP listener to report its addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

struct State {
    swarm: Swarm<Behaviour>,
    /// Data-plane and relay addresses we advertise (external addresses).
    advertised: Vec<Multiaddr>,
    local: PeerId,
    events: mpsc::Sender<ControlEvent>,
    counters: Arc<Counters>,
    book: Book,
    follow: HashSet<AuthorKey>,
    /// Authors we publish for (our own key), whose records we keep fresh.
    own: HashSet<AuthorKey>,
    known_peers: HashMap<PeerId, PeerInfo>,
    lookups: HashMap<kad::QueryId, Lookup>,
    /// Peers whose identify answer a lookup waits for.
    awaiting: HashMap<PeerId, Vec<kad::QueryId>>,
    catch_ups: HashSet<kad::QueryId>,
    publications: Vec<Publication>,
    /// Schools followed, with the newest bulletin of each.
    schools: HashMap<AuthorKey, classe_bundle::school::Bulletin>,
    /// Their topics.
    school_topics: HashMap<libp2p::gossipsub::TopicHash, AuthorKey>,
    /// DHT reads of school records in flight.
    school_queries: HashMap<kad::QueryId, AuthorKey>,
    connections: usize,
    catch_up_every: Duration,
    last_catch_up: Option<Instant>,
    last_republish: Option<Instant>,
}

pub(crate) async fn spawn(
    node_key: &[u8; 32],
    config: ControlConfig,
    events: mpsc::Sender<ControlEvent>,
    commands: mpsc::Receiver<Command>,
    counters: Arc<Counters>,
) -> Result<(PeerId, u16), ControlError> {
    let key = ids::keypair(node_key).map_err(ControlError::Setup)?;
    let local = key.public().to_peer_id();
    let behaviour = Behaviour::new(&key, &config)?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| ControlError::Setup(e.to_string()))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| ControlError::Setup(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();

    swarm
        .listen_on(ids::tcp_multiaddr(config.listen))
        .map_err(|e| ControlError::Listen {
            addr: config.listen,
            reason: e.to_string(),
        })?;
    // Wait for the listener: its port goes into tickets.
    let deadline = Instant::now() + LISTEN_WAIT;
    let tcp_port = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                if let ids::Parsed::Tcp(a) = ids::parse(&address) {
                    swarm.add_external_address(address);
                    break a.port();
                }
            }
            Ok(SwarmEvent::ListenerError { error, .. }) => {
                return Err(ControlError::Listen {
                    addr: config.listen,
                    reason: error.to_string(),
                })
            }
            Ok(SwarmEvent::ListenerClosed { reason, .. }) => {
                return Err(ControlError::Listen {
                    addr: config.listen,
                    reason: format!("{reason:?}"),
                })
            }
            Ok(_) => {}
            Err(_) => {
                return Err(ControlError::Listen {
                    addr: config.listen,
                    reason: "the listener did not start".into(),
                })
            }
        }
    };

    let mut book = Book::default();
    for a in config.known {
        book.offer(a);
    }
    let mut state = State {
        swarm,
        local,
        events,
        counters,
        book,
        follow: HashSet::new(),
        own: HashSet::new(),
        known_peers: HashMap::new(),
        lookups: HashMap::new(),
        awaiting: HashMap::new(),
        catch_ups: HashSet::new(),
        publications: Vec::new(),
        schools: HashMap::new(),
        school_topics: HashMap::new(),
        school_queries: HashMap::new(),
        connections: 0,
        advertised: Vec::new(),
        catch_up_every: config.catch_up_every,
        last_catch_up: None,
        last_republish: None,
    };
    state.set_data_addrs(config.data_addrs, config.relay_url);
    for author in config.follow {
        state.follow(author);
    }
    for school in config.schools {
        state.follow_school(school);
    }
    for addr in config.bootstrap {
        state.dial_bootstrap(addr);
    }
    tracing::info!(peer = %local, tcp_port, "discovery started");
    tokio::spawn(state.run(commands));
    Ok((local, tcp_port))
}

impl State {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => break,
                    Some(Command::Shutdown(done)) => {
                        done.send(()).ok();
                        break;
                    }
                    Some(c) => self.command(c),
                },
                event = self.swarm.select_next_some() => self.swarm_event(event),
                _ = tick.tick() => self.tick(),
            }
        }
        tracing::debug!("discovery stopped");
    }

    fn emit(&self, event: ControlEvent) {
        if self.events.try_send(event).is_err() {
            tracing::warn!("discovery event dropped: the node is not keeping up");
        }
    }

    fn ignore(&self, reason: String, from: Option<PeerId>) {
        tracing::warn!(%reason, from = ?from, "ignored");
        self.emit(ControlEvent::Ignored {
            reason,
            from: from.map(|p| p.to_string()),
        });
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs(reply) => {
                let local = self.local;
                let addrs = self
                    .swarm
                    .listeners()
                    .filter(|a| matches!(ids::parse(a), ids::Parsed::Tcp(_)))
                    .map(|a| a.clone().with(libp2p::multiaddr::Protocol::P2p(local)))
                    .collect();
                reply.send(addrs).ok();
            }
            Command::Provide(root) => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(behaviour::provider_key(&root))
                {
                    tracing::warn!("cannot record a provided bundle: {e}");
                }
            }
            Command::StopProviding(root) => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .stop_providing(&behaviour::provider_key(&root));
            }
            Command::FindProviders {
                root,
                within,
                reply,
            } => self.find_providers(root, within, reply),
            Command::SetDataAddrs { addrs, relay_url } => self.set_data_addrs(addrs, relay_url),
            Command::AddPeers(peers) => {
                for p in peers.iter().take(64) {
                    self.add_peer(p);
                }
            }
            Command::Follow(author) => self.follow(author),
            Command::FollowSchool(school) => self.follow_school(school),
            Command::PublishBulletin(school, bulletin) => self.publish_bulletin(school, *bulletin),
            Command::PublishCertified(school, msg) => self.publish_certified(school, *msg),
            Command::Announce(announcement) => self.announce(announcement),
            Command::PublishRaw(author, bytes) => self.publish(author, bytes),
            Command::Book(reply) => {
                reply.send(self.book.all().cloned().collect()).ok();
            }
            Command::ConnectedPeers(reply) => {
                reply.send(self.swarm.connected_peers().count()).ok();
            }
            Command::Shutdown(_) => {}
        }
    }

    fn tick(&mut self) {
        if !self.publications.is_empty() {
            self.publish_pending();
        }
        self.expire_lookups();
        let due = self
            .last_catch_up
            .is_none_or(|t| t.elapsed() >= self.catch_up_every);
        if due && self.connections > 0 {
            self.catch_up_all();
        }
    }

    fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.kad_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.gossip_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.identified(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                self.mdns_discovered(list)
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            } => {
                self.connections += 1;
                if self.connections > MAX_CONNECTIONS {
                    self.counters
                        .refused_connections
                        .fetch_add(1, Ordering::Relaxed);
                    self.swarm.close_connection(connection_id);
                    return;
                }
                tracing::debug!(peer = %peer_id, "connected");
                if self.connections == 1 {
                    // First peer: read the followed authors' records now
                    // rather than at the next periodic catch-up.
                    self.catch_up_all();
                }
            }
            SwarmEvent::ConnectionClosed { .. } => {
                self.connections = self.connections.saturating_sub(1);
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                // Provider records carry the provider's external
                // addresses: ours must include where we listen, or a
                // node that finds us in the DHT cannot dial us.
                if matches!(ids::parse(&address), ids::Parsed::Tcp(_)) {
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(%peer, "dial failed: {error}");
                self.dial_failed(peer);
            }
            _ => {}
        }
    }
}
