//! A running classe node: one iroh endpoint serving the local store with
//! iroh-blobs, and fetching bundles from other nodes.
//!
//! ```text
//!            Node (handle)
//!             |-- iroh Endpoint + Router ── BlobsProtocol(store) ── provider events
//!             |                                                     |-> events task:
//!             |                                                         connection cap,
//!             |                                                         upload pacing,
//!             |                                                         bytes sent per peer
//!             |-- fetch(): connect → manifest → verify + trust → files → verify
//!             '-- Traffic: bytes sent/received per peer and per bundle
//! ```
//!
//! Nothing here reaches the internet: the endpoint has no relays unless a
//! school relay URL is configured, and no address lookup service. Peers are
//! dialled at the direct addresses carried in tickets and announcements, or
//! found through the control plane (`classe-control`: a private DHT, mDNS,
//! gossip), which shares the node key: one identity for both stacks.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod download;
mod fetch;
mod provider;
mod swarm;
mod traffic;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use classe_bundle::{AuthorKey, ProviderInfo, Ticket};
pub use classe_control::{Control, ControlConfig, ControlEvent};
use classe_store::Store;
use iroh::{endpoint::presets, protocol::Router, Endpoint, RelayMode, SecretKey};
use iroh_blobs::{BlobsProtocol, Hash};
use tokio_util::sync::CancellationToken;

pub use fetch::{FetchError, FetchEvent, FetchReport, FetchRequest, TrustDecision};
pub use traffic::{PeerTraffic, Traffic, TrafficSnapshot};

/// The longest each step of [`Node::shutdown`] may take.
const SHUTDOWN_STEP: Duration = Duration::from_secs(3);

/// How a node runs. The CLI builds this from flags, environment and the
/// config file; tests build it directly.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where to listen for QUIC. Default: all IPv4 interfaces, any port.
    pub bind_addr: SocketAddr,
    /// A relay the school runs itself. None: direct connections only.
    pub relay_url: Option<String>,
    /// Upload cap in bytes per second, over all peers. None: no cap.
    pub max_upload: Option<u64>,
    /// Download cap in bytes per second. None: no cap.
    pub max_download: Option<u64>,
    /// Most peers served at once; more are refused until one leaves.
    pub max_connections: usize,
    /// How long to wait for a provider to answer a dial.
    pub connect_timeout: Duration,
    /// How long a transfer may go without receiving a byte before the
    /// provider is given up.
    pub idle_timeout: Duration,
    /// The control plane (DHT, gossip, mDNS). None: tickets only. Its
    /// `data_addrs` are filled in from the endpoint.
    pub control: Option<ControlConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            bind_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            relay_url: None,
            max_upload: None,
            max_download: None,
            max_connections: 64,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            control: None,
        }
    }
}

