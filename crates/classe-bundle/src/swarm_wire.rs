//! The messages of the swarm protocol (`classe/swarm/1`), and their frames.
//!
//! Kept here, without any I/O, so that the bytes a peer sends can be
//! decoded (and fuzzed) without a network stack. The session logic is in
//! `classe-node`'s `swarm` module.
//!
//! A frame is a big-endian `u32` length followed by that many bytes of
//! postcard; a frame longer than [`MAX_FRAME`] or with bytes left over
//! after the message is refused.

use serde::{Deserialize, Serialize};

use crate::ProviderInfo;

/// Largest frame accepted, in bytes.
pub const MAX_FRAME: usize = 256 * 1024;

/// What a fetcher says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// "I want (or have) `root`; here is how to reach me."
    Hello {
        /// The bundle.
        root: [u8; 32],
        /// How to reach the sender, if it serves what it holds.
        me: Option<ProviderInfo>,
        /// True if the sender stops serving as soon as it holds the whole
        /// bundle (`classe fetch --no-seed`, a family in seed-only mode):
        /// a seed then knows that what it sends this peer will not be
        /// passed on to the rest of the class.
        leaves_when_done: bool,
    },
}

/// Which pieces a node has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Have {
    /// Nothing, or it does not know the bundle.
    None,
    /// Every piece.
    All,
    /// These pieces: bit i of word i/64.
    Some(Vec<u64>),
}

/// What the holder answers, then streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// The answer to Hello.
    Welcome {
        /// Piece count of its layout (0 if it does not know the bundle).
        pieces: u32,
        /// The pieces it holds.
        have: Have,
        /// Other peers of the bundle it knows.
        peers: Vec<ProviderInfo>,
    },
    /// Something new.
    Update {
        /// Pieces it got since.
        pieces: Vec<u32>,
        /// Peers it met since.
        peers: Vec<ProviderInfo>,
    },
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is over [`MAX_FRAME`].
    #[error("frame of {0} bytes is too large (at most {MAX_FRAME})")]
    TooLarge(usize),
    /// The bytes are not a message of the expected type.
    #[error("frame is not a valid message")]
    Decode(#[source] postcard::Error),
    /// The message ends before the frame does.
    #[error("trailing bytes in frame")]
    Trailing,
}

/// Checks a frame's length prefix.
pub fn check_len(len: u32) -> Result<usize, FrameError> {
    let len = len as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame's body (the bytes after the length prefix).
pub fn decode<T: for<'a> Deserialize<'a>>(body: &[u8]) -> Result<T, FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let (msg, rest) = postcard::take_from_bytes(body).map_err(FrameError::Decode)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing);
    }
    Ok(msg)
}

/// Encodes a message as a whole frame, length prefix included.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(msg).map_err(FrameError::Decode)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l as usize <= MAX_FRAME)
        .ok_or(FrameError::TooLarge(body.len()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_its_length_is_checked() {
        let msg = ClientMsg::Hello {
            root: [7; 32],
            me: None,
            leaves_when_done: true,
        };
        let frame = encode(&msg).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap());
        assert_eq!(check_len(len).unwrap(), frame.len() - 4);
        assert_eq!(decode::<ClientMsg>(&frame[4..]).unwrap(), msg);
        assert!(matches!(
            check_len(MAX_FRAME as u32 + 1),
            Err(FrameError::TooLarge(_))
        ));
        let mut long = frame[4..].to_vec();
        long.push(0);
        assert!(matches!(
            decode::<ClientMsg>(&long),
            Err(FrameError::Trailing)
        ));
        assert!(decode::<ServerMsg>(&[9, 9, 9]).is_err());
    }
}
