//! Byte accounting: who sent how much to whom, per bundle.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use iroh_blobs::Hash;
use serde::Serialize;

/// Bytes exchanged with one peer.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PeerTraffic {
    /// Payload bytes this node sent to the peer.
    pub sent: u64,
    /// Payload bytes this node received from the peer.
    pub received: u64,
}

/// A copy of the counters at one moment, ready to print as JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrafficSnapshot {
    /// Total payload bytes sent.
    pub sent: u64,
    /// Total payload bytes received.
    pub received: u64,
    /// Per peer node id (hex).
    pub peers: BTreeMap<String, PeerTraffic>,
    /// Per bundle root (hex).
    pub bundles: BTreeMap<String, PeerTraffic>,
    /// Transport bytes per peer node id (hex), direct and through the
    /// relay (QUIC datagrams, overhead included).
    pub paths: BTreeMap<String, crate::PathBytes>,
}

/// Live counters, shared by the provider events task and fetches.
#[derive(Debug, Default)]
pub struct Traffic {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    snapshot: TrafficSnapshot,
    /// File or manifest hash → bundle root.
    bundle_of: HashMap<Hash, Hash>,
}

impl Traffic {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update of plain
        // counters; the counters are still usable.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Makes bytes of `files` (and the root itself) count for `root`.
    pub fn register_bundle(&self, root: Hash, files: impl IntoIterator<Item = Hash>) {
        self.with(|inner| {
            inner.bundle_of.insert(root, root);
            for f in files {
                inner.bundle_of.entry(f).or_insert(root);
            }
        });
    }

    /// Records bytes sent to `peer`, counted against the bundle of the
    /// first of `hashes` that belongs to one (a request for a bundle's
    /// root also carries its manifest, which is not registered itself).
    pub fn add_sent(&self, peer: &str, hashes: &[Hash], bytes: u64) {
        self.with(|inner| {
            inner.snapshot.sent += bytes;
            inner
                .snapshot
                .peers
                .entry(peer.to_string())
                .or_default()
                .sent += bytes;
            if let Some(root) = hashes.iter().find_map(|h| inner.bundle_of.get(h).copied()) {
                inner
                    .snapshot
                    .bundles
                    .entry(root.to_hex())
                    .or_default()
                    .sent += bytes;
            }
        });
    }

    /// Records bytes received from `peer` for bundle `root`.
    pub fn add_received(&self, peer: &str, root: Hash, bytes: u64) {
        self.with(|inner| {
            inner.snapshot.received += bytes;
            inner
                .snapshot
                .peers
                .entry(peer.to_string())
                .or_default()
                .received += bytes;
            inner
                .snapshot
                .bundles
                .entry(root.to_hex())
                .or_default()
                .received += bytes;
        });
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> TrafficSnapshot {
        self.with(|inner| inner.snapshot.clone())
    }
}
