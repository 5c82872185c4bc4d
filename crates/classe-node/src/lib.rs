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
//! The endpoint never uses n0's relays or address lookup: only the relay a
//! school runs itself (`relay`), when one is configured. Through it a node
//! at home learns its public address (QUIC address discovery), is
//! reachable by classmates behind other home routers (hole punching, with
//! relayed bytes as the fallback), and its router may map a port for it
//! (UPnP-IGD / NAT-PMP / PCP: iroh's port mapper). The addresses it learns
//! go into its tickets, peer exchange and the control plane as they
//! change. Which way each peer's bytes went is counted (`paths`). Peers
//! are dialled at the addresses carried in tickets and announcements, or
//! found through the control plane (`classe-control`: a private DHT,
//! mDNS, gossip), which shares the node key: one identity for both stacks.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod announce;
mod download;
mod fetch;
mod paths;
mod provider;
pub mod relay;
pub mod seed;
pub mod seed_school;
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
use iroh::{
    endpoint::{presets, PortmapperConfig},
    protocol::Router,
    Endpoint, RelayMode, SecretKey, Watcher,
};
use iroh_blobs::Hash;
use tokio_util::sync::CancellationToken;

pub use announce::{AnnouncementLog, PublishError};
pub use fetch::{
    available_space, free_space, no_events, FetchError, FetchEvent, FetchReport, FetchRequest,
    TrustDecision,
};
pub use paths::{PathBytes, QuicCounters};
pub use relay::{RelayCarried, RelayError, RelayServer, RelayServerConfig};
pub use seed::{MirrorError, Mirrored, Seed, SeedConfig, SeedError, SeedEvent};
pub use seed_school::SchoolSeeding;
pub use traffic::{PeerTraffic, Traffic, TrafficSnapshot};

/// How long spawning waits for the school relay to answer, so the first
/// ticket already carries the relay and the public address. A relay that
/// is down costs this once; the node then goes on with direct addresses
/// and joins the relay when it comes back. Six seconds because a net
/// report waits up to 3 s for an IPv6 probe that a relay listening on
/// IPv4 only never answers (a host name that also resolves to ::1 or an
/// AAAA record), and the relay handshake comes after it.
const RELAY_WAIT: Duration = Duration::from_secs(6);

/// The longest each step of [`Node::shutdown`] may take.
const SHUTDOWN_STEP: Duration = Duration::from_secs(3);

/// How a node runs. The CLI builds this from flags, environment and the
/// config file; tests build it directly.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where to listen for QUIC. Default: all IPv4 interfaces, any port.
    pub bind_addr: SocketAddr,
    /// A relay the school runs itself (`http://` or `https://`). None:
    /// direct connections only, and no public address is learnt.
    pub relay_url: Option<String>,
    /// Extra root certificates (a PEM file) trusted for an `https://`
    /// relay, for a school with its own certificate authority.
    pub relay_ca: Option<std::path::PathBuf>,
    /// Ask the home router for a port mapping (UPnP-IGD, NAT-PMP, PCP).
    /// Never done when bound to a loopback address.
    pub port_mapping: bool,
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
    /// How long a whole download may go without receiving a byte, from
    /// anybody, before it gives up (it says so on stderr after 10 s).
    pub stall_timeout: Duration,
    /// The control plane (DHT, gossip, mDNS). None: tickets only. Its
    /// `data_addrs` are filled in from the endpoint.
    pub control: Option<ControlConfig>,
    /// This node stops serving a bundle as soon as it holds it whole
    /// (`classe fetch --no-seed`): it says so to the peers it fetches
    /// from, so a seed does not count what it sends us as passed on to
    /// the class.
    pub leaves_when_done: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            bind_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            relay_url: None,
            relay_ca: None,
            port_mapping: true,
            max_upload: None,
            max_download: None,
            max_connections: 64,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            control: None,
            leaves_when_done: false,
        }
    }
}

