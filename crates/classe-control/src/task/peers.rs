//! Peers: what identify tells of each (data addresses, relay, discovery
//! port), which turns a DHT provider into a `ProviderInfo`; the
//! addresses we advertise; peers to dial (bootstrap nodes, ticket
//! providers, mDNS finds).

use std::net::SocketAddr;

use classe_bundle::ProviderInfo;
use libp2p::{identify, swarm::dial_opts::DialOpts, Multiaddr, PeerId};

use super::State;
use crate::ids;

/// Most peers whose identify answer is remembered.
const MAX_KNOWN_PEERS: usize = 2048;

/// What identify told us of a peer.
#[derive(Clone, Default)]
pub(super) struct PeerInfo {
    pub(super) data_addrs: Vec<SocketAddr>,
    pub(super) relay_url: Option<String>,
    pub(super) tcp_port: Option<u16>,
}

impl State {
    pub(super) fn dial_bootstrap(&mut self, addr: Multiaddr) {
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
    pub(super) fn set_data_addrs(&mut self, addrs: Vec<SocketAddr>, relay_url: Option<String>) {
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

    pub(super) fn add_peer(&mut self, info: &ProviderInfo) {
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

    pub(super) fn provider_info(&self, peer: &PeerId) -> Option<ProviderInfo> {
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

    /// Peers mDNS found on the LAN: into the routing table, and dialled.
    pub(super) fn mdns_discovered(&mut self, list: Vec<(PeerId, Multiaddr)>) {
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

    pub(super) fn identified(&mut self, peer: PeerId, info: identify::Info) {
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
}
