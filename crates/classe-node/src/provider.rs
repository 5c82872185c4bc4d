//! The provider side: what happens when peers fetch from us.
//!
//! iroh-blobs reports connections and requests through an event channel.
//! One task consumes it to
//! - refuse connections beyond `max_connections` (bounded serving),
//! - pace uploads to `max_upload` bytes per second over all peers, by
//!   delaying each 16 KiB chunk group on a shared virtual clock (so the cap
//!   holds over time, not per request),
//! - count the payload bytes sent to each peer and for each bundle;
//! - serve [`SERVING`] requests at a time and queue the rest first come,
//!   first served; with an upload cap, decline (as busy) a request that
//!   would wait more than [`MAX_QUEUE`] behind the queue, so a slow uplink
//!   is not buried under requests that would time out;
//! - for bundles held whole, decline (as "not this piece") a request for a
//!   piece already sent more often than the least-sent piece
//!   ([`classe_swarm::SeedPolicy`]): the teacher's uplink sends each piece
//!   about once, and pupils pass pieces on to each other.
//!
//! The class simulation in `classe-swarm` compared this queue with
//! BitTorrent-style slots that decline extra peers outright: declining left
//! uplinks idle 30-50% of the time between refusals and retries.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh_blobs::provider::events::{
    AbortReason, ConnectMode, EventMask, EventSender, ObserveMode, ProviderMessage, RequestMode,
    RequestUpdate, ThrottleMode,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    swarm::{Admission, Registry, Verdict},
    traffic::Traffic,
    NodeConfig,
};

/// Event channel capacity. The provider waits when it is full, which is
/// the back-pressure we want rather than unbounded memory.
const EVENT_CAPACITY: usize = 256;

/// Requests served at once; the rest wait in line.
pub(crate) const SERVING: usize = 4;
/// Requests one connection may have in service at once. A peer that
/// vanished (a laptop lid closed, Wi-Fi gone, kill -9) holds at most this
/// many of the [`SERVING`] slots, and only until they stall.
const PER_PEER_SERVING: usize = 2;
/// A request in service that sends nothing for this long gives its
/// [`SERVING`] slot to the next in line: its peer is gone or cannot take
/// more, and the QUIC idle timeout that will close its connection is
/// seconds away. (It keeps its per-peer slot until it ends.)
const STALLED: Duration = Duration::from_secs(2);
/// With an upload cap: the longest a request may expect to wait in line.
pub(crate) const MAX_QUEUE: Duration = Duration::from_secs(10);
/// Without an upload cap: the most requests waiting in line.
const MAX_WAITING: usize = 512;

/// The line of requests waiting to be served.
#[derive(Debug)]
struct UploadQueue {
    permits: Arc<tokio::sync::Semaphore>,
    /// Estimated bytes of requests admitted and not finished.
    queued_bytes: std::sync::atomic::AtomicU64,
    waiting: std::sync::atomic::AtomicUsize,
    rate: Option<u64>,
}

impl UploadQueue {
    fn too_long(&self, bytes: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        match self.rate {
            Some(rate) => {
                let queued = self.queued_bytes.load(Relaxed) + bytes;
                Duration::from_secs_f64(queued as f64 / rate.max(1) as f64) > MAX_QUEUE
            }
            None => self.waiting.load(Relaxed) >= MAX_WAITING,
        }
    }
}

/// A rate limit enforced over time: every reservation of `n` bytes moves a
/// shared clock forward by `n / rate`; callers wait until the clock says
/// their bytes may go. A short burst is allowed after idleness.
#[derive(Debug)]
pub(crate) struct Pacer {
    bytes_per_sec: f64,
    burst: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            burst: Duration::from_millis(50),
            next: Mutex::new(Instant::now()),
        }
    }

    /// When `bytes` may be sent.
    pub(crate) fn reserve(&self, bytes: u64) -> Instant {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*next).max(now.checked_sub(self.burst).unwrap_or(now));
        *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
        *next
    }
}

