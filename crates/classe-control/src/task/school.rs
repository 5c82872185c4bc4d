//! Schools: their gossip topic (bulletins, certified teachers'
//! announcements) and their DHT record (the newest bulletin). Everything
//! is checked against the school's identity before it is passed on,
//! stored or reported; a bulletin is kept only if it is newer than the one
//! held, so a replayed older revocation list goes nowhere.

use std::sync::atomic::Ordering;

use classe_bundle::{
    school::{Bulletin, SchoolMsg},
    AuthorKey, SignedAnnouncement,
};
use libp2p::{gossipsub, kad, kad::store::RecordStore, PeerId};

use super::{State, MAX_PENDING};
use crate::{behaviour, ControlEvent};

impl State {
    pub(super) fn follow_school(&mut self, school: AuthorKey) {
        if self.schools.contains_key(&school) {
            return;
        }
        let topic = behaviour::school_topic(&school);
        self.school_topics.insert(topic.hash(), school);
        self.schools.insert(school, Bulletin::default());
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&topic) {
            tracing::warn!("cannot subscribe to school {school}: {e}");
        }
        self.catch_up_school(school);
    }

    pub(super) fn catch_up_school(&mut self, school: AuthorKey) {
        if self.catch_ups.len() >= MAX_PENDING {
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(behaviour::school_record_key(&school));
        self.catch_ups.insert(id);
        if self.connections > 0 {
            self.school_queries.insert(id, school);
        }
    }

    /// A school record read is over (found or not): reported, so that a
    /// fetch waiting for the school's newest word goes on.
    pub(super) fn school_query_done(&mut self, id: kad::QueryId) {
        if let Some(school) = self.school_queries.remove(&id) {
            self.emit(ControlEvent::SchoolChecked { school });
        }
    }

    /// Our own bulletin (the school's seed node): kept, stored in the DHT
    /// and published on the school's topic.
    pub(super) fn publish_bulletin(&mut self, school: AuthorKey, bulletin: Bulletin) {
        if bulletin.verify(school).is_err() {
            tracing::warn!(%school, "own bulletin does not verify; not published");
            return;
        }
        self.follow_school(school);
        self.keep_bulletin(school, bulletin.clone());
        let record = kad::Record::new(behaviour::school_record_key(&school), bulletin.to_bytes());
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, kad::Quorum::One)
        {
            tracing::warn!("cannot store the school bulletin: {e}");
        }
        self.publish_on(
            behaviour::school_topic(&school),
            SchoolMsg::Bulletin(bulletin).to_bytes(),
        );
    }

    /// A certified teacher's announcement, on the school's topic (sent by
    /// the teacher's own node).
    pub(super) fn publish_certified(&mut self, school: AuthorKey, msg: SchoolMsg) {
        self.publish_on(behaviour::school_topic(&school), msg.to_bytes());
    }

    /// Keeps `bulletin` (verified) if it brings anything newer. Returns
    /// whether it did.
    fn keep_bulletin(&mut self, school: AuthorKey, bulletin: Bulletin) -> bool {
        let held = self.schools.entry(school).or_default();
        if !bulletin.newer_than(held) {
            return false;
        }
        held.merge(bulletin);
        true
    }

    /// A bulletin from the network: verified, kept if newer, reported.
    fn offer_bulletin(
        &mut self,
        school: AuthorKey,
        bulletin: Bulletin,
        via: &'static str,
        from: Option<PeerId>,
    ) -> bool {
        if let Err(e) = bulletin.verify(school) {
            self.counters.bad_records.fetch_add(1, Ordering::Relaxed);
            self.ignore(format!("school bulletin refused: {e}"), from);
            return false;
        }
        if !self.keep_bulletin(school, bulletin.clone()) {
            return false;
        }
        tracing::info!(%school, via, "newer school bulletin");
        self.emit(ControlEvent::SchoolBulletin {
            school,
            bulletin: Box::new(bulletin),
            via,
        });
        true
    }

    /// A message on a school topic. Returns the gossip verdict.
    pub(super) fn school_gossip(
        &mut self,
        school: AuthorKey,
        data: &[u8],
        from: PeerId,
    ) -> gossipsub::MessageAcceptance {
        let msg = match SchoolMsg::from_bytes(data) {
            Ok(m) => m,
            Err(e) => {
                self.counters
                    .bad_announcements
                    .fetch_add(1, Ordering::Relaxed);
                self.ignore(format!("school message refused: {e}"), Some(from));
                return gossipsub::MessageAcceptance::Reject;
            }
        };
        match msg {
            SchoolMsg::Bulletin(b) => {
                if self.offer_bulletin(school, b, "gossip", Some(from)) {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    gossipsub::MessageAcceptance::Ignore
                }
            }
            SchoolMsg::Announce {
                credentials,
                announcement,
            } => self.certified_announcement(school, credentials, &announcement, from),
        }
    }

    /// A teacher's announcement with their certificate: passed on and
    /// reported when the certificate is this school's (its chain checks
    /// from the identity) and names the announcement's signer. Dates,
    /// roles and revocations are the node's to check.
    fn certified_announcement(
        &mut self,
        school: AuthorKey,
        credentials: classe_bundle::school::Credentials,
        announcement: &[u8],
        from: PeerId,
    ) -> gossipsub::MessageAcceptance {
        let announcement = match SignedAnnouncement::from_bytes(announcement) {
            Ok(a) => a,
            Err(e) => {
                self.counters
                    .bad_announcements
                    .fetch_add(1, Ordering::Relaxed);
                self.ignore(format!("announcement refused: {e}"), Some(from));
                return gossipsub::MessageAcceptance::Reject;
            }
        };
        let cert = &credentials.cert.cert;
        let valid = cert.school == school
            && cert.subject == announcement.announcement().author
            && credentials.verify().is_ok();
        if !valid {
            self.counters
                .bad_announcements
                .fetch_add(1, Ordering::Relaxed);
            self.ignore(
                "announcement on a school topic without a valid certificate of that school".into(),
                Some(from),
            );
            return gossipsub::MessageAcceptance::Reject;
        }
        self.emit(ControlEvent::Certified {
            school,
            credentials: Box::new(credentials),
            announcement,
        });
        gossipsub::MessageAcceptance::Accept
    }

    /// A school record from a DHT lookup.
    pub(super) fn school_record_found(&mut self, record: &kad::Record, from: Option<PeerId>) {
        let Some(school) = behaviour::record_school(&record.key) else {
            return;
        };
        if !self.schools.contains_key(&school) {
            return;
        }
        match Bulletin::from_bytes(&record.value) {
            Ok(b) => {
                self.offer_bulletin(school, b, "dht", from);
            }
            Err(e) => {
                self.counters.bad_records.fetch_add(1, Ordering::Relaxed);
                self.ignore(format!("school record refused: {e}"), from);
            }
        }
    }

    /// Someone asks us to store a school record: only a bulletin that
    /// verifies against the school its key names, merged with the one
    /// held (newest list, newest statement, longest chain).
    pub(super) fn inbound_school_record(&mut self, record: kad::Record, source: PeerId) -> bool {
        let Some(school) = behaviour::record_school(&record.key) else {
            return false;
        };
        let offered = match Bulletin::from_bytes(&record.value) {
            Ok(b) if b.verify(school).is_ok() => b,
            _ => {
                self.counters.bad_records.fetch_add(1, Ordering::Relaxed);
                self.ignore("school record refused".into(), Some(source));
                return true;
            }
        };
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let mut merged = store
            .get(&record.key)
            .and_then(|r| Bulletin::from_bytes(&r.value).ok())
            .filter(|b| b.verify(school).is_ok())
            .unwrap_or_default();
        merged.merge(offered.clone());
        let mut stored = kad::Record::new(record.key.clone(), merged.to_bytes());
        stored.expires = record.expires;
        stored.publisher = record.publisher;
        if let Err(e) = store.put(stored) {
            tracing::debug!("school record not stored: {e}");
        }
        if self.schools.contains_key(&school) {
            self.offer_bulletin(school, offered, "dht", Some(source));
        }
        true
    }

    /// Writes the school records we hold bulletins for again (with the
    /// catch-up records' republishing).
    pub(super) fn republish_schools(&mut self) {
        let held: Vec<(AuthorKey, Bulletin)> = self
            .schools
            .iter()
            .filter(|(_, b)| **b != Bulletin::default())
            .map(|(s, b)| (*s, b.clone()))
            .collect();
        for (school, bulletin) in held {
            let record =
                kad::Record::new(behaviour::school_record_key(&school), bulletin.to_bytes());
            let _ = self
                .swarm
                .behaviour_mut()
                .kad
                .put_record(record, kad::Quorum::One);
        }
    }
}
