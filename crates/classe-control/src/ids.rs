//! One node key, two stacks: the iroh node id and the libp2p peer id are
//! the same ed25519 public key, so either converts to the other without a
//! lookup. Addresses: TCP for discovery, `udp/P/quic-v1` for the data
//! plane.

use std::net::{IpAddr, SocketAddr};

use libp2p::{identity, multiaddr::Protocol, Multiaddr, PeerId};

/// The libp2p keypair for a node key. libp2p zeroizes the buffer it is
/// given, so it gets a copy.
pub(crate) fn keypair(node_key: &[u8; 32]) -> Result<identity::Keypair, String> {
    let mut copy = *node_key;
    identity::Keypair::ed25519_from_bytes(&mut copy).map_err(|e| e.to_string())
}

/// The peer id of a node id (an ed25519 public key). None if the bytes are
/// not a valid key.
pub fn peer_id_of(node_id: &[u8; 32]) -> Option<PeerId> {
    let key = identity::ed25519::PublicKey::try_from_bytes(node_id).ok()?;
    Some(identity::PublicKey::from(key).to_peer_id())
}

/// The node id of a peer id, when the peer id inlines an ed25519 key (all
/// classe peer ids do).
pub fn node_id_of(peer: &PeerId) -> Option<[u8; 32]> {
    let multihash = peer.as_ref();
    // Identity multihash (code 0): the digest is the protobuf-encoded key.
    if multihash.code() != 0 {
        return None;
    }
    let key = identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

fn ip_multiaddr(ip: IpAddr) -> Multiaddr {
    match ip {
        IpAddr::V4(v4) => Multiaddr::empty().with(Protocol::Ip4(v4)),
        IpAddr::V6(v6) => Multiaddr::empty().with(Protocol::Ip6(v6)),
    }
}

/// `/ipX/A/tcp/P`.
pub(crate) fn tcp_multiaddr(addr: SocketAddr) -> Multiaddr {
    ip_multiaddr(addr.ip()).with(Protocol::Tcp(addr.port()))
}

/// `/ipX/A/udp/P/quic-v1`: how a data-plane address is advertised.
pub(crate) fn data_multiaddr(addr: SocketAddr) -> Multiaddr {
    ip_multiaddr(addr.ip())
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}

/// `/dns/HOST/tcp/PORT/http` (or `https`): how a node advertises the relay
/// it is reachable through. `/dns` keeps the libp2p TCP transport (which
/// has no DNS) from ever dialling it as a discovery address. None for a
/// URL that is not `http(s)://HOST[:PORT]` with no path.
pub fn relay_multiaddr(url: &str) -> Option<Multiaddr> {
    let (scheme, rest) = url.split_once("://")?;
    let https = match scheme {
        "http" => false,
        "https" => true,
        _ => return None,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let default_port = if https { 443 } else { 80 };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, p.parse().ok()?),
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    Some(
        Multiaddr::empty()
            .with(Protocol::Dns(host.to_string().into()))
            .with(Protocol::Tcp(port))
            .with(if https {
                Protocol::Https
            } else {
                Protocol::Http
            }),
    )
}

/// What an advertised address is.
pub(crate) enum Parsed {
    /// A discovery (TCP) address.
    Tcp(SocketAddr),
    /// A data-plane (iroh) address.
    Data(SocketAddr),
    /// The relay URL the node is reachable through.
    Relay(String),
    /// Something else.
    Other,
}

pub(crate) fn parse(addr: &Multiaddr) -> Parsed {
    let mut iter = addr.iter();
    let ip = match iter.next() {
        Some(Protocol::Ip4(ip)) => IpAddr::V4(ip),
        Some(Protocol::Ip6(ip)) => IpAddr::V6(ip),
        Some(Protocol::Dns(host)) => {
            let scheme = match (iter.next(), iter.next(), iter.next()) {
                (Some(Protocol::Tcp(port)), Some(Protocol::Http), None) => ("http", port),
                (Some(Protocol::Tcp(port)), Some(Protocol::Https), None) => ("https", port),
                _ => return Parsed::Other,
            };
            let host = if host.parse::<std::net::Ipv6Addr>().is_ok() {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            return Parsed::Relay(format!("{}://{host}:{}", scheme.0, scheme.1));
        }
        _ => return Parsed::Other,
    };
    match (iter.next(), iter.next()) {
        (Some(Protocol::Tcp(port)), _) => Parsed::Tcp(SocketAddr::new(ip, port)),
        (Some(Protocol::Udp(port)), Some(Protocol::QuicV1)) => {
            Parsed::Data(SocketAddr::new(ip, port))
        }
        _ => Parsed::Other,
    }
}

/// Splits `/…/p2p/ID` into the address and the peer id.
pub(crate) fn split_peer(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut base = Multiaddr::empty();
    let mut peer = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => peer = Some(id),
            other => base.push(other),
        }
    }
    (base, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_round_trip_through_identify_addresses() {
        for url in [
            "http://198.18.0.1:3340",
            "https://relay.college-jean-moulin.fr:443",
            "http://[2001:db8::1]:3340",
        ] {
            let m = relay_multiaddr(url).unwrap();
            match parse(&m) {
                Parsed::Relay(back) => assert_eq!(back, url),
                _ => panic!("{m} did not parse as a relay"),
            }
        }
        let m = relay_multiaddr("https://relay.example/").unwrap();
        assert!(matches!(parse(&m), Parsed::Relay(u) if u == "https://relay.example:443"));
        for bad in [
            "ftp://x:1",
            "http://x/path",
            "http://",
            "http://u@x:1",
            "nonsense",
        ] {
            assert!(relay_multiaddr(bad).is_none(), "{bad} accepted");
        }
    }

    #[test]
    fn node_id_and_peer_id_are_one_key() {
        let secret = [7u8; 32];
        let keypair = keypair(&secret).unwrap();
        let node_id = *iroh_public(&secret);
        let peer = peer_id_of(&node_id).unwrap();
        assert_eq!(peer, keypair.public().to_peer_id());
        assert_eq!(node_id_of(&peer), Some(node_id));
    }

    // The iroh node id of a secret is its ed25519 public key, which
    // ed25519-dalek computes the same way.
    fn iroh_public(secret: &[u8; 32]) -> Box<[u8; 32]> {
        let signing = ed25519_dalek::SigningKey::from_bytes(secret);
        Box::new(signing.verifying_key().to_bytes())
    }

    #[test]
    fn addresses_round_trip() {
        let a: SocketAddr = "10.0.0.7:4100".parse().unwrap();
        assert!(matches!(parse(&tcp_multiaddr(a)), Parsed::Tcp(x) if x == a));
        assert!(matches!(parse(&data_multiaddr(a)), Parsed::Data(x) if x == a));
        let b: SocketAddr = "[fd00::7]:4100".parse().unwrap();
        assert!(matches!(parse(&data_multiaddr(b)), Parsed::Data(x) if x == b));
    }
}
