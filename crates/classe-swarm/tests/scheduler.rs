//! Scheduler behaviour: unit cases and properties over random event
//! sequences.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use classe_swarm::{Action, BitSet, Config, Event, FailReason, Layout, Scheduler};
use proptest::prelude::*;

const KB: u64 = 1024;

fn layout(pieces: u64) -> Layout {
    Layout::new(&[pieces * 256 * KB], 256 * KB)
}

fn sched(pieces: u64) -> Scheduler<u32> {
    Scheduler::new(
        layout(pieces),
        BitSet::new(pieces as u32),
        Config::default(),
        7,
    )
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn requests(actions: &[Action<u32>]) -> Vec<(u32, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request(p, i) => Some((*p, *i)),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_is_requested_from_a_peer_without_pieces() {
    let mut s = sched(10);
    s.handle(ms(0), Event::PeerJoined(1));
    assert!(s.poll(ms(0)).is_empty());
    s.handle(ms(0), Event::Have(1, 3));
    assert_eq!(requests(&s.poll(ms(1))), [(1, 3)]);
}

#[test]
fn rarest_piece_is_chosen_after_the_random_start() {
    let mut s = sched(20);
    for p in 1..=3 {
        s.handle(ms(0), Event::PeerJoined(p));
        s.handle(ms(0), Event::HaveAll(p));
    }
    // Finish the random phase with pieces from peer 1.
    let mut got = 0;
    while got < Config::default().random_first {
        for (p, i) in requests(&s.poll(ms(0))) {
            if got < Config::default().random_first {
                s.handle(ms(5), Event::Received(p, i));
                got += 1;
            } else {
                s.handle(ms(5), Event::Failed(p, i, FailReason::Error));
            }
        }
    }
    // Drain in-flight requests so they do not hide pieces.
    let mut s2 = Scheduler::new(layout(20), s.have().clone(), Config::default(), 1);
    for p in 1..=3 {
        s2.handle(ms(0), Event::PeerJoined(p));
        s2.handle(ms(0), Event::HaveAll(p));
    }
    // Piece 17 is only at peer 4: it is rarest, so peer 4 is asked for it
    // and nothing else it has in common with others is preferred.
    s2.handle(ms(0), Event::PeerJoined(4));
    let mut only17 = BitSet::new(20);
    only17.insert(17);
    s2.handle(ms(0), Event::HaveSet(4, only17));
    let reqs = requests(&s2.poll(ms(10)));
    assert!(reqs.contains(&(4, 17)), "{reqs:?}");
    // Make 5 rarer than the rest: remove it from peers 2 and 3.
    let mut not5 = BitSet::full(20);
    not5.remove(5);
    s2.handle(ms(10), Event::HaveSet(2, not5.clone()));
    s2.handle(ms(10), Event::HaveSet(3, not5));
    assert_eq!(s2.availability(5), 1);
}

#[test]
fn a_dropped_peers_requests_go_to_another_peer() {
    let mut s = sched(6);
    s.handle(ms(0), Event::PeerJoined(1));
    s.handle(ms(0), Event::HaveAll(1));
    let first: BTreeSet<u32> = requests(&s.poll(ms(0)))
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    assert!(!first.is_empty());
    s.handle(ms(0), Event::PeerJoined(2));
    s.handle(ms(0), Event::HaveAll(2));
    s.handle(
        ms(1),
        Event::Failed(1, *first.iter().next().unwrap(), FailReason::Corrupt),
    );
    let actions = s.poll(ms(2));
    assert!(actions.iter().any(|a| matches!(a, Action::DropPeer(1, _))));
    assert!(s.is_dropped(&1));
    // Peer 2 is asked for them as its pipeline allows.
    let mut again = BTreeSet::new();
    let mut pending = requests(&actions);
    let mut t = 2;
    while let Some((p, i)) = pending.pop() {
        assert_eq!(p, 2);
        again.insert(i);
        t += 1;
        s.handle(ms(t), Event::Received(p, i));
        pending.extend(requests(&s.poll(ms(t))));
    }
    assert!(s.is_complete());
    assert!(
        first.is_subset(&again),
        "{first:?} not re-issued in {again:?}"
    );
    // A dropped peer is not used again even if it rejoins.
    s.handle(ms(3), Event::PeerJoined(1));
    s.handle(ms(3), Event::HaveAll(1));
    assert!(requests(&s.poll(ms(4))).iter().all(|(p, _)| *p != 1));
}

#[test]
fn requests_time_out_and_slow_peers_are_dropped() {
    let mut s = sched(4);
    s.handle(ms(0), Event::PeerJoined(1));
    s.handle(ms(0), Event::HaveAll(1));
    let reqs = requests(&s.poll(ms(0)));
    assert_eq!(reqs.len(), Config::default().min_pipeline);
    let deadline = s.next_deadline().unwrap();
    assert_eq!(deadline, Config::default().min_request_timeout);
    // Past the deadline: cancelled, failed, and after max_failures, dropped.
    let mut dropped = false;
    let mut t = 0;
    for _ in 0..10 {
        t += 121_000;
        let actions = s.poll(ms(t));
        dropped |= actions.iter().any(|a| matches!(a, Action::DropPeer(1, _)));
    }
    assert!(dropped);
    assert_eq!(s.total_in_flight(), 0);
}

#[test]
fn endgame_duplicates_the_last_pieces_and_cancels_the_losers() {
    let mut s = sched(1);
    for p in 1..=3 {
        s.handle(ms(0), Event::PeerJoined(p));
        s.handle(ms(0), Event::HaveAll(p));
    }
    let reqs = requests(&s.poll(ms(0)));
    // One piece: asked of endgame_copies peers at once.
    assert_eq!(
        reqs.len(),
        Config::default().endgame_copies as usize,
        "{reqs:?}"
    );
    let (winner, piece) = reqs[0];
    s.handle(ms(10), Event::Received(winner, piece));
    let actions = s.poll(ms(10));
    let cancels: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::Cancel(..)))
        .collect();
    assert_eq!(cancels, [&Action::Cancel(reqs[1].0, piece)]);
    assert!(s.is_complete());
}

