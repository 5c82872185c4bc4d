//! A fixed-size set of piece indices.

use crate::PieceId;

/// Which pieces someone has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BitSet {
    words: Vec<u64>,
    len: PieceId,
    count: PieceId,
}

impl BitSet {
    /// An empty set over `len` pieces.
    pub fn new(len: PieceId) -> Self {
        Self {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            count: 0,
        }
    }

    /// A full set over `len` pieces.
    pub fn full(len: PieceId) -> Self {
        let mut s = Self::new(len);
        for i in 0..len {
            s.insert(i);
        }
        s
    }

    /// Number of pieces it ranges over.
    pub fn len(&self) -> PieceId {
        self.len
    }

    /// True if it ranges over no pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces in the set.
    pub fn count(&self) -> PieceId {
        self.count
    }

    /// True if every piece is in the set.
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    /// Is `i` in the set? Out of range is false.
    pub fn contains(&self, i: PieceId) -> bool {
        i < self.len && self.words[i as usize / 64] & (1 << (i % 64)) != 0
    }

    /// Adds `i`; returns true if it was not there. Out of range is ignored.
    pub fn insert(&mut self, i: PieceId) -> bool {
        if i >= self.len || self.contains(i) {
            return false;
        }
        self.words[i as usize / 64] |= 1 << (i % 64);
        self.count += 1;
        true
    }

    /// Removes `i`; returns true if it was there.
    pub fn remove(&mut self, i: PieceId) -> bool {
        if !self.contains(i) {
            return false;
        }
        self.words[i as usize / 64] &= !(1 << (i % 64));
        self.count -= 1;
        true
    }

    /// The members, in increasing order. Skips empty words, so sparse
    /// sets iterate quickly.
    pub fn iter(&self) -> impl Iterator<Item = PieceId> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                Some(w as PieceId * 64 + b)
            })
        })
    }
}
