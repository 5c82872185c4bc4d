//! The provider side: what happens when peers fetch from us.
//!
//! iroh-blobs reports connections and requests through an event channel.
//! One task consumes it to
//! - refuse connections beyond `max_connections` (bounded serving),
//! - pace uploads to `max_upload` bytes per second over all peers, by
//!   delaying each 16 KiB chunk group on a shared virtual clock (so the cap
//!   holds over time, not per request),
//! - count the payload bytes sent to each peer and for each bundle.

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

use crate::{traffic::Traffic, NodeConfig};

/// Event channel capacity. The provider waits when it is full, which is
/// the back-pressure we want rather than unbounded memory.
const EVENT_CAPACITY: usize = 256;

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
    config: &NodeConfig,
    cancel: CancellationToken,
) -> (EventSender, tokio::task::JoinHandle<()>) {
    let mask = EventMask {
        connected: ConnectMode::Intercept,
        get: RequestMode::NotifyLog,
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
    let task = tokio::spawn(run(rx, traffic, config.max_connections, pacer, cancel));
    (sender, task)
}

async fn run(
    mut rx: tokio::sync::mpsc::Receiver<ProviderMessage>,
    traffic: Arc<Traffic>,
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
            ProviderMessage::GetRequestReceivedNotify(msg) => {
                let peer = peer_of(&peers, msg.inner.connection_id);
                let hash = msg.inner.request.hash;
                spawn_counter(msg.rx, traffic.clone(), peer, hash, cancel.clone());
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
/// Progress events carry the end offset within the current blob; the
/// final stats carry the exact payload count, which replaces the estimate.
fn spawn_counter(
    mut updates: irpc::channel::mpsc::Receiver<RequestUpdate>,
    traffic: Arc<Traffic>,
    peer: String,
    request_hash: iroh_blobs::Hash,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut current = request_hash;
        loop {
            let update = tokio::select! {
                _ = cancel.cancelled() => break,
                u = updates.recv() => u,
            };
            match update {
                Ok(Some(RequestUpdate::Started(s))) => current = s.hash,
                Ok(Some(RequestUpdate::Completed(c))) => {
                    traffic.add_sent(&peer, &[current, request_hash], c.stats.payload_bytes_sent);
                    break;
                }
                Ok(Some(RequestUpdate::Aborted(a))) => {
                    traffic.add_sent(&peer, &[current, request_hash], a.stats.payload_bytes_sent);
                    break;
                }
                Ok(Some(RequestUpdate::Progress(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
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