#[test]
fn pipeline_grows_with_the_measured_rate() {
    let (max_in_flight, rate) = fast_peer(false, true);
    assert!((60e6..=140e6).contains(&rate), "{rate}");
    // 0.5 s of 100 MB/s is about 190 pieces: capped at max_pipeline in a
    // swarm (a second peer is connected, with nothing to give yet).
    assert_eq!(max_in_flight, Config::default().max_pipeline);
    // Alone, the source gets what its rate needs, up to alone_max_pipeline.
    let (alone, _) = fast_peer(false, false);
    assert!((150..=260).contains(&alone), "{alone}");
}

/// Runs one fast peer (a 100 MB/s link serving requests in order) to
/// completion, `relayed` or not, with a second connected peer that has
/// nothing (`company`) or alone: the most requests it ever had in flight,
/// and its measured rate.
fn fast_peer(relayed: bool, company: bool) -> (usize, f64) {
    let mut s = sched(400);
    s.handle(ms(0), Event::PeerJoined(1));
    s.handle(ms(0), Event::HaveAll(1));
    if company {
        s.handle(ms(0), Event::PeerJoined(2));
    }
    s.handle(ms(0), Event::Relayed(1, relayed));
    assert_eq!(s.is_relayed(&1), relayed);
    let per_piece = Duration::from_secs_f64(256.0 * 1024.0 / 100e6);
    let mut queue: std::collections::VecDeque<(Duration, u32)> = Default::default();
    let mut link_free = Duration::ZERO;
    let mut now = Duration::ZERO;
    let mut max_in_flight = 0;
    for _ in 0..2_000 {
        for (_, i) in requests(&s.poll(now)) {
            link_free = link_free.max(now) + per_piece;
            queue.push_back((link_free, i));
        }
        max_in_flight = max_in_flight.max(s.in_flight(&1));
        let Some((done, i)) = queue.pop_front() else {
            break;
        };
        now = done;
        s.handle(now, Event::Received(1, i));
    }
    assert!(s.is_complete());
    (max_in_flight, s.rate(&1).unwrap())
}