/// Starting a node failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The relay URL does not parse, or its CA file cannot be read.
    #[error(transparent)]
    Relay(#[from] RelayError),
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

/// A running node: a cheap handle, cloned into every task that needs it.
/// [`Node::shutdown`] stops it for every clone (the first call does the
/// work, later ones wait for it); dropping the last clone without it
/// aborts the node's tasks without flushing the store.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    router: Router,
    store: Store,
    traffic: Arc<Traffic>,
    paths: paths::Paths,
    registry: Arc<swarm::Registry>,
    config: NodeConfig,
    cancel: CancellationToken,
    events_task: tokio::task::JoinHandle<()>,
    control: Option<Control>,
    control_events: Mutex<Option<tokio::sync::mpsc::Receiver<ControlEvent>>>,
    /// Set once the shutdown steps have run.
    stopped: tokio::sync::OnceCell<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.events_task.abort();
    }
}

impl Node {
    /// Binds the endpoint and starts serving `store`.
    pub async fn spawn(
        store: Store,
        node_key: &[u8; 32],
        config: NodeConfig,
    ) -> Result<Self, SpawnError> {
        let paths = paths::Paths::default();
        let endpoint = bind_endpoint(node_key, &config, paths.clone()).await?;
        let traffic = Arc::new(Traffic::default());
        let cancel = CancellationToken::new();
        let registry = Arc::new(swarm::Registry::default());
        let (events, events_task) = provider::spawn_events(
            traffic.clone(),
            registry.clone(),
            store.clone(),
            &config,
            cancel.child_token(),
        );
        let blobs = store.protocol(Some(events));
        let swarm_handler = swarm::Handler {
            registry: registry.clone(),
            store: store.clone(),
        };
        let router = Router::builder(endpoint.clone())
            .accept(iroh_blobs::ALPN, blobs)
            .accept(swarm::ALPN, swarm_handler)
            .spawn();
        tracing::info!(node = %endpoint.id().fmt_short(), addrs = ?endpoint.bound_sockets(), "node started");
        let wait_relay = config.relay_url.is_some();
        let control_config = config.control.clone();
        let mut inner = Inner {
            endpoint,
            router,
            store,
            traffic,
            paths,
            registry,
            config,
            cancel,
            events_task,
            control: None,
            control_events: Mutex::new(None),
            stopped: tokio::sync::OnceCell::new(),
        };
        if wait_relay {
            wait_for_relay(
                &inner.endpoint,
                inner.config.relay_url.as_deref(),
                RELAY_WAIT,
            )
            .await;
        }
        if let Some(mut control_config) = control_config {
            let me = info_of(&inner.endpoint, inner.config.relay_url.as_deref());
            control_config.data_addrs = me.addrs;
            control_config.relay_url = me.relay_url;
            let (tx, rx) = tokio::sync::mpsc::channel(classe_control::EVENT_QUEUE);
            match Control::spawn(node_key, control_config, tx).await {
                Ok(control) => {
                    inner.control = Some(control);
                    inner.control_events = Mutex::new(Some(rx));
                }
                Err(e) => {
                    Node {
                        inner: Arc::new(inner),
                    }
                    .shutdown()
                    .await;
                    return Err(e.into());
                }
            }
        }
        let node = Node {
            inner: Arc::new(inner),
        };
        if let Some(control) = node.inner.control.clone() {
            node.spawn_address_updates(control);
        }
        Ok(node)
    }

