//! The DHT: provider lookups (answered once every provider found has
//! told us its data addresses, or at their deadline) and the authors'
//! catch-up records (written from the book, read when following,
//! checked and merged when someone stores one with us).

use std::{
    collections::HashSet,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use classe_bundle::{
    announce::{decode_record, encode_record},
    AuthorKey, Book, ProviderInfo,
};
use libp2p::kad::store::RecordStore;
use libp2p::{kad, swarm::dial_opts::DialOpts, PeerId};
use tokio::sync::oneshot;

use super::{State, MAX_PENDING};
use crate::{behaviour, ids};

/// Most providers one lookup dials or returns.
const MAX_PROVIDERS_PER_LOOKUP: usize = 20;
/// How often catch-up records we hold announcements for are written again.
const REPUBLISH_EVERY: Duration = Duration::from_secs(10 * 60);

pub(super) struct Lookup {
    pub(super) reply: oneshot::Sender<Vec<ProviderInfo>>,
    pub(super) deadline: Instant,
    pub(super) query_done: bool,
    pub(super) waiting: HashSet<PeerId>,
    pub(super) found: Vec<ProviderInfo>,
}

impl State {
    /// Starts a provider lookup, answered on `reply` within `within`.
    pub(super) fn find_providers(
        &mut self,
        root: [u8; 32],
        within: Duration,
        reply: oneshot::Sender<Vec<ProviderInfo>>,
    ) {
        if self.lookups.len() >= MAX_PENDING {
            reply.send(Vec::new()).ok();
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_providers(behaviour::provider_key(&root));
        self.lookups.insert(
            id,
            Lookup {
                reply,
                deadline: Instant::now() + within,
                query_done: false,
                waiting: HashSet::new(),
                found: Vec::new(),
            },
        );
    }

    /// Writes `author`'s catch-up record from the book: in the local store
    /// (so this node answers for it) and to the closest peers.
    pub(super) fn put_record(&mut self, author: AuthorKey) {
        let entries = self.book.of_author(&author);
        if entries.is_empty() {
            return;
        }
        let record = kad::Record::new(behaviour::record_key(&author), encode_record(&entries));
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .put_record(record, kad::Quorum::One)
        {
            tracing::warn!("cannot store the catch-up record: {e}");
        }
    }

    pub(super) fn catch_up_one(&mut self, author: AuthorKey) {
        if self.catch_ups.len() >= MAX_PENDING {
            return;
        }
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(behaviour::record_key(&author));
        self.catch_ups.insert(id);
    }

    pub(super) fn catch_up_all(&mut self) {
        self.last_catch_up = Some(Instant::now());
        let authors: Vec<AuthorKey> = self.follow.iter().copied().collect();
        for a in authors {
            self.catch_up_one(a);
        }
        let schools: Vec<AuthorKey> = self.schools.keys().copied().collect();
        for s in schools {
            self.catch_up_school(s);
        }
        // Write the catch-up records we can vouch for (our own, and the
        // followed authors' we hold announcements of) again now and then:
        // they reach peers that joined since, and a record lives 24 h from
        // its last write, so a seed keeps a teacher's alive after the
        // teacher is gone.
        let due = self
            .last_republish
            .is_none_or(|t| t.elapsed() >= REPUBLISH_EVERY);
        if due {
            self.last_republish = Some(Instant::now());
            let mut authors: Vec<AuthorKey> = self.own.iter().copied().collect();
            authors.extend(self.follow.iter().copied());
            authors.sort();
            authors.dedup();
            for a in authors {
                self.put_record(a);
            }
            self.republish_schools();
        }
    }

    pub(super) fn finish_lookup(&mut self, id: kad::QueryId) {
        if let Some(mut lookup) = self.lookups.remove(&id) {
            // Providers that never answered our dial in time are usually at
            // home behind a router (TCP from outside dropped): the data plane
            // can still reach them by node id through the school relay.
            lookup.found.extend(lookup.waiting.iter().filter_map(by_id));
            tracing::debug!(found = lookup.found.len(), "provider lookup over");
            lookup.reply.send(lookup.found).ok();
            if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                q.finish();
            }
            for peer in lookup.waiting {
                if let Some(ids) = self.awaiting.get_mut(&peer) {
                    ids.retain(|q| *q != id);
                    if ids.is_empty() {
                        self.awaiting.remove(&peer);
                    }
                }
            }
        }
    }

    pub(super) fn maybe_finish(&mut self, id: kad::QueryId) {
        let done = self
            .lookups
            .get(&id)
            .is_some_and(|l| l.query_done && l.waiting.is_empty());
        if done {
            self.finish_lookup(id);
        }
    }

    pub(super) fn kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) => {
                    for peer in providers {
                        self.provider_found(id, peer);
                    }
                    if step.last {
                        self.query_done(id);
                    }
                }
                kad::QueryResult::GetProviders(_) => self.query_done(id),
                kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                    self.record_found(found.record, found.peer);
                    // The first copy is enough for a fetch to go on.
                    self.school_query_done(id);
                    if step.last {
                        self.catch_ups.remove(&id);
                    }
                }
                kad::QueryResult::GetRecord(_) => {
                    self.catch_ups.remove(&id);
                    self.school_query_done(id);
                }
                kad::QueryResult::PutRecord(Err(e)) => {
                    tracing::debug!("catch-up record not replicated yet: {e}");
                }
                _ => {}
            },
            kad::Event::InboundRequest { request } => match request {
                kad::InboundRequest::PutRecord {
                    source,
                    record: Some(record),
                    ..
                } => self.inbound_record(record, source),
                kad::InboundRequest::AddProvider {
                    record: Some(record),
                } => {
                    let ok = behaviour::is_provider_key(&record.key)
                        && record.addresses.len() <= 2 * classe_bundle::ticket::MAX_ADDRS;
                    if ok {
                        if let Err(e) = self
                            .swarm
                            .behaviour_mut()
                            .kad
                            .store_mut()
                            .add_provider(record)
                        {
                            tracing::debug!("provider record not stored: {e}");
                        }
                    } else {
                        self.counters
                            .bad_provider_records
                            .fetch_add(1, Ordering::Relaxed);
                        self.ignore(
                            "provider record outside classe's key space or too large".into(),
                            Some(record.provider),
                        );
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    pub(super) fn provider_found(&mut self, id: kad::QueryId, peer: PeerId) {
        if peer == self.local {
            return;
        }
        tracing::debug!(%peer, "provider found");
        let info = self.provider_info(&peer);
        let Some(lookup) = self.lookups.get_mut(&id) else {
            return;
        };
        if let Some(info) = info {
            if !lookup.found.iter().any(|f| f.node_id == info.node_id) {
                lookup.found.push(info);
            }
            return;
        }
        // A DHT node may list many providers: dial a bounded number.
        if lookup.waiting.len() + lookup.found.len() >= MAX_PROVIDERS_PER_LOOKUP {
            return;
        }
        if lookup.waiting.insert(peer) {
            self.awaiting.entry(peer).or_default().push(id);
            if !self.swarm.is_connected(&peer) {
                // The query still holds the addresses the DHT gave for it;
                // kad hands them to the dialer.
                let _ = self.swarm.dial(DialOpts::peer_id(peer).build());
            }
        }
    }

    pub(super) fn query_done(&mut self, id: kad::QueryId) {
        if let Some(l) = self.lookups.get_mut(&id) {
            l.query_done = true;
        }
        self.maybe_finish(id);
    }

    /// A catch-up record from a lookup: offer each entry to the book.
    pub(super) fn record_found(&mut self, record: kad::Record, from: Option<PeerId>) {
        if behaviour::record_school(&record.key).is_some() {
            self.school_record_found(&record, from);
            return;
        }
        let Some(author) = behaviour::record_author(&record.key) else {
            return;
        };
        match decode_record(&author, &record.value) {
            Ok(entries) => {
                for a in entries {
                    self.offer(a, "dht", from);
                }
            }
            Err(e) => {
                self.counters.bad_records.fetch_add(1, Ordering::Relaxed);
                self.ignore(format!("catch-up record refused: {e}"), from);
            }
        }
    }

    /// Someone asks us to store a record: only valid catch-up records, and
    /// merged with what we hold so one writer cannot erase another's
    /// lessons or roll a lesson back.
    pub(super) fn inbound_record(&mut self, record: kad::Record, source: PeerId) {
        if self.inbound_school_record(record.clone(), source) {
            return;
        }
        let Some(author) = behaviour::record_author(&record.key) else {
            self.counters.bad_records.fetch_add(1, Ordering::Relaxed);
            self.ignore("record outside classe's key space".into(), Some(source));
            return;
        };
        let entries = match decode_record(&author, &record.value) {
            Ok(e) => e,
            Err(e) => {
                self.counters.bad_records.fetch_add(1, Ordering::Relaxed);
                self.ignore(format!("catch-up record refused: {e}"), Some(source));
                return;
            }
        };
        let mut merged = Book::default();
        if let Some(held) = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .get(&record.key)
            .map(|r| r.into_owned())
        {
            if let Ok(old) = decode_record(&author, &held.value) {
                for a in old {
                    merged.offer(a);
                }
            }
        }
        for a in &entries {
            merged.offer(a.clone());
        }
        let value = encode_record(&merged.of_author(&author));
        let mut stored = kad::Record::new(record.key.clone(), value);
        stored.expires = record.expires;
        stored.publisher = record.publisher;
        if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(stored) {
            tracing::debug!("record not stored: {e}");
        }
        for a in entries {
            self.offer(a, "dht", Some(source));
        }
    }

    /// A provider we cannot dial over TCP is usually at home behind its
    /// router. It still holds the bundle, and the data plane can reach it
    /// by node id alone through the school relay both use: hand it out
    /// without addresses.
    pub(super) fn dial_failed(&mut self, peer: PeerId) {
        if let Some(ids) = self.awaiting.remove(&peer) {
            let by_id = by_id(&peer);
            for id in ids {
                if let Some(l) = self.lookups.get_mut(&id) {
                    l.waiting.remove(&peer);
                    l.found.extend(by_id.clone());
                }
                self.maybe_finish(id);
            }
        }
    }

    /// Answers the lookups whose time is up with what they found.
    pub(super) fn expire_lookups(&mut self) {
        let now = Instant::now();
        let expired: Vec<kad::QueryId> = self
            .lookups
            .iter()
            .filter(|(_, l)| now >= l.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.finish_lookup(id);
        }
    }
}

/// A provider known by its id alone, to be dialled through a relay.
fn by_id(peer: &PeerId) -> Option<ProviderInfo> {
    ids::node_id_of(peer).map(|node_id| ProviderInfo {
        node_id,
        addrs: Vec::new(),
        relay_url: None,
        control_port: None,
    })
}