pub(crate) fn spawn_events(
    traffic: Arc<Traffic>,
    registry: Arc<Registry>,
    store: classe_store::Store,
    config: &NodeConfig,
    cancel: CancellationToken,
) -> (EventSender, tokio::task::JoinHandle<()>) {
    let mask = EventMask {
        connected: ConnectMode::Intercept,
        get: RequestMode::InterceptLog,
        get_many: RequestMode::NotifyLog,
        // Nobody may write into our store.
        push: RequestMode::Disabled,
        observe: ObserveMode::None,
        throttle: if config.max_upload.is_some() {
            ThrottleMode::Intercept
        } else {
            ThrottleMode::None
        },
    };
    let (sender, rx) = EventSender::channel(EVENT_CAPACITY, mask);
    let pacer = config.max_upload.map(|r| Arc::new(Pacer::new(r)));
    let queue = Arc::new(UploadQueue {
        permits: Arc::new(tokio::sync::Semaphore::new(SERVING)),
        queued_bytes: Default::default(),
        waiting: Default::default(),
        rate: config.max_upload,
    });
    let events = Events {
        traffic,
        registry,
        store,
        queue,
        max_connections: config.max_connections,
        pacer,
        cancel,
        peers: HashMap::new(),
    };
    let task = tokio::spawn(events.run(rx));
    (sender, task)
}

/// Bytes a request will probably send: its ranges when bounded, else a
/// guess.
fn estimate(request: &iroh_blobs::protocol::GetRequest) -> u64 {
    if !request.ranges.is_blob() {
        return 64 * 1024;
    }
    match request.ranges.iter().next() {
        Some(ranges) if !ranges.is_empty() => {
            let mut total = 0u64;
            for r in ranges.iter() {
                match r {
                    range_collections::range_set::RangeSetRange::Range(r) => {
                        total += (r.end.0 - r.start.0) * 1024
                    }
                    range_collections::range_set::RangeSetRange::RangeFrom(_) => {
                        return 1024 * 1024
                    }
                }
            }
            total
        }
        _ => 1024 * 1024,
    }
}

/// A get request from a peer, with its reply channel.
type GetRequestMessage = irpc::WithChannels<
    iroh_blobs::provider::events::RequestReceived<iroh_blobs::protocol::GetRequest>,
    iroh_blobs::provider::events::ProviderProto,
>;

/// The provider events task: who is connected, what they may get, and at
/// what pace.
struct Events {
    traffic: Arc<Traffic>,
    registry: Arc<Registry>,
    store: classe_store::Store,
    queue: Arc<UploadQueue>,
    max_connections: usize,
    pacer: Option<Arc<Pacer>>,
    cancel: CancellationToken,
    peers: HashMap<u64, Conn>,
}

