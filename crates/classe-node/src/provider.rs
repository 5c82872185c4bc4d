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

use crate::{swarm::Registry, traffic::Traffic, NodeConfig};

/// Event channel capacity. The provider waits when it is full, which is
/// the back-pressure we want rather than unbounded memory.
const EVENT_CAPACITY: usize = 256;

/// Requests served at once; the rest wait in line.
pub(crate) const SERVING: usize = 4;
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
    let task = tokio::spawn(run(
        rx,
        traffic,
        registry,
        queue,
        config.max_connections,
        pacer,
        cancel,
    ));
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

#[allow(clippy::too_many_arguments)]
async fn run(
    mut rx: tokio::sync::mpsc::Receiver<ProviderMessage>,
    traffic: Arc<Traffic>,
    registry: Arc<Registry>,
    queue: Arc<UploadQueue>,
    max_connections: usize,
    pacer: Option<Arc<Pacer>>,
    cancel: CancellationToken,
) {
    // connection id → peer node id (hex)
    let mut peers: HashMap<u64, String> = HashMap::new();
    loop {
        let msg = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            msg = rx.recv() => match msg { Some(m) => m, None => break },
        };
        match msg {
            ProviderMessage::ClientConnected(msg) => {
                let verdict = if peers.len() >= max_connections {
                    tracing::info!(limit = max_connections, "refusing a peer: connection limit");
                    Err(AbortReason::RateLimited)
                } else {
                    let peer = msg
                        .inner
                        .endpoint_id
                        .map(|id| id.to_string())
                        .unwrap_or_else(|| "unknown".into());
                    tracing::debug!(%peer, "peer connected");
                    peers.insert(msg.inner.connection_id, peer);
                    Ok(())
                };
                msg.tx.send(verdict).await.ok();
            }
            ProviderMessage::ConnectionClosed(msg) => {
                peers.remove(&msg.inner.connection_id);
            }
            ProviderMessage::GetRequestReceived(msg) => {
                use std::sync::atomic::Ordering::Relaxed;
                let peer = peer_of(&peers, msg.inner.connection_id);
                let request = &msg.inner.request;
                let hash = request.hash;
                // The seed's rule: no piece again while on its way or just sent.
                let piece = registry.admit_piece(request);
                if piece == Some(None) {
                    msg.tx.send(Err(AbortReason::Permission)).await.ok();
                    continue;
                }
                let piece = piece.flatten();
                let bytes = estimate(request);
                if queue.too_long(bytes) {
                    if let Some((root, pieces)) = piece.clone() {
                        registry.undo_piece(root, pieces);
                    }
                    tracing::debug!(%peer, "declining a request: upload queue full");
                    msg.tx.send(Err(AbortReason::RateLimited)).await.ok();
                    continue;
                }
                queue.queued_bytes.fetch_add(bytes, Relaxed);
                queue.waiting.fetch_add(1, Relaxed);
                let queue = queue.clone();
                let traffic = traffic.clone();
                let registry = registry.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    // Wait in line for one of the SERVING permits.
                    let permit = tokio::select! {
                        _ = cancel.cancelled() => None,
                        p = queue.permits.clone().acquire_owned() => p.ok(),
                    };
                    queue.waiting.fetch_sub(1, Relaxed);
                    let Some(permit) = permit else {
                        queue.queued_bytes.fetch_sub(bytes, Relaxed);
                        return;
                    };
                    if msg.tx.send(Ok(())).await.is_err() {
                        queue.queued_bytes.fetch_sub(bytes, Relaxed);
                        return;
                    }
                    let aborted = count_transfer(msg.rx, &traffic, &peer, hash, &cancel).await;
                    if let Some((root, pieces)) = piece {
                        if aborted {
                            registry.undo_piece(root, pieces);
                        } else {
                            registry.sent_piece(root, pieces);
                        }
                    }
                    queue.queued_bytes.fetch_sub(bytes, Relaxed);
                    drop(permit);
                });
            }
            ProviderMessage::GetManyRequestReceivedNotify(msg) => {
                let peer = peer_of(&peers, msg.inner.connection_id);
                let hash = msg.inner.request.hashes.first().copied();
                if let Some(hash) = hash {
                    spawn_counter(msg.rx, traffic.clone(), peer, hash, cancel.clone());
                }
            }
            ProviderMessage::Throttle(msg) => match &pacer {
                Some(pacer) => {
                    let at = pacer.reserve(msg.inner.size);
                    let cancel = cancel.clone();
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

fn peer_of(peers: &HashMap<u64, String>, connection_id: u64) -> String {
    peers
        .get(&connection_id)
        .cloned()
        .unwrap_or_else(|| "unknown".into())
}

/// Follows one request's updates and counts the payload bytes it sent.
/// Returns true if the transfer was aborted before it completed.
async fn count_transfer(
    mut updates: irpc::channel::mpsc::Receiver<RequestUpdate>,
    traffic: &Traffic,
    peer: &str,
    request_hash: iroh_blobs::Hash,
    cancel: &CancellationToken,
) -> bool {
    let mut current = request_hash;
    loop {
        let update = tokio::select! {
            _ = cancel.cancelled() => return true,
            u = updates.recv() => u,
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
        count_transfer(updates, &traffic, &peer, request_hash, &cancel).await;
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
