//! The control task: owns the libp2p swarm and the book of announcements,
//! answers commands, checks everything that arrives.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use classe_bundle::{
    announce::{decode_record, encode_record},
    AuthorKey, Book, Offer, ProviderInfo, SignedAnnouncement,
};
use futures::StreamExt;
use libp2p::kad::store::RecordStore;
use libp2p::{
    gossipsub, identify, kad, mdns,
    swarm::{dial_opts::DialOpts, SwarmEvent},
    Multiaddr, PeerId, Swarm,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    behaviour::{self, Behaviour, BehaviourEvent},
    ids, Command, ControlConfig, ControlError, ControlEvent, Counters,
};

/// Most connections at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 256;
/// Most peers whose identify answer is remembered.
const MAX_KNOWN_PEERS: usize = 2048;
/// Most lookups or publications in flight.
const MAX_PENDING: usize = 64;
/// Most providers one lookup dials or returns.
const MAX_PROVIDERS_PER_LOOKUP: usize = 20;
/// How often catch-up records we hold announcements for are written again.
const REPUBLISH_EVERY: Duration = Duration::from_secs(10 * 60);
/// How long an announcement is retried while nobody subscribes.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);
/// How long to wait for the TCP listener to report its addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// What identify told us of a peer.
#[derive(Clone, Default)]
struct PeerInfo {
    data_addrs: Vec<SocketAddr>,
    relay_url: Option<String>,
    tcp_port: Option<u16>,
}

struct Lookup {
    reply: oneshot::Sender<Vec<ProviderInfo>>,
    deadline: Instant,
    query_done: bool,
    waiting: HashSet<PeerId>,
    found: Vec<ProviderInfo>,
}