    /// Cancelled when the node shuts down: tasks working for it stop.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.inner.cancel.cancelled()
    }

    /// A token cancelled when the node shuts down, for tasks that outlive
    /// a borrow of the node.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.cancel.child_token()
    }

    /// The control plane, if this node runs one.
    pub fn control(&self) -> Option<&Control> {
        self.inner.control.as_ref()
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
        self.inner.control_events.lock().ok()?.take()
    }

    /// Records in the DHT that this node holds (part of) `root`.
    pub async fn provide(&self, root: Hash) {
        if let Some(c) = &self.inner.control {
            c.provide(*root.as_bytes()).await;
        }
    }

    /// This node's id (its public node key).
    pub fn id(&self) -> [u8; 32] {
        *self.inner.endpoint.id().as_bytes()
    }

    /// The store it serves.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Waits until the endpoint has joined its relay and made a first
    /// report of its public address, at most `within`. False if it did
    /// not in time (the relay is down or blocked).
    pub async fn wait_for_relay(&self, within: Duration) -> bool {
        wait_for_relay(
            &self.inner.endpoint,
            self.inner.config.relay_url.as_deref(),
            within,
        )
        .await
    }

    /// Tells the control plane every change of our addresses (a public
    /// address learnt, a port mapped, the relay joined), so identify and
    /// the DHT hand out what works now.
    fn spawn_address_updates(&self, control: Control) {
        let mut watch = self.inner.endpoint.watch_addr();
        let endpoint = self.inner.endpoint.clone();
        let relay = self.inner.config.relay_url.clone();
        let cancel = self.inner.cancel.clone();
        let task = async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    changed = watch.updated() => {
                        if changed.is_err() {
                            break;
                        }
                        let info = info_of(&endpoint, relay.as_deref());
                        tracing::debug!(addrs = ?info.addrs, relay = ?info.relay_url, "our addresses changed");
                        control.set_data_addrs(info.addrs, info.relay_url).await;
                    }
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(
            task,
            tracing::debug_span!("address-updates"),
        ));
    }

    /// How other nodes reach this one: its id, every direct address it
    /// knows (the interfaces', the public one the relay saw, a port mapped
    /// on the home router) and its relay. An unspecified bind address
    /// (0.0.0.0) is replaced by the addresses of the machine's interfaces.
    pub fn provider_info(&self) -> ProviderInfo {
        let mut info = info_of(&self.inner.endpoint, self.inner.config.relay_url.as_deref());
        info.control_port = self.inner.control.as_ref().map(Control::tcp_port);
        info
    }

    /// `info` ready to dial: a provider that names no address and no relay
    /// (the DHT found it, but it could not be dialled over TCP: at home
    /// behind its router) is tried by node id through our relay, the
    /// school's, which both sides use. None if there is no way to dial it
    /// (no relay of ours either): nothing to try, nothing to warn about.
    pub(crate) fn dialable(&self, mut info: ProviderInfo) -> Option<ProviderInfo> {
        if info.addrs.is_empty() && info.relay_url.is_none() {
            info.relay_url = Some(self.inner.config.relay_url.clone()?);
        }
        Some(info)
    }

    /// The UDP sockets the endpoint listens on.
    pub fn bound_sockets(&self) -> Vec<SocketAddr> {
        self.inner.endpoint.bound_sockets()
    }

    /// Transport bytes per peer, direct and relayed (QUIC datagrams).
    pub fn path_bytes(&self) -> std::collections::BTreeMap<String, PathBytes> {
        self.inner.paths.snapshot()
    }

    /// What QUIC did for this node's connections (datagrams, ACKs, ...).
    pub fn quic_counters(&self) -> QuicCounters {
        self.inner.paths.quic()
    }

    /// Whether our connections to `peer` run through the relay now (None:
    /// not connected).
    pub fn relayed(&self, peer: &[u8; 32]) -> Option<bool> {
        self.inner.paths.relayed(peer)
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
        self.inner.traffic.register_bundle(root, files);
    }

    /// Serves a bundle held whole in the store (one just shared): counts
    /// its bytes, announces its pieces to swarm peers, and applies the
    /// seed's send-each-piece-once rule to it.
    pub fn serve_bundle(&self, root: Hash, manifest: &classe_bundle::Manifest) {
        self.account_bundle(
            root,
            manifest.files.iter().map(|f| Hash::from_bytes(f.hash)),
        );
        self.inner
            .registry
            .serve(root, Arc::new(swarm::BundleLayout::from_manifest(manifest)));
    }

    /// Bytes sent and received so far, per peer and per bundle.
    pub fn traffic(&self) -> TrafficSnapshot {
        let mut snapshot = self.inner.traffic.snapshot();
        snapshot.paths = self.inner.paths.snapshot();
        snapshot
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Stops accepting, closes connections and flushes the store. Bounded
    /// in time: a peer that does not acknowledge the close, or a store
    /// busy with a large write, cannot keep the process from exiting (the
    /// lab saw pupils under load take more than 10 s without a bound).
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner
            .stopped
            .get_or_init(|| async {
                inner.cancel.cancel();
                if let Some(c) = &inner.control {
                    c.shutdown(SHUTDOWN_STEP).await;
                }
                match tokio::time::timeout(SHUTDOWN_STEP, inner.router.shutdown()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("router shutdown: {e}"),
                    Err(_) => tracing::warn!("router shutdown took too long; going on"),
                }
                inner.events_task.abort();
                if tokio::time::timeout(SHUTDOWN_STEP, inner.store.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!("store shutdown took too long; going on");
                }
            })
            .await;
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    pub(crate) fn traffic_handle(&self) -> &Arc<Traffic> {
        &self.inner.traffic
    }

    pub(crate) fn swarm_registry(&self) -> &Arc<swarm::Registry> {
        &self.inner.registry
    }
}

