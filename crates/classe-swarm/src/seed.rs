//! The seed's side: send every piece once before any piece twice.
//!
//! A teacher's uplink is the scarcest link in the class. If thirty pupils
//! ask it for the same first pieces, it spends its bandwidth on copies the
//! pupils could have passed among themselves. [`SeedPolicy`] counts how
//! often each piece was sent and declines a request for a piece sent more
//! often than the least-sent piece; the pupil then asks a classmate for it,
//! or the seed for a piece nobody has yet. This is the idea behind
//! BitTorrent's super-seeding, in a pull protocol: the seed cannot choose
//! what is asked, but it can decline, and declining is cheap (one round
//! trip) compared with sending a duplicate piece.

use crate::PieceId;

/// Upload counts per piece, and the admission rule.
#[derive(Debug, Clone)]
pub struct SeedPolicy {
    sent: Vec<u32>,
    /// The lowest count.
    min: u32,
    /// How many pieces are at the lowest count.
    at_min: usize,
    /// A piece may be sent while its count is at most `min + slack`.
    slack: u32,
    /// Refusals of each piece since it was last sent.
    refused: Vec<u8>,
}

/// A piece refused this many times in a row is sent anyway. Without this
/// the rule can starve a class: when the pupils who got the only copies of
/// a piece leave, the others need that piece while nobody asks for the
/// least-sent ones, so the minimum never rises and the piece is refused
/// forever (seen in the lab: a third of the class left, the rest stalled).
pub const MAX_REFUSALS: u8 = 32;

impl SeedPolicy {
    /// A policy over `pieces` pieces. `slack` 0 is strict super-seeding.
    pub fn new(pieces: PieceId, slack: u32) -> Self {
        Self {
            sent: vec![0; pieces as usize],
            min: 0,
            at_min: pieces as usize,
            slack,
            refused: vec![0; pieces as usize],
        }
    }

    /// Whether to send `piece` now; counts it if so. Out-of-range pieces
    /// are admitted (the data layer will refuse them anyway).
    pub fn admit(&mut self, piece: PieceId) -> bool {
        let Some(count) = self.sent.get(piece as usize).copied() else {
            return true;
        };
        if count > self.min + self.slack {
            let refused = &mut self.refused[piece as usize];
            *refused = refused.saturating_add(1);
            if *refused < MAX_REFUSALS {
                return false;
            }
        }
        self.refused[piece as usize] = 0;
        self.sent[piece as usize] = count + 1;
        if count == self.min {
            self.at_min -= 1;
            if self.at_min == 0 {
                self.min += 1;
                self.at_min = self.sent.iter().filter(|c| **c == self.min).count();
            }
        }
        true
    }

    /// A run of pieces asked in one request: admitted whole (each counted
    /// as sent) if every piece would be admitted alone; otherwise refused
    /// whole, and every piece that stood in the way counts a refusal, so
    /// the refusal cap is reached for all of them together rather than one
    /// after the other.
    pub fn admit_run(&mut self, pieces: std::ops::RangeInclusive<PieceId>) -> bool {
        let blocked: Vec<PieceId> = pieces
            .clone()
            .filter(|&p| {
                self.sent.get(p as usize).is_some_and(|&count| {
                    count > self.min + self.slack
                        && self.refused[p as usize].saturating_add(1) < MAX_REFUSALS
                })
            })
            .collect();
        if blocked.is_empty() {
            for p in pieces {
                self.admit(p);
            }
            return true;
        }
        for p in blocked {
            let refused = &mut self.refused[p as usize];
            *refused = refused.saturating_add(1);
        }
        false
    }

    /// Forgets that `piece` was sent once (the transfer was aborted before
    /// it completed).
    pub fn undo(&mut self, piece: PieceId) {
        let Some(count) = self.sent.get(piece as usize).copied() else {
            return;
        };
        if count == 0 {
            return;
        }
        self.sent[piece as usize] = count - 1;
        if count - 1 < self.min {
            self.min = count - 1;
            self.at_min = 1;
        } else if count - 1 == self.min {
            self.at_min += 1;
        }
    }

    /// How often `piece` was sent.
    pub fn sent(&self, piece: PieceId) -> u32 {
        self.sent.get(piece as usize).copied().unwrap_or(0)
    }

    /// The lowest count over all pieces.
    pub fn min_sent(&self) -> u32 {
        self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_piece_goes_once_before_any_goes_twice() {
        let mut policy = SeedPolicy::new(4, 0);
        assert!(policy.admit(2));
        assert!(
            !policy.admit(2),
            "a second copy before the others went once"
        );
        assert!(policy.admit(0));
        assert!(policy.admit(1));
        assert!(!policy.admit(0));
        assert!(policy.admit(3));
        // All went once: second copies are fine now.
        assert_eq!(policy.min_sent(), 1);
        assert!(policy.admit(2));
        assert!(!policy.admit(2));
    }

    #[test]
    fn a_piece_whose_copies_were_lost_is_sent_again() {
        let mut policy = SeedPolicy::new(2, 0);
        assert!(policy.admit(0));
        assert!(policy.admit(1));
        assert!(policy.admit(0));
        // Piece 0's two copies left with their pupils; piece 1 is at
        // count 1 and nobody asks for it. Piece 0 is refused a few times,
        // then sent.
        let mut tries = 0;
        while !policy.admit(0) {
            tries += 1;
            assert!(tries < 100, "piece 0 starves");
        }
        assert_eq!(tries, (MAX_REFUSALS - 1) as usize);
        assert_eq!(policy.sent(0), 3);
    }

    #[test]
    fn aborted_sends_are_forgotten() {
        let mut policy = SeedPolicy::new(2, 0);
        assert!(policy.admit(0));
        assert!(policy.admit(1));
        assert!(policy.admit(0));
        policy.undo(0);
        policy.undo(1);
        assert_eq!(policy.min_sent(), 0);
        assert!(!policy.admit(0));
        assert!(policy.admit(1));
    }

    #[test]
    fn slack_allows_a_few_extra_copies() {
        let mut policy = SeedPolicy::new(3, 1);
        assert!(policy.admit(0));
        assert!(policy.admit(0));
        assert!(!policy.admit(0));
    }

    #[test]
    fn a_refused_run_counts_toward_the_cap_for_every_blocking_piece() {
        let mut policy = SeedPolicy::new(4, 0);
        // Pieces 1 and 2 go out once; the others not yet.
        assert!(policy.admit(1));
        assert!(policy.admit(2));
        // A run over 0..=3 is held back by 1 and 2 together.
        let mut tries = 0;
        while !policy.admit_run(0..=3) {
            tries += 1;
            assert!(tries < 100, "the run is never admitted");
        }
        assert_eq!(tries, (MAX_REFUSALS - 1) as usize);
        // A run of unsent pieces goes at once.
        let mut fresh = SeedPolicy::new(4, 0);
        assert!(fresh.admit_run(0..=3));
    }
}
