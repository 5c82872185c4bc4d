//! The seed's side: no piece sent again while it is on its way or just left.
//!
//! A teacher's uplink is the scarcest link in the class. If thirty pupils
//! ask it for the same first pieces, it spends its bandwidth on copies the
//! pupils could have passed among themselves. [`SeedPolicy`] declines a
//! request for a piece already on its way to someone, or sent less than
//! [`RESEND_AFTER`] ago; the pupil then asks a classmate for it, or the
//! seed for a piece nobody has yet. This is the idea behind BitTorrent's
//! super-seeding, in a pull protocol: the seed cannot choose what is
//! asked, but it can decline, and declining is cheap (one round trip)
//! compared with sending a duplicate piece.
//!
//! Pieces count as sent when their transfer *ends*, not when it is
//! admitted: a seed queues up to ten seconds of requests, which at the
//! start of a class is half a lesson, so counting at admission let every
//! piece look "sent once" long before most had left, and second copies
//! went out while first ones were still queued (docs/benchmarks.md, "Why
//! the scheduler's rules").

use std::time::Duration;

use crate::PieceId;

/// Upload counts per piece, and the admission rule.
#[derive(Debug, Clone)]
pub struct SeedPolicy {
    /// Completed sends of each piece.
    sent: Vec<u32>,
    /// Sends admitted and not yet ended, per piece.
    in_flight: Vec<u16>,
    /// When each piece's last send ended.
    last_sent: Vec<Option<Duration>>,
}

/// A piece is sent again once this long has passed since its last send
/// ended. By then the pupil who got it has told its classmates, so a
/// request that still reaches the seed means no classmate of the asker has
/// it: its copies left with their pupils, or the asker cannot reach them,
/// or it waited too long at classmates (endgame). Pupils ask a seed only
/// for pieces no classmate has (see the scheduler), so in a healthy class
/// no such request comes.
///
/// Earlier rules ("no piece twice before every piece once", "a piece
/// refused 32 times is sent anyway") sent the lesson more than once
/// (docs/benchmarks.md, "Why the scheduler's rules"). Some resend rule is
/// needed: without one a class stalls when the pupils holding the only
/// copies of a piece leave (the lab's churn run).
pub const RESEND_AFTER: Duration = Duration::from_secs(10);

impl SeedPolicy {
    /// A policy over `pieces` pieces.
    pub fn new(pieces: PieceId) -> Self {
        Self {
            sent: vec![0; pieces as usize],
            in_flight: vec![0; pieces as usize],
            last_sent: vec![None; pieces as usize],
        }
    }

    /// Whether `piece` may go now: not on its way, and never sent or last
    /// sent at least [`RESEND_AFTER`] ago.
    fn allowed(&self, piece: PieceId, now: Duration) -> bool {
        let i = piece as usize;
        let (Some(&in_flight), Some(last)) = (self.in_flight.get(i), self.last_sent.get(i)) else {
            return true;
        };
        in_flight == 0 && last.is_none_or(|at| now.saturating_sub(at) >= RESEND_AFTER)
    }

    /// Whether to send `piece` at `now` (time since any fixed start). An
    /// admitted piece is in flight until [`SeedPolicy::finished`] or
    /// [`SeedPolicy::undo`]. Out-of-range pieces are admitted (the data
    /// layer will refuse them anyway).
    pub fn admit(&mut self, piece: PieceId, now: Duration) -> bool {
        self.admit_run(piece..=piece, now)
    }

    /// A run of pieces asked in one request: admitted whole if every piece
    /// would be admitted alone, otherwise refused whole.
    pub fn admit_run(&mut self, pieces: std::ops::RangeInclusive<PieceId>, now: Duration) -> bool {
        if !pieces.clone().all(|p| self.allowed(p, now)) {
            return false;
        }
        for p in pieces {
            if let Some(n) = self.in_flight.get_mut(p as usize) {
                *n = n.saturating_add(1);
            }
        }
        true
    }

    /// The admitted sends of `pieces` ended at `now`: they count as sent.
    pub fn finished(&mut self, pieces: std::ops::RangeInclusive<PieceId>, now: Duration) {
        for p in pieces {
            let i = p as usize;
            let Some(count) = self.sent.get(i).copied() else {
                continue;
            };
            self.in_flight[i] = self.in_flight[i].saturating_sub(1);
            self.last_sent[i] = Some(now);
            self.sent[i] = count + 1;
        }
    }