/// Waits until `endpoint` has joined its relay and made a first report of
/// its public address, at most `within`.
async fn wait_for_relay(endpoint: &Endpoint, relay: Option<&str>, within: Duration) -> bool {
    let joined = tokio::time::timeout(within, async {
        endpoint.online().await;
        // The relay connection comes first; the public address a moment
        // later, when the first report of address discovery is in.
        let mut watch = endpoint.watch_addr();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !watch.get().ip_addrs().any(is_global) {
            if tokio::time::timeout_at(deadline, watch.updated())
                .await
                .is_err()
            {
                break;
            }
        }
    })
    .await
    .is_ok();
    if !joined {
        tracing::warn!(relay = ?relay, "the relay did not answer in time; going on with direct addresses");
    }
    joined
}

/// Binds the endpoint: the school relay only (or none), its certificate
/// rule, the port mapper unless bound to loopback or switched off, and the
/// path counters as a hook on every connection.
async fn bind_endpoint(
    node_key: &[u8; 32],
    config: &NodeConfig,
    paths: paths::Paths,
) -> Result<Endpoint, SpawnError> {
    let bind_err = |reason: String| SpawnError::Bind {
        addr: config.bind_addr,
        reason,
    };
    // Minimal preset: no n0 relays, no DNS/pkarr address publishing.
    let mut builder = Endpoint::builder(presets::Minimal)
        .secret_key(SecretKey::from_bytes(node_key))
        .transport_config(transport_config())
        .hooks(paths);
    match &config.relay_url {
        None => builder = builder.relay_mode(RelayMode::Disabled),
        Some(url) => {
            let url = relay::parse_url(url)?;
            let roots = match &config.relay_ca {
                Some(path) => relay::read_roots(path)?,
                None => Vec::new(),
            };
            builder = builder
                .relay_mode(relay::client_mode(&url))
                .ca_tls_config(relay::client_tls(&url, roots))
                // The captive-portal probe needs the relay's plain HTTP
                // port, which a TLS relay here does not publish; the
                // latency probes over HTTPS stay (they find the relay
                // where UDP is blocked).
                .net_report_config({
                    let mut c = iroh::endpoint::NetReportConfig::default();
                    c.captive_portal_check = false;
                    c
                });
        }
    }
    // A node bound to loopback has no router to ask; on a shared machine
    // (tests, the demo) probing the gateway would also send traffic off it.
    if !config.port_mapping || config.bind_addr.ip().is_loopback() {
        builder = builder.portmapper_config(PortmapperConfig::Disabled);
    }
    // A specific address is honoured alone (no extra socket on [::]); the
    // unspecified default keeps iroh's IPv6 socket beside it, which a
    // pupil with IPv6 at home can use.
    if !config.bind_addr.ip().is_unspecified() {
        builder = builder.clear_ip_transports();
    }
    builder
        .bind_addr(config.bind_addr)
        .map_err(|e| bind_err(e.to_string()))?
        .bind()
        .await
        .map_err(|e| bind_err(e.to_string()))
}

/// A peer that vanishes (a laptop lid closed, Wi-Fi gone, kill -9) holds
/// the pieces queued for it and their upload slots until its connection
/// times out. iroh's defaults (a ping every 5 s, 30 s of silence) kept a
/// teacher's uplink waiting half a minute per vanished pupil; with a ping
/// every second, ten seconds of silence end the connection. Ten, not
/// three: Wi-Fi reconnects and cellular hand-offs take 2-10 s, and the
/// relay path keeps a connection alive through a change of network.
pub(crate) const QUIC_IDLE: Duration = Duration::from_secs(10);
const QUIC_PING: Duration = Duration::from_secs(1);

fn transport_config() -> iroh::endpoint::QuicTransportConfig {
    let builder = iroh::endpoint::QuicTransportConfig::builder()
        .keep_alive_interval(QUIC_PING)
        .default_path_keep_alive_interval(QUIC_PING);
    let builder = QuicExperiment::from_env().apply(builder);
    match iroh::endpoint::IdleTimeout::try_from(QUIC_IDLE) {
        Ok(idle) => builder.max_idle_timeout(Some(idle)),
        Err(_) => builder,
    }
    .build()
}

