//! PeerBook policies: the peer cap, the DHT lookup backoff, the patience
//! of a download left alone, the stall watchdog, the backlog caps, and
//! who is dialled again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use classe_swarm::{BookAction, BookConfig, GiveUp, Lookup, PeerBook, Verdict};

/// Peers are numbers; the dial info says whether the entry is sane.
type Book = PeerBook<u32, bool>;

const ME: u32 = 0;

fn s(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

fn book(discovery: bool) -> Book {
    PeerBook::new(ME, BookConfig::default(), discovery)
}

fn sane(ok: &bool) -> bool {
    *ok
}

fn dials(actions: &[BookAction<u32, bool>]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            BookAction::Dial(p, _) => Some(*p),
            _ => None,
        })
        .collect()
}

fn lookups(actions: &[BookAction<u32, bool>]) -> Vec<Lookup> {
    actions
        .iter()
        .filter_map(|a| match a {
            BookAction::LookUp(l) => Some(*l),
            _ => None,
        })
        .collect()
}

fn peers(range: std::ops::RangeInclusive<u32>) -> Vec<(u32, bool)> {
    range.map(|p| (p, true)).collect()
}

#[test]
fn at_most_32_peers_are_connected_or_dialled() {
    let mut b = book(false);
    b.add_provider(1, true);
    b.learn(peers(2..=40), sane);
    let first = dials(&b.poll(s(0.0)));
    // The ticket's provider holds one place; the newest news goes first.
    assert_eq!(first.len(), 31);
    assert_eq!(first[0], 40);
    assert!(dials(&b.poll(s(0.1))).is_empty());
    for p in &first[..20] {
        assert!(b.connected(*p));
    }
    for p in &first[20..] {
        b.dial_failed(p);
    }
    // Eleven failed dials free eleven places: 8 providers are left.
    let second = dials(&b.poll(s(0.2)));
    assert_eq!(second.len(), 8);
    assert_eq!(b.peer_count() + b.connecting_count(), 29);
    // A peer that leaves frees its place too.
    b.learn(peers(41..=50), sane);
    for p in &second {
        b.connected(*p);
    }
    assert_eq!(dials(&b.poll(s(0.3))).len(), 3);
    assert!(dials(&b.poll(s(0.3))).is_empty());
    b.left(&first[0]);
    assert_eq!(dials(&b.poll(s(0.4))), [47]);
}

#[test]
fn the_dht_is_asked_at_2_s_then_doubling_to_30_s_from_the_end_of_each_lookup() {
    // No stall deadlines in the way of the lookup's.
    let config = BookConfig {
        stall_warn: s(1000.0),
        stall_give_up: s(1000.0),
        ..BookConfig::default()
    };
    let mut b: Book = PeerBook::new(ME, config, true);
    b.add_provider(1, true);
    assert!(lookups(&b.poll(s(0.0))).is_empty());
    assert!(lookups(&b.poll(s(1.9))).is_empty());
    assert_eq!(b.next_deadline(), Some(s(2.0)));
    assert_eq!(lookups(&b.poll(s(2.0))), [Lookup::Periodic]);
    // Nothing more while it runs, however long it takes.
    assert!(lookups(&b.poll(s(20.0))).is_empty());
    let mut end = 25.0;
    b.looked_up(s(end), Lookup::Periodic, [], sane);
    for every in [4.0, 8.0, 16.0, 30.0, 30.0] {
        assert!(
            lookups(&b.poll(s(end + every - 0.01))).is_empty(),
            "{every}"
        );
        assert_eq!(b.next_deadline(), Some(s(end + every)));
        assert_eq!(lookups(&b.poll(s(end + every))), [Lookup::Periodic]);
        end += every + 1.0;
        b.looked_up(s(end), Lookup::Periodic, [], sane);
    }
}