    /// The admitted sends of `pieces` were abandoned before they ended.
    pub fn undo(&mut self, pieces: std::ops::RangeInclusive<PieceId>) {
        for p in pieces {
            if let Some(n) = self.in_flight.get_mut(p as usize) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// How often `piece` was sent (completed sends).
    pub fn sent(&self, piece: PieceId) -> u32 {
        self.sent.get(piece as usize).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::ZERO;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Admits and completes at once.
    fn send(policy: &mut SeedPolicy, piece: PieceId, now: Duration) -> bool {
        let ok = policy.admit(piece, now);
        if ok {
            policy.finished(piece..=piece, now);
        }
        ok
    }

    #[test]
    fn unsent_pieces_go_and_sent_ones_wait() {
        let mut policy = SeedPolicy::new(4);
        assert!(send(&mut policy, 2, T0));
        assert!(!send(&mut policy, 2, T0), "a second copy at once");
        assert!(send(&mut policy, 0, at(1)));
        assert!(send(&mut policy, 1, at(2)));
        assert!(send(&mut policy, 3, at(3)));
        assert!((0..4).all(|p| policy.sent(p) == 1));
        // Every piece went once: that alone does not let a second copy go.
        assert!(!send(&mut policy, 2, at(4)));
        assert!(send(&mut policy, 2, RESEND_AFTER));
    }

    #[test]
    fn a_piece_on_its_way_is_not_sent_twice() {
        let mut policy = SeedPolicy::new(2);
        assert!(policy.admit(0, T0));
        // Queued, not left yet: not admitted again, however long it waits.
        assert!(!policy.admit(0, T0 + RESEND_AFTER * 3));
        assert_eq!(policy.sent(0), 0, "counted when sent, not when admitted");
        policy.finished(0..=0, at(100));
        assert_eq!(policy.sent(0), 1);
        assert!(!policy.admit(0, at(200)));
        assert!(policy.admit(0, at(100) + RESEND_AFTER));
    }

    #[test]
    fn many_requests_while_a_piece_spreads_do_not_make_copies() {
        let mut policy = SeedPolicy::new(2);
        assert!(send(&mut policy, 0, T0));
        for ms in (0..RESEND_AFTER.as_millis() as u64).step_by(10) {
            assert!(!policy.admit(0, at(ms)), "resent at {ms} ms");
        }
        assert_eq!(policy.sent(0), 1);
    }

    #[test]
    fn a_piece_whose_copies_were_lost_is_sent_again() {
        let mut policy = SeedPolicy::new(2);
        assert!(send(&mut policy, 0, T0));
        // Piece 1 is never asked for (its pupils kept it); piece 0's only
        // copy left with its pupil, and the class asks for it again: it
        // goes once RESEND_AFTER has passed, then the clock restarts.
        assert!(!send(&mut policy, 0, RESEND_AFTER - at(1)));
        assert!(send(&mut policy, 0, RESEND_AFTER));
        assert_eq!(policy.sent(0), 2);
        assert!(!send(&mut policy, 0, RESEND_AFTER + at(1)));
    }

    #[test]
    fn aborted_sends_are_forgotten() {
        let mut policy = SeedPolicy::new(2);
        assert!(policy.admit(0, T0));
        assert!(!policy.admit(0, T0));
        policy.undo(0..=0);
        assert_eq!(policy.sent(0), 0);
        assert!(policy.admit(0, T0));
    }

    #[test]
    fn a_run_goes_whole_or_not_at_all() {
        let mut policy = SeedPolicy::new(4);
        // Pieces 1 and 2 go out once; the others not yet.
        assert!(send(&mut policy, 1, T0));
        assert!(send(&mut policy, 2, T0));
        // A run over 0..=3 is held back by 1 and 2, and takes nothing.
        assert!(!policy.admit_run(0..=3, at(500)));
        assert!(
            policy.admit(0, at(500)),
            "0 was not taken by the refused run"
        );
        policy.undo(0..=0);
        // Once 1 and 2 may go again, the run goes and counts every piece.
        assert!(policy.admit_run(0..=3, RESEND_AFTER));
        policy.finished(0..=3, RESEND_AFTER);
        assert_eq!((0..4).map(|p| policy.sent(p)).sum::<u32>(), 6);
    }
}
