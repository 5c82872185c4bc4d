//! Our own announcements: into the book and the catch-up record, and
//! published on the author's topic, again on each tick while nobody
//! subscribes yet.

use std::time::{Duration, Instant};

use classe_bundle::{AuthorKey, SignedAnnouncement};
use libp2p::gossipsub;

use super::{State, MAX_PENDING};
use crate::behaviour;

/// How long an announcement is retried while nobody subscribes.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);

pub(super) struct Publication {
    pub(super) author: AuthorKey,
    pub(super) bytes: Vec<u8>,
    pub(super) until: Instant,
}

impl State {
    pub(super) fn announce(&mut self, announcement: SignedAnnouncement) {
        let author = announcement.announcement().author;
        self.own.insert(author);
        self.book.offer(announcement.clone());
        for p in announcement.announcement().providers.clone() {
            self.add_peer(&p);
        }
        self.put_record(author);
        self.publish(author, announcement.to_bytes());
    }

    /// Publishes `bytes` on `author`'s topic, retried for
    /// `PUBLISH_PATIENCE` while nobody subscribes.
    pub(super) fn publish(&mut self, author: AuthorKey, bytes: Vec<u8>) {
        if self.publications.len() < MAX_PENDING {
            self.publications.push(Publication {
                author,
                bytes,
                until: Instant::now() + PUBLISH_PATIENCE,
            });
        }
        self.publish_pending();
    }

    pub(super) fn publish_pending(&mut self) {
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
}