/// Transport settings the lab can try without a rebuild (issue 11: weigh
/// each lever in the same run as the default). Read from the environment
/// once per endpoint; unset, nothing changes. Not a user setting: each was
/// measured and found not to pay (docs/benchmarks.md, issue 11, "Levers
/// weighed"), and ACK frequency crashed two pupils in one of five class
/// runs inside the QUIC stack (`bytes` "advance out of bounds").
///
/// - `CLASSE_EXP_ACK_THRESHOLD=N` asks peers to acknowledge every N+1
///   packets (QUIC ACK frequency); `CLASSE_EXP_ACK_DELAY_MS`,
///   `CLASSE_EXP_ACK_REORDER` set its other two knobs.
/// - `CLASSE_EXP_CC=bbr|newreno`: the congestion controller (default
///   Cubic).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct QuicExperiment {
    ack_threshold: Option<u32>,
    ack_delay_ms: Option<u64>,
    ack_reorder: Option<u32>,
    congestion: Option<String>,
}

impl QuicExperiment {
    fn from_env() -> Self {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Self {
            ack_threshold: num("CLASSE_EXP_ACK_THRESHOLD")
                .map(|v| v.min(u64::from(u32::MAX)) as u32),
            ack_delay_ms: num("CLASSE_EXP_ACK_DELAY_MS"),
            ack_reorder: num("CLASSE_EXP_ACK_REORDER").map(|v| v.min(u64::from(u32::MAX)) as u32),
            congestion: std::env::var("CLASSE_EXP_CC").ok(),
        }
    }

    fn apply(
        &self,
        mut builder: iroh::endpoint::QuicTransportConfigBuilder,
    ) -> iroh::endpoint::QuicTransportConfigBuilder {
        use iroh::endpoint::VarInt;
        if *self == Self::default() {
            return builder;
        }
        tracing::warn!(?self, "experimental QUIC settings from the environment");
        if let Some(t) = self.ack_threshold {
            let mut ack = iroh::endpoint::AckFrequencyConfig::default();
            ack.ack_eliciting_threshold(VarInt::from_u32(t));
            if let Some(ms) = self.ack_delay_ms {
                ack.max_ack_delay(Some(Duration::from_millis(ms)));
            }
            if let Some(r) = self.ack_reorder {
                ack.reordering_threshold(VarInt::from_u32(r));
            }
            builder = builder.ack_frequency_config(Some(ack));
        }
        match self.congestion.as_deref() {
            None | Some("cubic") => builder,
            Some("bbr") => builder.congestion_controller_factory(Arc::new(
                noq_proto::congestion::Bbr3Config::default(),
            )),
            Some("newreno") => builder.congestion_controller_factory(Arc::new(
                noq_proto::congestion::NewRenoConfig::default(),
            )),
            Some(other) => {
                tracing::warn!(
                    cc = other,
                    "unknown CLASSE_EXP_CC (bbr, newreno, cubic); keeping Cubic"
                );
                builder
            }
        }
    }
}

/// Our id, direct addresses and relay as the endpoint knows them now.
fn info_of(endpoint: &Endpoint, relay_url: Option<&str>) -> ProviderInfo {
    let addr = endpoint.addr();
    let mut addrs: Vec<SocketAddr> = addr.ip_addrs().copied().collect();
    for bound in endpoint.bound_sockets() {
        if !bound.ip().is_unspecified() && !addrs.contains(&bound) {
            addrs.push(bound);
        }
    }
    // Addresses that work from anywhere first (public, port-mapped), then
    // the LAN's, loopback last: a ticket keeps only the first 16.
    addrs.sort_by_key(|a| (a.ip().is_loopback(), !is_global(a), a.is_ipv6(), *a));
    addrs.dedup();
    addrs.truncate(classe_bundle::ticket::MAX_ADDRS);
    ProviderInfo {
        node_id: *endpoint.id().as_bytes(),
        addrs,
        relay_url: relay_url.map(str::to_string),
        control_port: None,
    }
}

/// Not a private, link-local or loopback address.
fn is_global(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => !(ip.is_private() || ip.is_link_local() || ip.is_loopback()),
        std::net::IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            // fc00::/7 unique local, fe80::/10 link local.
            !(ip.is_loopback() || first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80)
        }
    }
}
