//! The libp2p behaviours and their configuration.

use std::time::Duration;

use libp2p::{
    gossipsub, identify, identity::Keypair, kad, mdns, swarm::behaviour::toggle::Toggle,
    swarm::NetworkBehaviour, StreamProtocol,
};

use crate::{ControlConfig, ControlError, IDENTIFY_PROTOCOL, KAD_PROTOCOL};

/// Largest Kademlia message: a catch-up record must fit.
const KAD_MAX_PACKET: usize = 64 * 1024;
/// Largest gossip message: a school bulletin and its envelope.
const GOSSIP_MAX_TRANSMIT: usize = classe_bundle::school::MAX_BULLETIN_BYTES + 1024;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub identify: identify::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

impl Behaviour {
    pub fn new(key: &Keypair, config: &ControlConfig) -> Result<Self, ControlError> {
        let peer_id = key.public().to_peer_id();

        let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kad_config
            .set_max_packet_size(KAD_MAX_PACKET)
            .set_query_timeout(Duration::from_secs(20))
            // Records and provider records are checked by us before they
            // are stored (see task.rs).
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_provider_record_ttl(Some(config.provider_ttl))
            .set_provider_publication_interval(Some(config.provider_refresh))
            .set_record_ttl(Some(Duration::from_secs(24 * 3600)))
            .set_publication_interval(Some(Duration::from_secs(3600)))
            .set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
        let store = kad::store::MemoryStore::with_config(
            peer_id,
            kad::store::MemoryStoreConfig {
                max_records: 1024,
                max_value_bytes: if classe_bundle::announce::MAX_RECORD_BYTES
                    > classe_bundle::school::MAX_BULLETIN_BYTES
                {
                    classe_bundle::announce::MAX_RECORD_BYTES
                } else {
                    classe_bundle::school::MAX_BULLETIN_BYTES
                },
                max_providers_per_key: 32,
                max_provided_keys: 4096,
            },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // Every classe node answers queries: on a LAN or in a school
        // nobody confirms an external address, and automatic mode would
        // leave everyone a client (NOTES-dependencies.md).
        kad.set_mode(Some(kad::Mode::Server));

        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(Duration::from_millis(700))
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(GOSSIP_MAX_TRANSMIT)
            // The same announcement published twice (a restart) is one
            // message.
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(message_id(m.topic.as_str(), &m.data))
            })
            .build()
            .map_err(|e| ControlError::Setup(e.to_string()))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| ControlError::Setup(e.to_string()))?;

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                .with_agent_version(format!("classe/{}", env!("CARGO_PKG_VERSION")))
                .with_push_listen_addr_updates(true),
        );

        let mdns = if config.mdns {
            let mdns_config = mdns::Config {
                query_interval: Duration::from_secs(30),
                ..Default::default()
            };
            Some(
                mdns::tokio::Behaviour::new(mdns_config, peer_id)
                    .map_err(|e| ControlError::Setup(format!("mDNS: {e}")))?,
            )
        } else {
            None
        };
        Ok(Self {
            kad,
            gossipsub,
            identify,
            mdns: Toggle::from(mdns),
        })
    }
}

/// The gossip topic of an author's announcements.
pub(crate) fn topic(author: &classe_bundle::AuthorKey) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("classe/announce/v1/{author}"))
}

/// Gossip topic of a school: its bulletins and its certified teachers'
/// announcements.
pub(crate) fn school_topic(school: &classe_bundle::AuthorKey) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("classe/school/v1/{school}"))
}

/// DHT key of a school's bulletin.
pub(crate) fn school_record_key(school: &classe_bundle::AuthorKey) -> kad::RecordKey {
    let mut k = SCHOOL_PREFIX.to_vec();
    k.extend_from_slice(school.as_bytes());
    kad::RecordKey::new(&k)
}

/// The school a bulletin record key names.
pub(crate) fn record_school(key: &kad::RecordKey) -> Option<classe_bundle::AuthorKey> {
    let rest = key.as_ref().strip_prefix(SCHOOL_PREFIX)?;
    let bytes: [u8; 32] = rest.try_into().ok()?;
    classe_bundle::AuthorKey::from_bytes(bytes).ok()
}

pub(crate) const SCHOOL_PREFIX: &[u8] = b"classe/school/v1/";

/// DHT key of a bundle's provider records.
pub(crate) fn provider_key(root: &[u8; 32]) -> kad::RecordKey {
    let mut k = PROVIDER_PREFIX.to_vec();
    k.extend_from_slice(root);
    kad::RecordKey::new(&k)
}

/// DHT key of an author's catch-up record.
pub(crate) fn record_key(author: &classe_bundle::AuthorKey) -> kad::RecordKey {
    let mut k = RECORD_PREFIX.to_vec();
    k.extend_from_slice(author.as_bytes());
    kad::RecordKey::new(&k)
}

pub(crate) const PROVIDER_PREFIX: &[u8] = b"classe/root/v1/";
pub(crate) const RECORD_PREFIX: &[u8] = b"classe/latest/v1/";

/// The author a catch-up record key names, if it is one.
pub(crate) fn record_author(key: &kad::RecordKey) -> Option<classe_bundle::AuthorKey> {
    let rest = key.as_ref().strip_prefix(RECORD_PREFIX)?;
    let bytes: [u8; 32] = rest.try_into().ok()?;
    classe_bundle::AuthorKey::from_bytes(bytes).ok()
}

/// Whether a provider record key is a bundle root of ours.
pub(crate) fn is_provider_key(key: &kad::RecordKey) -> bool {
    key.as_ref()
        .strip_prefix(PROVIDER_PREFIX)
        .is_some_and(|rest| rest.len() == 32)
}

/// A gossip message's id: FNV-1a (128-bit) over topic and data. It only
/// deduplicates (signatures are checked on every copy), but it must be the
/// same on every node and every build, which std's hasher does not promise.
pub(crate) fn message_id(topic: &str, data: &[u8]) -> Vec<u8> {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    for b in topic.as_bytes().iter().chain([0u8].iter()).chain(data) {
        h ^= u128::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h.to_be_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_tell_topic_and_data_apart() {
        let a = message_id("t", b"data");
        assert_eq!(a, message_id("t", b"data"));
        assert_ne!(a, message_id("t", b"datb"));
        assert_ne!(a, message_id("u", b"data"));
        // Fixed across builds: FNV-1a 128 of "t\0data".
        assert_eq!(
            a,
            data_encoding::HEXLOWER
                .decode(b"d59073b3cc3c64bf6f3d7a54c1a4a791")
                .unwrap()
        );
    }
}