#[test]
fn the_dht_is_asked_only_while_fewer_than_4_peers_are_connected() {
    let mut b = book(true);
    for p in 1..=4 {
        b.add_provider(p, true);
    }
    // Due at 2 s, skipped: the pause still doubles.
    assert!(lookups(&b.poll(s(2.0))).is_empty());
    assert!(lookups(&b.poll(s(5.9))).is_empty());
    assert!(lookups(&b.poll(s(6.0))).is_empty());
    b.left(&4);
    assert!(lookups(&b.poll(s(13.9))).is_empty());
    assert_eq!(lookups(&b.poll(s(14.0))), [Lookup::Periodic]);
}

#[test]
fn without_discovery_nothing_is_looked_up() {
    let mut b = book(false);
    b.add_provider(1, true);
    assert!(lookups(&b.poll(s(2.0))).is_empty());
    assert!(lookups(&b.poll(s(100.0))).is_empty());
    b.ask_again([]);
    assert!(lookups(&b.poll(s(100.1))).is_empty());
}

#[test]
fn alone_without_discovery_gives_up_at_once() {
    let mut b = book(false);
    assert_eq!(b.check(s(0.0)), Some(Verdict::GiveUp(GiveUp::Alone)));
    let mut b = book(false);
    b.add_provider(1, true);
    assert_eq!(b.check(s(0.0)), None);
    b.left(&1);
    assert_eq!(b.check(s(0.1)), Some(Verdict::GiveUp(GiveUp::Alone)));
}

#[test]
fn alone_with_discovery_waits_15_s_for_a_provider() {
    let mut b = book(true);
    b.add_provider(1, true);
    b.left(&1);
    b.progress(s(1.0));
    assert_eq!(b.check(s(1.0)), None);
    assert_eq!(b.next_deadline(), Some(s(2.0)));
    assert_eq!(b.check(s(15.9)), Some(Verdict::Stalled(s(14.9))));
    assert_eq!(b.check(s(15.99)), None);
    assert_eq!(b.check(s(16.0)), Some(Verdict::GiveUp(GiveUp::Alone)));
}

#[test]
fn a_provider_turning_up_restarts_the_patience() {
    let mut b = book(true);
    assert_eq!(b.check(s(0.0)), None);
    // The DHT names somebody at 9 s: being dialled, we are not alone.
    b.looked_up(s(9.0), Lookup::Periodic, [(5, true)], sane);
    assert_eq!(dials(&b.poll(s(9.0))), [5]);
    b.progress(s(9.0));
    assert_eq!(b.check(s(9.0)), None);
    // Nobody answers: alone again from 12 s, not from 0.
    b.dial_failed(&5);
    assert_eq!(b.check(s(12.0)), None);
    assert_eq!(b.check(s(26.9)), Some(Verdict::Stalled(s(17.9))));
    assert_eq!(b.check(s(26.99)), None);
    assert_eq!(b.check(s(27.0)), Some(Verdict::GiveUp(GiveUp::Alone)));
}

#[test]
fn a_stall_is_reported_once_at_10_s_and_ends_the_download_at_60_s() {
    let mut b = book(false);
    b.add_provider(1, true);
    assert_eq!(b.check(s(9.9)), None);
    assert_eq!(b.check(s(10.0)), Some(Verdict::Stalled(s(10.0))));
    assert_eq!(b.check(s(11.0)), None);
    assert_eq!(b.next_deadline(), Some(s(60.0)));
    // Progress resets both.
    b.progress(s(12.0));
    assert_eq!(b.check(s(21.9)), None);
    assert_eq!(b.check(s(22.0)), Some(Verdict::Stalled(s(10.0))));
    assert_eq!(b.check(s(71.9)), None);
    assert_eq!(
        b.check(s(72.0)),
        Some(Verdict::GiveUp(GiveUp::Quiet(s(60.0))))
    );
}

#[test]
fn the_stall_timeout_is_never_shorter_than_the_warning() {
    let config = BookConfig {
        stall_give_up: s(3.0),
        ..BookConfig::default()
    };
    let mut b: Book = PeerBook::new(ME, config, false);
    b.add_provider(1, true);
    assert_eq!(b.check(s(9.0)), None);
    assert_eq!(
        b.check(s(10.0)),
        Some(Verdict::GiveUp(GiveUp::Quiet(s(10.0))))
    );
}

