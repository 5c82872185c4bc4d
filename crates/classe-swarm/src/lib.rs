//! The swarm's brain, without any I/O.
//!
//! A bundle's files are cut into fixed-size [pieces](Layout). The
//! [`Scheduler`] decides which piece to ask of which peer; it is a plain
//! state machine: the caller feeds it [`Event`]s (a peer joined, a peer has
//! these pieces, a piece arrived or failed) with the current time, and
//! collects [`Action`]s (request this piece from that peer, cancel, drop a
//! peer). It owns no sockets, spawns nothing and reads no clock, so the same
//! code runs over real QUIC connections in `classe-node` and over a
//! simulated network in tests, and is deterministic for a given RNG seed.
//!
//! [`PeerBook`] decides which peers a download is connected to, and when
//! it is over: it dials learned providers up to a cap, asks the DHT for
//! more while the swarm is small, and says to give up when nobody is left
//! to ask or nothing has arrived for too long. The driver in `classe-node`
//! only carries out what the scheduler and the book decide, so both are
//! exercised by the class simulation (`tests/simulation.rs`).
//!
//! [`SeedPolicy`] is the provider side: it lets a seed with a slow uplink
//! send each piece about once, refusing a piece that is on its way to
//! someone or left less than ten seconds ago.
//!
//! # Piece size
//!
//! [`DEFAULT_PIECE_SIZE`] is 256 KiB: sixteen of iroh-blobs' 16 KiB chunk
//! groups, so a piece is verified by BLAKE3 on its own with no wasted
//! bytes, and one piece is one request. Smaller pieces cost a request (a
//! QUIC stream, a header, a proof of a few hashes) per few kilobytes and
//! more scheduler work; larger ones make the end of a download lumpy: at a
//! pupil's 10 Mbit/s uplink a 256 KiB piece takes 0.2 s to pass on, so a
//! piece received can be re-shared almost at once, and a 50 MB lesson has
//! 200 pieces to spread rarest-first over a class of 30.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod bitset;
mod book;
mod scheduler;
mod seed;

pub use bitset::BitSet;
pub use book::{BookAction, BookConfig, GiveUp, Lookup, PeerBook, Verdict};
pub use scheduler::{Action, Config, Event, FailReason, Scheduler};
pub use seed::SeedPolicy;

/// iroh-blobs verifies data in groups of 16 KiB: pieces are multiples of it.
pub const CHUNK_GROUP: u64 = 16 * 1024;

/// The default piece size; see the crate docs for why.
pub const DEFAULT_PIECE_SIZE: u64 = 256 * 1024;

/// Index of a piece across the whole bundle.
pub type PieceId = u32;

/// Where each piece lies: files laid end to end, each cut into pieces of
/// `piece_size` bytes (the last piece of a file may be shorter). Empty
/// files have no pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    piece_size: u64,
    /// (file size, index of its first piece)
    files: Vec<(u64, PieceId)>,
    pieces: PieceId,
}

/// A piece's place in the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceSpan {
    /// Index of the file in the bundle.
    pub file: usize,
    /// First byte within the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Layout {
    /// Lays out files of the given sizes. `piece_size` is rounded up to a
    /// multiple of [`CHUNK_GROUP`].
    pub fn new(file_sizes: &[u64], piece_size: u64) -> Self {
        let piece_size = piece_size.max(1).div_ceil(CHUNK_GROUP) * CHUNK_GROUP;
        let mut files = Vec::with_capacity(file_sizes.len());
        let mut next: u64 = 0;
        for &size in file_sizes {
            files.push((size, next as PieceId));
            next += size.div_ceil(piece_size);
        }
        Self {
            piece_size,
            files,
            pieces: next.min(PieceId::MAX as u64) as PieceId,
        }
    }

    /// Bytes per piece.
    pub fn piece_size(&self) -> u64 {
        self.piece_size
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> PieceId {
        self.pieces
    }

    /// Number of files.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Where piece `id` lies, or None if out of range.
    pub fn span(&self, id: PieceId) -> Option<PieceSpan> {
        if id >= self.pieces {
            return None;
        }
        // The file whose first piece is the last one <= id.
        let file = self.files.partition_point(|(_, first)| *first <= id) - 1;
        // Empty files share their first index with the next file, so the
        // last file starting at or before `id` is the non-empty one.
        let (size, first) = self.files[file];
        let offset = (id - first) as u64 * self.piece_size;
        Some(PieceSpan {
            file,
            offset,
            len: self.piece_size.min(size - offset),
        })
    }

    /// The pieces of file `file`.
    pub fn file_pieces(&self, file: usize) -> std::ops::Range<PieceId> {
        let Some(&(size, first)) = self.files.get(file) else {
            return 0..0;
        };
        first..first + size.div_ceil(self.piece_size) as PieceId
    }

    /// The piece holding byte `offset` of file `file`.
    pub fn piece_at(&self, file: usize, offset: u64) -> Option<PieceId> {
        let &(size, first) = self.files.get(file)?;
        (offset < size).then(|| first + (offset / self.piece_size) as PieceId)
    }

    /// Length in bytes of piece `id` (0 if out of range).
    pub fn piece_len(&self, id: PieceId) -> u64 {
        self.span(id).map_or(0, |s| s.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_cuts_files_into_pieces() {
        let l = Layout::new(&[0, 600 * 1024, 10, 0, 256 * 1024], DEFAULT_PIECE_SIZE);
        assert_eq!(l.piece_count(), 3 + 1 + 1);
        assert_eq!(
            l.span(0),
            Some(PieceSpan {
                file: 1,
                offset: 0,
                len: 256 * 1024
            })
        );
        assert_eq!(
            l.span(2),
            Some(PieceSpan {
                file: 1,
                offset: 512 * 1024,
                len: 88 * 1024
            })
        );
        assert_eq!(
            l.span(3),
            Some(PieceSpan {
                file: 2,
                offset: 0,
                len: 10
            })
        );
        assert_eq!(
            l.span(4),
            Some(PieceSpan {
                file: 4,
                offset: 0,
                len: 256 * 1024
            })
        );
        assert_eq!(l.span(5), None);
        assert_eq!(l.file_pieces(0), 0..0);
        assert_eq!(l.file_pieces(1), 0..3);
        assert_eq!(l.file_pieces(3), 4..4);
        assert_eq!(l.piece_at(1, 300 * 1024), Some(1));
        assert_eq!(l.piece_at(1, 600 * 1024), None);
    }

    #[test]
    fn piece_size_is_a_multiple_of_the_chunk_group() {
        assert_eq!(Layout::new(&[1], 1000).piece_size(), CHUNK_GROUP);
        assert_eq!(Layout::new(&[1], 17 * 1024).piece_size(), 2 * CHUNK_GROUP);
    }
}