#[test]
fn a_relayed_peer_gets_a_short_pipeline_and_a_direct_one_the_full_one() {
    for company in [true, false] {
        assert_eq!(fast_peer(true, company).0, Config::default().relay_pipeline);
    }
    assert_eq!(fast_peer(false, true).0, Config::default().max_pipeline);
}

#[test]
fn refused_pieces_are_asked_elsewhere_without_blaming_the_peer() {
    let mut s = sched(2);
    s.handle(ms(0), Event::PeerJoined(1));
    s.handle(ms(0), Event::HaveAll(1));
    for _ in 0..20 {
        for (p, i) in requests(&s.poll(ms(0))) {
            s.handle(ms(0), Event::Failed(p, i, FailReason::Refused));
        }
    }
    assert!(!s.is_dropped(&1), "refusals are not failures");
    // After the backoff it is asked again.
    assert!(!requests(&s.poll(ms(2000))).is_empty());
}

/// Random event sequences against a simple model of what must hold.
#[derive(Debug, Clone)]
enum Step {
    Join(u32, Vec<bool>),
    Leave(u32),
    Deliver(usize),
    Fail(usize, u8),
    Advance(u64),
}

fn step(pieces: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u32..5, proptest::collection::vec(any::<bool>(), pieces))
            .prop_map(|(p, h)| Step::Join(p, h)),
        (0u32..5).prop_map(Step::Leave),
        (0usize..64).prop_map(Step::Deliver),
        (0usize..64, 0u8..4).prop_map(|(i, r)| Step::Fail(i, r)),
        (0u64..15_000).prop_map(Step::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Outside endgame no piece is requested twice; every request is for a
    /// piece the peer has and we lack; in-flight bookkeeping matches.
    #[test]
    fn requests_are_sound(steps in proptest::collection::vec(step(12), 1..80), seed in any::<u64>()) {
        let n = 12u32;
        let mut s = Scheduler::new(layout(n as u64), BitSet::new(n), Config::default(), seed);
        let mut now = Duration::ZERO;
        let mut outstanding: BTreeMap<(u32, u32), ()> = BTreeMap::new();
        let mut has: BTreeMap<u32, Vec<bool>> = BTreeMap::new();
        for st in steps {
            match st {
                Step::Join(p, h) => {
                    if s.is_dropped(&p) { continue; }
                    s.handle(now, Event::PeerJoined(p));
                    let mut set = BitSet::new(n);
                    for (i, b) in h.iter().enumerate() { if *b { set.insert(i as u32); } }
                    s.handle(now, Event::HaveSet(p, set));
                    has.insert(p, h);
                }
                Step::Leave(p) => {
                    s.handle(now, Event::PeerLeft(p));
                    outstanding.retain(|(q, _), _| *q != p);
                    has.remove(&p);
                }
                Step::Deliver(k) => {
                    if let Some(&(p, i)) = outstanding.keys().nth(k % outstanding.len().max(1)) {
                        s.handle(now, Event::Received(p, i));
                        outstanding.remove(&(p, i));
                    }
                }
                Step::Fail(k, r) => {
                    if let Some(&(p, i)) = outstanding.keys().nth(k % outstanding.len().max(1)) {
                        let reason = [FailReason::Timeout, FailReason::Refused, FailReason::Corrupt, FailReason::Error][r as usize];
                        s.handle(now, Event::Failed(p, i, reason));
                        outstanding.remove(&(p, i));
                    }
                }
                Step::Advance(d) => now += Duration::from_millis(d),
            }
            for a in s.poll(now) {
                match a {
                    Action::Request(p, i) => {
                        prop_assert!(!s.have().contains(i), "requested a piece we have");
                        prop_assert!(has.get(&p).is_some_and(|h| h[i as usize]), "peer {p} lacks {i}");
                        prop_assert!(!outstanding.contains_key(&(p, i)), "same request twice");
                        let dup = outstanding.keys().any(|(_, j)| *j == i);
                        let requested: BTreeSet<u32> = outstanding.keys().map(|(_, j)| *j).collect();
                        let endgame = (0..n).all(|j| s.have().contains(j) || requested.contains(&j));
                        prop_assert!(!dup || endgame, "duplicate request for {} outside endgame", i);
                        outstanding.insert((p, i), ());
                    }
                    Action::Cancel(p, i) => { outstanding.remove(&(p, i)); }
                    Action::DropPeer(p, _) => {
                        outstanding.retain(|(q, _), _| *q != p);
                        has.remove(&p);
                    }
                }
            }
            prop_assert_eq!(s.total_in_flight(), outstanding.len());
        }
    }

    /// With honest peers that deliver everything asked, every piece is
    /// eventually requested and the download completes.
    #[test]
    fn every_piece_is_eventually_fetched(pieces in 1u64..60, peers in 1u32..6, seed in any::<u64>()) {
        let mut s = Scheduler::new(layout(pieces), BitSet::new(pieces as u32), Config::default(), seed);
        for p in 0..peers {
            s.handle(Duration::ZERO, Event::PeerJoined(p));
            s.handle(Duration::ZERO, Event::HaveAll(p));
        }
        let mut now = Duration::ZERO;
        let mut queue = Vec::new();
        for _ in 0..10_000 {
            for a in s.poll(now) {
                if let Action::Request(p, i) = a { queue.push((p, i)); }
            }
            if let Some((p, i)) = queue.pop() {
                now += Duration::from_millis(3);
                s.handle(now, Event::Received(p, i));
            } else {
                break;
            }
        }
        prop_assert!(s.is_complete());
    }
}