struct Publication {
    author: AuthorKey,
    bytes: Vec<u8>,
    until: Instant,
}

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

    fn follow(&mut self, author: AuthorKey) {
        if self.follow.insert(author) {
            if let Err(e) = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&behaviour::topic(&author))
            {
                tracing::warn!("cannot subscribe to {author}: {e}");
            }
            self.catch_up_one(author);
        }
    }

    fn dial_bootstrap(&mut self, addr: Multiaddr) {
        let (base, peer) = ids::split_peer(&addr);
        let result = match peer {
            Some(peer) if peer == self.local => return,
            Some(peer) => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, base.clone());
                self.swarm
                    .dial(DialOpts::peer_id(peer).addresses(vec![base]).build())
            }
            None => self.swarm.dial(base),
        };
        if let Err(e) = result {
            tracing::warn!(%addr, "cannot dial bootstrap node: {e}");
        }
    }

    /// Replaces the data-plane addresses (and relay) we advertise: the
    /// endpoint learns its public address and port mapping after start.
    /// Identify pushes the change to connected peers.
    fn set_data_addrs(&mut self, addrs: Vec<SocketAddr>, relay_url: Option<String>) {
        let mut new: Vec<Multiaddr> = addrs
            .into_iter()
            .take(classe_bundle::ticket::MAX_ADDRS)
            .map(ids::data_multiaddr)
            .collect();
        new.extend(relay_url.as_deref().and_then(ids::relay_multiaddr));
        for old in std::mem::take(&mut self.advertised) {
            if !new.contains(&old) {
                self.swarm.remove_external_address(&old);
            }
        }
        for a in &new {
            self.swarm.add_external_address(a.clone());
        }
        self.advertised = new;
    }

    fn add_peer(&mut self, info: &ProviderInfo) {
        let Some(port) = info.control_port else {
            return;
        };
        let Some(peer) = ids::peer_id_of(&info.node_id) else {
            return;
        };
        if peer == self.local {
            return;
        }
        let mut ips: Vec<_> = info.addrs.iter().map(|a| a.ip()).collect();
        ips.dedup();
        let addrs: Vec<Multiaddr> = ips
            .into_iter()
            .take(classe_bundle::ticket::MAX_ADDRS)
            .map(|ip| ids::tcp_multiaddr(SocketAddr::new(ip, port)))
            .collect();
        for a in &addrs {
            self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
        }
        if !self.swarm.is_connected(&peer) {
            let _ = self
                .swarm
                .dial(DialOpts::peer_id(peer).addresses(addrs).build());
        }
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
            } => {
                if self.lookups.len() >= MAX_PENDING {
                    reply.send(Vec::new()).ok();
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(behaviour::provider_key(&root));
                self.lookups.insert(
                    id,
                    Lookup {
                        reply,
                        deadline: Instant::now() + within,
                        query_done: false,
                        waiting: HashSet::new(),
                        found: Vec::new(),
                    },
                );
            }
            Command::SetDataAddrs { addrs, relay_url } => self.set_data_addrs(addrs, relay_url),
            Command::AddPeers(peers) => {
                for p in peers.iter().take(64) {
                    self.add_peer(p);
                }
            }
            Command::Follow(author) => self.follow(author),
            Command::Announce(announcement) => self.announce(announcement),
            Command::PublishRaw(author, bytes) => {
                if self.publications.len() < MAX_PENDING {
                    self.publications.push(Publication {
                        author,
                        bytes,
                        until: Instant::now() + PUBLISH_PATIENCE,
                    });
                }
                self.publish_pending();
            }
            Command::Book(reply) => {
                reply.send(self.book.all().cloned().collect()).ok();
            }
            Command::ConnectedPeers(reply) => {
                reply.send(self.swarm.connected_peers().count()).ok();
            }
            Command::Shutdown(_) => {}
        }
    }

    fn announce(&mut self, announcement: SignedAnnouncement) {
        let author = announcement.announcement().author;
        self.own.insert(author);
        self.book.offer(announcement.clone());
        for p in announcement.announcement().providers.clone() {
            self.add_peer(&p);
        }
        self.put_record(author);
        if self.publications.len() < MAX_PENDING {
            self.publications.push(Publication {
                author,
                bytes: announcement.to_bytes(),
                until: Instant::now() + PUBLISH_PATIENCE,
            });
        }
        self.publish_pending();
    }

    /// Writes `author`'s catch-up record from the book: in the local store
    /// (so this node answers for it) and to the closest peers.
    fn put_record(&mut self, author: AuthorKey) {
        let entries = self.book.of_author(&author);
        if entries.is_empty() {
            return;
        }
        let record = kad::Record::new(behaviour::record_key(&author), encode_record(&entries));
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, kad::Quorum::One)
        {
            tracing::warn!("cannot store the catch-up record: {e}");
        }
    }

    fn publish_pending(&mut self) {
        let now = Instant::now();
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.publications) {
            let topic = behaviour::topic(&p.author);
            match self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(topic, p.bytes.clone())
            {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => {
                    tracing::info!(author = %p.author, "announcement published");
                }
                Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
                | Err(gossipsub::PublishError::AllQueuesFull(_))
                    if now < p.until =>
                {
                    keep.push(p)
                }
                Err(e) => tracing::warn!("announcement not published: {e}"),
            }
        }
        self.publications = keep;
    }

    fn catch_up_one(&mut self, author: AuthorKey) {
        if self.catch_ups.len() >= MAX_PENDING {
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(behaviour::record_key(&author));
        self.catch_ups.insert(id);
    }

    fn catch_up_all(&mut self) {
        self.last_catch_up = Some(Instant::now());
        let authors: Vec<AuthorKey> = self.follow.iter().copied().collect();
        for a in authors {
            self.catch_up_one(a);
        }
        // Write the catch-up records we can vouch for (our own, and the
        // followed authors' we hold announcements of) again now and then:
        // they reach peers that joined since, and a record lives 24 h from
        // its last write, so a seed keeps a teacher's alive after the
        // teacher is gone.
        let due = self
            .last_republish
            .is_none_or(|t| t.elapsed() >= REPUBLISH_EVERY);
        if due {
            self.last_republish = Some(Instant::now());
            let mut authors: Vec<AuthorKey> = self.own.iter().copied().collect();
            authors.extend(self.follow.iter().copied());
            authors.sort();
            authors.dedup();
            for a in authors {
                self.put_record(a);
            }
        }
    }

    fn tick(&mut self) {
        if !self.publications.is_empty() {
            self.publish_pending();
        }
        let now = Instant::now();
        let expired: Vec<kad::QueryId> = self
            .lookups
            .iter()
            .filter(|(_, l)| now >= l.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.finish_lookup(id);
        }
        let due = self
            .last_catch_up
            .is_none_or(|t| t.elapsed() >= self.catch_up_every);
        if due && self.connections > 0 {
            self.catch_up_all();
        }
    }

    fn finish_lookup(&mut self, id: kad::QueryId) {
        if let Some(mut lookup) = self.lookups.remove(&id) {
            // Providers that never answered our dial in time are usually at
            // home behind a router (TCP from outside dropped): the data plane
            // can still reach them by node id through the school relay.
            lookup.found.extend(lookup.waiting.iter().filter_map(by_id));
            tracing::debug!(found = lookup.found.len(), "provider lookup over");
            lookup.reply.send(lookup.found).ok();
            if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                q.finish();
            }
            for peer in lookup.waiting {
                if let Some(ids) = self.awaiting.get_mut(&peer) {
                    ids.retain(|q| *q != id);
                    if ids.is_empty() {
                        self.awaiting.remove(&peer);
                    }
                }
            }
        }
    }

    fn maybe_finish(&mut self, id: kad::QueryId) {
        let done = self
            .lookups
            .get(&id)
            .is_some_and(|l| l.query_done && l.waiting.is_empty());
        if done {
            self.finish_lookup(id);
        }
    }

    fn provider_info(&self, peer: &PeerId) -> Option<ProviderInfo> {
        let info = self.known_peers.get(peer)?;
        if info.data_addrs.is_empty() && info.relay_url.is_none() {
            return None;
        }
        Some(ProviderInfo {
            node_id: ids::node_id_of(peer)?,
            addrs: info.data_addrs.clone(),
            relay_url: info.relay_url.clone(),
            control_port: info.tcp_port,
        })
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
                for (peer, addr) in list.into_iter().take(64) {
                    if peer == self.local {
                        continue;
                    }
                    tracing::debug!(%peer, %addr, "found on the LAN");
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self
                            .swarm
                            .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build());
                    }
                }
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
                if let Some(ids) = self.awaiting.remove(&peer) {
                    // A provider we cannot dial over TCP is usually at home
                    // behind its router. It still holds the bundle, and the
                    // data plane can reach it by node id alone through the
                    // school relay both use: hand it out without addresses.
                    let by_id = by_id(&peer);
                    for id in ids {
                        if let Some(l) = self.lookups.get_mut(&id) {
                            l.waiting.remove(&peer);
                            l.found.extend(by_id.clone());
                        }
                        self.maybe_finish(id);
                    }
                }
            }
            _ => {}
        }
    }

    fn identified(&mut self, peer: PeerId, info: identify::Info) {
        if info.protocol_version != crate::IDENTIFY_PROTOCOL {
            return;
        }
        let mut known = PeerInfo::default();
        for addr in info.listen_addrs.iter().take(32) {
            match ids::parse(addr) {
                ids::Parsed::Tcp(a) => {
                    known.tcp_port.get_or_insert(a.port());
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                }
                ids::Parsed::Data(a) => {
                    if known.data_addrs.len() < classe_bundle::ticket::MAX_ADDRS {
                        known.data_addrs.push(a);
                    }
                }
                ids::Parsed::Relay(url) => {
                    if url.len() <= classe_bundle::ticket::MAX_RELAY_URL {
                        known.relay_url.get_or_insert(url);
                    }
                }
                ids::Parsed::Other => {}
            }
        }
        known
            .data_addrs
            .sort_by_key(|a| (a.ip().is_loopback(), a.is_ipv6(), *a));
        if self.known_peers.len() >= MAX_KNOWN_PEERS && !self.known_peers.contains_key(&peer) {
            if let Some(evict) = self.known_peers.keys().next().copied() {
                self.known_peers.remove(&evict);
            }
        }
        self.known_peers.insert(peer, known);
        if let Some(ids) = self.awaiting.remove(&peer) {
            let info = self.provider_info(&peer);
            for id in ids {
                if let Some(l) = self.lookups.get_mut(&id) {
                    l.waiting.remove(&peer);
                    if let Some(info) = &info {
                        l.found.push(info.clone());
                    }
                }
                self.maybe_finish(id);
            }
        }
    }

    fn kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) => {
                    for peer in providers {
                        self.provider_found(id, peer);
                    }
                    if step.last {
                        self.query_done(id);
                    }
                }
                kad::QueryResult::GetProviders(_) => self.query_done(id),
                kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                    self.record_found(found.record, found.peer);
                    if step.last {
                        self.catch_ups.remove(&id);
                    }
                }
                kad::QueryResult::GetRecord(_) => {
                    self.catch_ups.remove(&id);
                }
                kad::QueryResult::PutRecord(Err(e)) => {
                    tracing::debug!("catch-up record not replicated yet: {e}");
                }
                _ => {}
            },
            kad::Event::InboundRequest { request } => match request {
                kad::InboundRequest::PutRecord {
                    source,
                    record: Some(record),
                    ..
                } => self.inbound_record(record, source),
                kad::InboundRequest::AddProvider {
                    record: Some(record),
                } => {
                    let ok = behaviour::is_provider_key(&record.key)
                        && record.addresses.len() <= 2 * classe_bundle::ticket::MAX_ADDRS;
                    if ok {
                        if let Err(e) = self
                            .swarm
                            .behaviour_mut()
                            .kad
                            .store_mut()
                            .add_provider(record)
                        {
                            tracing::debug!("provider record not stored: {e}");
                        }
                    } else {
                        self.counters
                            .bad_provider_records
                            .fetch_add(1, Ordering::Relaxed);
                        self.ignore(
                            "provider record outside classe's key space or too large".into(),
                            Some(record.provider),
                        );
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn provider_found(&mut self, id: kad::QueryId, peer: PeerId) {
        if peer == self.local {
            return;
        }
        tracing::debug!(%peer, "provider found");
        let info = self.provider_info(&peer);
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        if let Some(info) = info {
            if !lookup.found.iter().any(|f| f.node_id == info.node_id) {
                lookup.found.push(info);
            }
            return;
        }
        // A DHT node may list many providers: dial a bounded number.
        if lookup.waiting.len() + lookup.found.len() >= MAX_PROVIDERS_PER_LOOKUP {
            return;
        }
        if lookup.waiting.insert(peer) {
            self.awaiting.entry(peer).or_default().push(id);
            if !self.swarm.is_connected(&peer) {
                // The query still holds the addresses the DHT gave for it;
                // kad hands them to the dialer.
                let _ = self.swarm.dial(DialOpts::peer_id(peer).build());
            }
        }
    }

    fn query_done(&mut self, id: kad::QueryId) {
        if let Some(l) = self.lookups.get_mut(&id) {
            l.query_done = true;
        }
        self.maybe_finish(id);
    }

    /// A catch-up record from a lookup: offer each entry to the book.
    fn record_found(&mut self, record: kad::Record, from: Option<PeerId>) {
        let Some(author) = behaviour::record_author(&record.key) else {
            return;
        };
        match decode_record(&author, &record.value) {
            Ok(entries) => {
                for a in entries {
                    self.offer(a, "dht", from);
                }
            }
            Err(e) => {
                self.counters.bad_records.fetch_add(1, Ordering::Relaxed);
                self.ignore(format!("catch-up record refused: {e}"), from);
            }
        }
    }

    /// Someone asks us to store a record: only valid catch-up records, and
    /// merged with what we hold so one writer cannot erase another's
    /// lessons or roll a lesson back.
    fn inbound_record(&mut self, record: kad::Record, source: PeerId) {
        let Some(author) = behaviour::record_author(&record.key) else {
            self.counters.bad_records.fetch_add(1, Ordering::Relaxed);
            self.ignore("record outside classe's key space".into(), Some(source));
            return;
        };
        let entries = match decode_record(&author, &record.value) {
            Ok(e) => e,
            Err(e) => {
                self.counters.bad_records.fetch_add(1, Ordering::Relaxed);
                self.ignore(format!("catch-up record refused: {e}"), Some(source));
                return;
            }
        };
        let mut merged = Book::default();
        if let Some(held) = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .get(&record.key)
            .map(|r| r.into_owned())
        {
            if let Ok(old) = decode_record(&author, &held.value) {
                for a in old {
                    merged.offer(a);
                }
            }
        }
        for a in &entries {
            merged.offer(a.clone());
        }
        let value = encode_record(&merged.of_author(&author));
        let mut stored = kad::Record::new(record.key.clone(), value);
        stored.expires = record.expires;
        stored.publisher = record.publisher;
        if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(stored) {
            tracing::debug!("record not stored: {e}");
        }
        for a in entries {
            self.offer(a, "dht", Some(source));
        }
    }

    /// A verified announcement from the network: kept and reported if it
    /// is by a followed author and newer than what we know.
    fn offer(&mut self, a: SignedAnnouncement, via: &'static str, from: Option<PeerId>) -> bool {
        let author = a.announcement().author;
        if !self.follow.contains(&author) {
            return false;
        }
        match self.book.offer(a.clone()) {
            Offer::Newer => {
                tracing::info!(
                    %author,
                    version = a.announcement().version,
                    via,
                    "new announcement"
                );
                for p in &a.announcement().providers {
                    self.add_peer(p);
                }
                self.emit(ControlEvent::Announced {
                    announcement: a,
                    via,
                });
                true
            }
            Offer::Known => false,
            Offer::Stale => {
                self.counters
                    .stale_announcements
                    .fetch_add(1, Ordering::Relaxed);
                self.ignore(
                    format!(
                        "announcement of version {} is older than the one known",
                        a.announcement().version
                    ),
                    from,
                );
                false
            }
        }
    }

    fn gossip_event(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        else {
            return;
        };
        let from = message.source.unwrap_or(propagation_source);
        let verdict = match SignedAnnouncement::from_bytes(&message.data) {
            Err(e) => {
                self.counters
                    .bad_announcements
                    .fetch_add(1, Ordering::Relaxed);
                self.ignore(format!("announcement refused: {e}"), Some(from));
                gossipsub::MessageAcceptance::Reject
            }
            Ok(a) if behaviour::topic(&a.announcement().author).hash() != message.topic => {
                self.counters
                    .bad_announcements
                    .fetch_add(1, Ordering::Relaxed);
                self.ignore("announcement on another author's topic".into(), Some(from));
                gossipsub::MessageAcceptance::Reject
            }
            Ok(a) if !self.follow.contains(&a.announcement().author) => {
                self.counters
                    .bad_announcements
                    .fetch_add(1, Ordering::Relaxed);
                self.ignore("announcement by an author not followed".into(), Some(from));
                gossipsub::MessageAcceptance::Ignore
            }
            Ok(a) => {
                if self.offer(a, "gossip", Some(from)) {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    // Known or stale: do not pass it on.
                    gossipsub::MessageAcceptance::Ignore
                }
            }
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&message_id, &propagation_source, verdict);
    }
}

/// A provider known by its id alone, to be dialled through a relay.
fn by_id(peer: &PeerId) -> Option<ProviderInfo> {
    ids::node_id_of(peer).map(|node_id| ProviderInfo {
        node_id,
        addrs: Vec::new(),
        relay_url: None,
        control_port: None,
    })
}