/// Starting a node failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The relay URL does not parse.
    #[error("invalid relay URL {0:?}")]
    RelayUrl(String),
    /// The control plane could not start.
    #[error(transparent)]
    Control(#[from] classe_control::ControlError),
    /// Binding the UDP socket failed (address in use, not local, ...).
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A running node. Dropping it without [`Node::shutdown`] aborts its tasks.
#[derive(Debug)]
pub struct Node {
    endpoint: Endpoint,
    router: Router,
    store: Store,
    traffic: Arc<Traffic>,
    registry: Arc<swarm::Registry>,
    config: NodeConfig,
    cancel: CancellationToken,
    events_task: tokio::task::JoinHandle<()>,
    control: Option<Control>,
    control_events: Mutex<Option<tokio::sync::mpsc::Receiver<ControlEvent>>>,
}

impl Node {
    /// Binds the endpoint and starts serving `store`.
    pub async fn spawn(
        store: Store,
        node_key: &[u8; 32],
        config: NodeConfig,
    ) -> Result<Self, SpawnError> {
        let relay_mode = match &config.relay_url {
            None => RelayMode::Disabled,
            Some(url) => {
                let url: iroh::RelayUrl =
                    url.parse().map_err(|_| SpawnError::RelayUrl(url.clone()))?;
                RelayMode::custom([url])
            }
        };
        let bind_err = |reason: String| SpawnError::Bind {
            addr: config.bind_addr,
            reason,
        };
        // Minimal preset: no n0 relays, no DNS/pkarr address publishing.
        // The crate is built without the port mapper, so nothing probes the
        // gateway either.
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(SecretKey::from_bytes(node_key))
            .relay_mode(relay_mode)
            .bind_addr(config.bind_addr)
            .map_err(|e| bind_err(e.to_string()))?
            .bind()
            .await
            .map_err(|e| bind_err(e.to_string()))?;
        let traffic = Arc::new(Traffic::default());
        let cancel = CancellationToken::new();
        let registry = Arc::new(swarm::Registry::default());
        let (events, events_task) = provider::spawn_events(
            traffic.clone(),
            registry.clone(),
            &config,
            cancel.child_token(),
        );
        let blobs = BlobsProtocol::new(store.blobs(), Some(events));
        let swarm_handler = swarm::Handler {
            registry: registry.clone(),
            store: store.clone(),
        };
        let router = Router::builder(endpoint.clone())
            .accept(iroh_blobs::ALPN, blobs)
            .accept(swarm::ALPN, swarm_handler)
            .spawn();
        tracing::info!(node = %endpoint.id().fmt_short(), addrs = ?endpoint.bound_sockets(), "node started");
        let mut node = Self {
            endpoint,
            router,
            store,
            traffic,
            registry,
            config,
            cancel,
            events_task,
            control: None,
            control_events: Mutex::new(None),
        };
        if let Some(mut control_config) = node.config.control.clone() {
            control_config.data_addrs = node.provider_info().addrs;
            let (tx, rx) = tokio::sync::mpsc::channel(classe_control::EVENT_QUEUE);
            match Control::spawn(node_key, control_config, tx).await {
                Ok(control) => {
                    node.control = Some(control);
                    node.control_events = Mutex::new(Some(rx));
                }
                Err(e) => {
                    node.shutdown().await;
                    return Err(e.into());
                }
            }
        }
        Ok(node)
    }

    /// The control plane, if this node runs one.
    pub fn control(&self) -> Option<&Control> {
        self.control.as_ref()
    }

    /// Reads and drops the control plane's events, for nodes that act on
    /// none (share, fetch): refusals are already counted and logged.
    pub fn discard_control_events(&self) {
        if let Some(mut rx) = self.take_control_events() {
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
        }
    }

    /// The control plane's events (announcements, refusals). Taken once.
    pub fn take_control_events(&self) -> Option<tokio::sync::mpsc::Receiver<ControlEvent>> {
        self.control_events.lock().ok()?.take()
    }

    /// Records in the DHT that this node holds (part of) `root`.
    pub async fn provide(&self, root: Hash) {
        if let Some(c) = &self.control {
            c.provide(*root.as_bytes()).await;
        }
    }

    /// This node's id (its public node key).
    pub fn id(&self) -> [u8; 32] {
        *self.endpoint.id().as_bytes()
    }

    /// The store it serves.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How other nodes reach this one: its id and every direct address it
    /// listens on. An unspecified bind address (0.0.0.0) is replaced by the
    /// addresses of the machine's interfaces.
    pub fn provider_info(&self) -> ProviderInfo {
        let addr = self.endpoint.addr();
        let mut addrs: Vec<SocketAddr> = addr.ip_addrs().copied().collect();
        for bound in self.endpoint.bound_sockets() {
            if !bound.ip().is_unspecified() && !addrs.contains(&bound) {
                addrs.push(bound);
            }
        }
        addrs.sort_by_key(|a| (a.ip().is_loopback(), a.is_ipv6(), *a));
        addrs.dedup();
        addrs.truncate(classe_bundle::ticket::MAX_ADDRS);
        ProviderInfo {
            node_id: self.id(),
            addrs,
            relay_url: self.config.relay_url.clone(),
            control_port: self.control.as_ref().map(Control::tcp_port),
        }
    }

    /// A ticket for a bundle this node holds.
    pub fn ticket(&self, root: Hash, author: AuthorKey) -> Ticket {
        Ticket {
            root: *root.as_bytes(),
            author,
            providers: vec![self.provider_info()],
        }
    }

    /// Registers a bundle so that bytes served for its files are counted
    /// against it.
    pub fn account_bundle(&self, root: Hash, files: impl IntoIterator<Item = Hash>) {
        self.traffic.register_bundle(root, files);
    }

    /// Serves a bundle held whole in the store (one just shared): counts
    /// its bytes, announces its pieces to swarm peers, and applies the
    /// seed's send-each-piece-once rule to it.
    pub fn serve_bundle(&self, root: Hash, manifest: &classe_bundle::Manifest) {
        self.account_bundle(
            root,
            manifest.files.iter().map(|f| Hash::from_bytes(f.hash)),
        );
        self.registry
            .serve(root, Arc::new(swarm::BundleLayout::from_manifest(manifest)));
    }

    /// Bytes sent and received so far, per peer and per bundle.
    pub fn traffic(&self) -> TrafficSnapshot {
        self.traffic.snapshot()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Stops accepting, closes connections and flushes the store. Bounded
    /// in time: a peer that does not acknowledge the close, or a store
    /// busy with a large write, cannot keep the process from exiting (the
    /// lab saw pupils under load take more than 10 s without a bound).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Some(c) = &self.control {
            c.shutdown(SHUTDOWN_STEP).await;
        }
        match tokio::time::timeout(SHUTDOWN_STEP, self.router.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("router shutdown: {e}"),
            Err(_) => tracing::warn!("router shutdown took too long; going on"),
        }
        self.events_task.abort();
        if tokio::time::timeout(SHUTDOWN_STEP, self.store.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("store shutdown took too long; going on");
        }
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub(crate) fn traffic_handle(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    pub(crate) fn swarm_registry(&self) -> &Arc<swarm::Registry> {
        &self.registry
    }
}