#[test]
fn a_stall_asks_every_known_provider_again_and_the_dht_at_once() {
    let mut b = book(true);
    b.add_provider(1, true);
    b.add_provider(2, true);
    b.learn(peers(3..=4), sane);
    assert_eq!(dials(&b.poll(s(0.0))), [4, 3]);
    b.dial_failed(&4);
    b.connected(3);
    b.left(&1);
    // Tried peers are not dialled again, whoever names them.
    b.learn(peers(1..=4), sane);
    assert!(dials(&b.poll(s(1.0))).is_empty());
    let taken = b.looked_up(s(1.0), Lookup::Again, peers(1..=5), sane);
    assert_eq!(taken, [(5, true)]);
    assert_eq!(dials(&b.poll(s(1.0))), [5]);
    b.dial_failed(&5);
    assert_eq!(b.check(s(10.0)), Some(Verdict::Stalled(s(10.0))));
    // Until a stall: the ticket's providers and the ones remembered, but
    // not those still connected (2, 3).
    b.ask_again(peers(3..=4));
    assert!(!b.is_tried(&1) && !b.is_tried(&4) && b.is_tried(&2) && b.is_tried(&ME));
    let actions = b.poll(s(10.0));
    assert_eq!(dials(&actions), [4, 1]);
    // The periodic lookup (due since 2 s) runs beside it.
    assert_eq!(lookups(&actions), [Lookup::Again, Lookup::Periodic]);
    // The stall's lookup does not time the periodic one; its own end does.
    b.looked_up(s(11.0), Lookup::Again, [], sane);
    assert!(lookups(&b.poll(s(20.0))).is_empty());
    b.looked_up(s(20.0), Lookup::Periodic, [], sane);
    assert!(lookups(&b.poll(s(23.9))).is_empty());
    assert_eq!(lookups(&b.poll(s(24.0))), [Lookup::Periodic]);
}

#[test]
fn one_message_is_read_up_to_64_providers_and_the_backlog_holds_256() {
    let mut b = book(false);
    // Ourselves and an insane entry count against the 64 and are skipped.
    let mut learned = vec![(ME, true), (1, false)];
    learned.extend(peers(2..=100));
    let taken = b.learn(learned, sane);
    assert_eq!(taken.len(), 62);
    assert_eq!(taken.last(), Some(&(63, true)));
    assert_eq!(b.backlog_len(), 62);
    for round in 0..10 {
        let base = 1000 + round * 100;
        // Still remembered when the backlog is full.
        assert_eq!(b.learn(peers(base..=base + 63), sane).len(), 64);
    }
    assert_eq!(b.backlog_len(), 256);
    b.remembered(peers(5000..=5010));
    b.ask_again(peers(6000..=6010));
    assert_eq!(b.backlog_len(), 256);
    // The first 256 learned are kept (62 + 3 x 64 + 2), and dialled last
    // in, first out.
    let first = dials(&b.poll(s(0.0)));
    assert_eq!(first[..3], [1301, 1300, 1263]);
}

#[test]
fn a_dropped_peer_is_not_dialled_again_even_after_a_stall() {
    let mut b = book(true);
    b.add_provider(1, true);
    b.learn(peers(2..=3), sane);
    assert_eq!(dials(&b.poll(s(0.0))), [3, 2]);
    b.connected(2);
    b.connected(3);
    // The scheduler drops 3 (bytes that failed their hashes); 2 just left.
    b.dropped(&3);
    b.left(&2);
    assert_eq!(b.check(s(10.0)), Some(Verdict::Stalled(s(10.0))));
    b.ask_again(peers(2..=3));
    // 2 comes back after the stall; 3 never does, whoever names it.
    assert_eq!(dials(&b.poll(s(10.0))), [2]);
    assert!(b.is_tried(&3));
    b.learn(peers(3..=3), sane);
    let taken = b.looked_up(s(11.0), Lookup::Again, peers(3..=3), sane);
    assert!(taken.is_empty(), "{taken:?}");
    assert!(dials(&b.poll(s(11.0))).is_empty());
}
