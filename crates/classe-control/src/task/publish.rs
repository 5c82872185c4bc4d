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
    pub(super) topic: gossipsub::IdentTopic,
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
        self.publish_on(behaviour::topic(&author), bytes);
    }

    /// Publishes `bytes` on `topic`, retried for `PUBLISH_PATIENCE` while
    /// nobody subscribes.
    pub(super) fn publish_on(&mut self, topic: gossipsub::IdentTopic, bytes: Vec<u8>) {
        if self.publications.len() < MAX_PENDING {
            self.publications.push(Publication {
                topic,
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
            match self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(p.topic.clone(), p.bytes.clone())
            {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => {
                    tracing::info!(topic = %p.topic, "published");
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