impl Events {
    async fn run(mut self, mut rx: tokio::sync::mpsc::Receiver<ProviderMessage>) {
        loop {
            let msg = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                msg = rx.recv() => match msg { Some(m) => m, None => break },
            };
            match msg {
                ProviderMessage::ClientConnected(msg) => {
                    let verdict = self.connect(msg.inner.endpoint_id, msg.inner.connection_id);
                    msg.tx.send(verdict).await.ok();
                }
                ProviderMessage::ConnectionClosed(msg) => {
                    // Its requests still waiting in line leave it at once.
                    if let Some(conn) = self.peers.remove(&msg.inner.connection_id) {
                        tracing::info!(peer = %conn.name, "peer disconnected");
                        conn.closed.cancel();
                    }
                }
                ProviderMessage::GetRequestReceived(msg) => self.get(msg).await,
                ProviderMessage::GetManyRequestReceivedNotify(msg) => {
                    let peer = self
                        .peers
                        .get(&msg.inner.connection_id)
                        .map_or_else(|| "unknown".to_string(), |c| c.name.clone());
                    let hash = msg.inner.request.hashes.first().copied();
                    if let Some(hash) = hash {
                        let (traffic, cancel) = (self.traffic.clone(), self.cancel.clone());
                        spawn_counter(msg.rx, traffic, peer, hash, cancel);
                    }
                }
                ProviderMessage::Throttle(msg) => match &self.pacer {
                    Some(pacer) => {
                        let at = pacer.reserve(msg.inner.size);
                        let cancel = self.cancel.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = cancel.cancelled() => {}
                                _ = tokio::time::sleep_until(at) => { msg.tx.send(Ok(())).await.ok(); }
                            }
                        });
                    }
                    None => {
                        msg.tx.send(Ok(())).await.ok();
                    }
                },
                other => {
                    tracing::trace!(?other, "provider event ignored");
                }
            }
        }
    }

    /// A new connection: admitted under the connection cap.
    fn connect(
        &mut self,
        endpoint: Option<iroh::EndpointId>,
        connection: u64,
    ) -> Result<(), AbortReason> {
        if self.peers.len() >= self.max_connections {
            tracing::info!(
                limit = self.max_connections,
                "refusing a peer: connection limit"
            );
            return Err(AbortReason::RateLimited);
        }
        let conn = Conn::new(endpoint, &self.cancel);
        tracing::info!(peer = %conn.name, "peer connected");
        self.peers.insert(connection, conn);
        Ok(())
    }

    /// A get request: declined, or served in its peer's lane.
    async fn get(&mut self, msg: GetRequestMessage) {
        let Some(conn) = self.peers.get(&msg.inner.connection_id) else {
            msg.tx.send(Err(AbortReason::Permission)).await.ok();
            return;
        };
        // A blob our own check found damaged is not served: the peer would
        // only fail its hashes (the log says which bundle and file;
        // `classe verify` tells more).
        if self.store.is_damaged(msg.inner.request.hash) {
            tracing::debug!(peer = %conn.name, "declining a request for a damaged blob");
            msg.tx.send(Err(AbortReason::Permission)).await.ok();
            return;
        }
        // A lesson of a revoked teacher (the seed stopped serving it).
        if self.store.is_withheld(msg.inner.request.hash) {
            tracing::debug!(peer = %conn.name, "declining a request for a withheld bundle");
            msg.tx.send(Err(AbortReason::Permission)).await.ok();
            return;
        }
        // The seed's rule: no piece again while on its way or just sent.
        let admission = match self.registry.admit_piece(&msg.inner.request, conn.id) {
            Verdict::Declined => {
                msg.tx.send(Err(AbortReason::Permission)).await.ok();
                return;
            }
            Verdict::Free => None,
            Verdict::Admitted(a) => Some(a),
        };
        let bytes = estimate(&msg.inner.request);
        if self.queue.too_long(bytes) {
            tracing::debug!(peer = %conn.name, "declining a request: upload queue full");
            msg.tx.send(Err(AbortReason::RateLimited)).await.ok();
            return;
        }
        tokio::spawn(serve(
            msg,
            conn.clone(),
            admission,
            bytes,
            self.queue.clone(),
            self.traffic.clone(),
        ));
    }
}

/// One connection of a peer fetching from us.
#[derive(Clone)]
struct Conn {
    id: Option<iroh::EndpointId>,
    /// For logs and traffic counts.
    name: String,
    /// Cancelled when the connection closes (or the node stops).
    closed: CancellationToken,
    /// Its [`PER_PEER_SERVING`] slots.
    lane: Arc<tokio::sync::Semaphore>,
}

impl Conn {
    fn new(id: Option<iroh::EndpointId>, node: &CancellationToken) -> Self {
        Self {
            id,
            name: id.map_or_else(|| "unknown".to_string(), |id| id.to_string()),
            closed: node.child_token(),
            lane: Arc::new(tokio::sync::Semaphore::new(PER_PEER_SERVING)),
        }
    }
}