#[test]
fn a_classmate_who_finished_is_not_spared_like_the_teacher() {
    let mut s = sched(10);
    // Peer 1 had everything when we met it: the teacher.
    s.handle(ms(0), Event::PeerJoined(1));
    s.handle(ms(0), Event::HaveAll(1));
    // Peer 2 finished while we watched, piece by piece.
    s.handle(ms(0), Event::PeerJoined(2));
    for i in 0..10 {
        s.handle(ms(0), Event::Have(2, i));
    }
    let asked = requests(&s.poll(ms(1)));
    assert!(
        asked.iter().all(|(p, _)| *p == 2),
        "the teacher is asked only for what no classmate has: {asked:?}"
    );
    assert!(!asked.is_empty());
    // A peer whose first word is "everything" (met after it finished)
    // counts as a seed.
    let mut late = sched(10);
    late.handle(ms(0), Event::PeerJoined(1));
    late.handle(ms(0), Event::HaveAll(1));
    late.handle(ms(0), Event::PeerJoined(3));
    late.handle(ms(0), Event::Have(3, 4));
    let asked = requests(&late.poll(ms(1)));
    assert!(asked.contains(&(3, 4)));
    assert!(!asked.contains(&(1, 4)), "piece 4 is at a classmate");
}

/// One round: polls, notes the largest number of requests in flight at
/// any peer, then delivers everything just asked, one piece per ms.
fn round(s: &mut Scheduler<u32>, now: &mut Duration, peers: &[u32]) -> usize {
    let asked = requests(&s.poll(*now));
    let most = peers.iter().map(|p| s.in_flight(p)).max().unwrap_or(0);
    for (p, i) in asked {
        *now += ms(1);
        s.handle(*now, Event::Received(p, i));
    }
    most
}

#[test]
fn a_fast_lone_source_gets_long_runs_and_two_sources_do_not() {
    // 2000 pieces of 256 KiB; pieces arrive 1 ms apart (256 MB/s).
    let mut lone = sched(2000);
    lone.handle(ms(0), Event::PeerJoined(1));
    lone.handle(ms(0), Event::HaveAll(1));
    let mut now = ms(0);
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(round(&mut lone, &mut now, &[1]));
    }
    // 256 MB/s × 500 ms = 488 pieces: far beyond the 32 of a swarm peer.
    let cap = Config::default().max_pipeline;
    assert!(
        most > 4 * cap,
        "a lone fast source had at most {most} in flight"
    );

    let mut two = sched(2000);
    for p in [1, 2] {
        two.handle(ms(0), Event::PeerJoined(p));
        two.handle(ms(0), Event::HaveAll(p));
    }
    let mut now = ms(0);
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(round(&mut two, &mut now, &[1, 2]));
    }
    assert!(most <= cap, "with two sources one had {most} in flight");
}
