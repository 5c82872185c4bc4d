//! Announcements from the network: the authors we follow (their gossip
//! topics), each message checked and offered to the book, newer ones
//! reported to the node.

use std::sync::atomic::Ordering;

use classe_bundle::{AuthorKey, Offer, SignedAnnouncement};
use libp2p::{gossipsub, PeerId};

use super::State;
use crate::{behaviour, ControlEvent};

impl State {
    pub(super) fn follow(&mut self, author: AuthorKey) {
        if self.follow.insert(author) {
            if let Err(e) = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&behaviour::topic(&author))
            {
                tracing::warn!("cannot subscribe to {author}: {e}");
            }
            self.catch_up_one(author);
        }
    }

    /// A verified announcement from the network: kept and reported if it
    /// is by a followed author and newer than what we know.
    pub(super) fn offer(
        &mut self,
        a: SignedAnnouncement,
        via: &'static str,
        from: Option<PeerId>,
    ) -> bool {
        let author = a.announcement().author;
        if !self.follow.contains(&author) {
            return false;
        }
        match self.book.offer(a.clone()) {
            Offer::Newer => {
                tracing::info!(
                    %author,
                    version = a.announcement().version,
                    via,
                    "new announcement"
                );
                for p in &a.announcement().providers {
                    self.add_peer(p);
                }
                self.emit(ControlEvent::Announced {
                    announcement: a,
                    via,
                });
                true
            }
            Offer::Known => false,
            Offer::Stale => {
                self.counters
                    .stale_announcements
                    .fetch_add(1, Ordering::Relaxed);
                self.ignore(
                    format!(
                        "announcement of version {} is older than the one known",
                        a.announcement().version
                    ),
                    from,
                );
                false
            }
        }
    }

    pub(super) fn gossip_event(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        else {
            return;
        };
        let from = message.source.unwrap_or(propagation_source);
        if let Some(school) = self.school_topics.get(&message.topic).copied() {
            let verdict = self.school_gossip(school, &message.data, from);
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(&message_id, &propagation_source, verdict);
            return;
        }
        let verdict = match SignedAnnouncement::from_bytes(&message.data) {
            Err(e) => {
                self.counters
                    .bad_announcements
                    .fetch_add(1, Ordering::Relaxed);
                self.ignore(format!("announcement refused: {e}"), Some(from));
                gossipsub::MessageAcceptance::Reject
            }
            Ok(a) if behaviour::topic(&a.announcement().author).hash() != message.topic => {
                self.counters
                    .bad_announcements
                    .fetch_add(1, Ordering::Relaxed);
                self.ignore("announcement on another author's topic".into(), Some(from));
                gossipsub::MessageAcceptance::Reject
            }
            Ok(a) if !self.follow.contains(&a.announcement().author) => {
                self.counters
                    .bad_announcements
                    .fetch_add(1, Ordering::Relaxed);
                self.ignore("announcement by an author not followed".into(), Some(from));
                gossipsub::MessageAcceptance::Ignore
            }
            Ok(a) => {
                if self.offer(a, "gossip", Some(from)) {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    // Known or stale: do not pass it on.
                    gossipsub::MessageAcceptance::Ignore
                }
            }
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&message_id, &propagation_source, verdict);
    }
}