/// Waits in line for a slot of the connection, then a [`SERVING`] slot,
/// serves the request and settles its admission by the seed rule. Leaves
/// the line as soon as the connection closes.
async fn serve(
    msg: GetRequestMessage,
    conn: Conn,
    admission: Option<Admission>,
    bytes: u64,
    queue: Arc<UploadQueue>,
    traffic: Arc<Traffic>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    queue.queued_bytes.fetch_add(bytes, Relaxed);
    queue.waiting.fetch_add(1, Relaxed);
    let slots = tokio::select! {
        _ = conn.closed.cancelled() => None,
        slots = async {
            let lane = conn.lane.clone().acquire_owned().await.ok()?;
            let serving = queue.permits.clone().acquire_owned().await.ok()?;
            Some((lane, serving))
        } => slots,
    };
    queue.waiting.fetch_sub(1, Relaxed);
    let sent = match slots {
        Some((_lane, serving)) if msg.tx.send(Ok(())).await.is_ok() => {
            let mut serving = Some(serving);
            let hash = msg.inner.request.hash;
            !count_transfer(
                msg.rx,
                &traffic,
                &conn.name,
                hash,
                &conn.closed,
                &mut serving,
            )
            .await
        }
        // The line was left, or the request went away while it waited.
        _ => false,
    };
    queue.queued_bytes.fetch_sub(bytes, Relaxed);
    // Dropping an unsent admission gives its pieces back.
    if let (true, Some(admission)) = (sent, admission) {
        admission.sent();
    }
}

/// Follows one request's updates and counts the payload bytes it sent.
/// Returns true if the transfer was aborted before it completed. A
/// request that sends nothing for [`STALLED`] gives up `slot` (if any).
async fn count_transfer(
    mut updates: irpc::channel::mpsc::Receiver<RequestUpdate>,
    traffic: &Traffic,
    peer: &str,
    request_hash: iroh_blobs::Hash,
    cancel: &CancellationToken,
    slot: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> bool {
    let mut current = request_hash;
    loop {
        let update = tokio::select! {
            _ = cancel.cancelled() => return true,
            u = updates.recv() => u,
            _ = tokio::time::sleep(STALLED), if slot.is_some() => {
                tracing::debug!(%peer, "request stalled: its serving slot goes to the next in line");
                *slot = None;
                continue;
            }
        };
        match update {
            Ok(Some(RequestUpdate::Started(s))) => current = s.hash,
            Ok(Some(RequestUpdate::Completed(c))) => {
                traffic.add_sent(peer, &[current, request_hash], c.stats.payload_bytes_sent);
                return false;
            }
            Ok(Some(RequestUpdate::Aborted(a))) => {
                traffic.add_sent(peer, &[current, request_hash], a.stats.payload_bytes_sent);
                return true;
            }
            Ok(Some(RequestUpdate::Progress(_))) => {}
            Ok(None) | Err(_) => return true,
        }
    }
}

/// Counts a request that needs no admission (get-many).
fn spawn_counter(
    updates: irpc::channel::mpsc::Receiver<RequestUpdate>,
    traffic: Arc<Traffic>,
    peer: String,
    request_hash: iroh_blobs::Hash,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        count_transfer(updates, &traffic, &peer, request_hash, &cancel, &mut None).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pacer_spreads_bytes_over_time() {
        let pacer = Pacer::new(1_000_000);
        let start = Instant::now();
        let mut last = start;
        for _ in 0..100 {
            last = pacer.reserve(16 * 1024);
        }
        // 1.6 MB at 1 MB/s: the last chunk may leave after about 1.6 s,
        // minus the 50 ms burst allowance.
        let waited = last - start;
        assert!(waited >= Duration::from_millis(1_500), "{waited:?}");
        assert!(waited <= Duration::from_millis(1_700), "{waited:?}");
    }
}
