//! Class announcements: "version V of lesson L is bundle R", signed by the
//! teacher's author key.
//!
//! An announcement travels on the author's gossip topic and inside the
//! author's catch-up record in the DHT. Anybody may forward it; nobody but
//! the author can make one. A receiver accepts it only when
//!
//! 1. it decodes from the one canonical encoding and is small
//!    ([`MAX_ANNOUNCEMENT_BYTES`]);
//! 2. the signature verifies against the author key it names;
//! 3. the receiver follows that key;
//! 4. it is newer than what the receiver already knows of that lesson
//!    ([`Book::offer`]): an older or equal version, replayed later, changes
//!    nothing.
//!
//! The signature covers `classe/announce/v1\0` followed by the postcard
//! encoding of [`Announcement`]: it cannot be confused with a manifest
//! signature made with the same key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    keys::{AuthorKey, AuthorSecret},
    limits::MAX_TITLE_BYTES,
    manifest::LessonId,
    ticket::{ProviderInfo, MAX_ADDRS},
};

/// Prefix of every signed announcement message.
pub const ANNOUNCE_DOMAIN: &[u8] = b"classe/announce/v1\0";
/// Largest encoded signed announcement.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 2048;
/// Most providers one announcement may name.
pub const MAX_ANNOUNCED_PROVIDERS: usize = 4;
/// Most announcements (lessons) one catch-up record may carry: the
/// newest sixteen lessons of an author (a record must fit in one DHT
/// message).
pub const MAX_RECORD_ENTRIES: usize = 16;

/// What the author signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Who signs it.
    pub author: AuthorKey,
    /// The lesson, stable across versions.
    pub lesson_id: LessonId,
    /// The manifest version of the announced bundle.
    pub version: u64,
    /// The bundle's root hash.
    pub root: [u8; 32],
    /// The lesson title.
    pub title: String,
    /// Seconds since the Unix epoch when it was signed.
    pub unix_secs: u64,
    /// Nodes that held the bundle when it was announced.
    pub providers: Vec<ProviderInfo>,
}

type SignatureBytes = [[u8; 32]; 2];

#[derive(Serialize, Deserialize)]
enum Wire {
    V1 {
        announcement: Announcement,
        signature: SignatureBytes,
    },
}

/// An announcement with a valid signature by its author. The only way to
/// get one is [`SignedAnnouncement::sign`] or
/// [`SignedAnnouncement::from_bytes`], which verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedAnnouncement {
    announcement: Announcement,
    signature: [u8; 64],
}

/// Why bytes are not an acceptable announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    /// Over [`MAX_ANNOUNCEMENT_BYTES`].
    #[error("announcement is {0} bytes, over the limit")]
    TooLarge(usize),
    /// Not an announcement this version can read, or not canonical.
    #[error("announcement cannot be decoded")]
    Decode,
    /// The signature does not verify against the author key it names.
    #[error("announcement signature is invalid")]
    BadSignature,
    /// Well signed but over a limit (title, providers).
    #[error("announcement exceeds a limit: {0}")]
    Limit(&'static str),
}

impl Announcement {
    fn signing_message(&self) -> Vec<u8> {
        let mut message = ANNOUNCE_DOMAIN.to_vec();
        message.extend(postcard::to_stdvec(self).unwrap_or_default());
        message
    }

    fn check_limits(&self) -> Result<(), AnnounceError> {
        if self.title.len() > MAX_TITLE_BYTES || self.title.chars().any(char::is_control) {
            return Err(AnnounceError::Limit(
                "title too long or has control characters",
            ));
        }
        if self.providers.len() > MAX_ANNOUNCED_PROVIDERS {
            return Err(AnnounceError::Limit("too many providers"));
        }
        if self.providers.iter().any(|p| {
            p.addrs.len() > MAX_ADDRS
                || p.relay_url
                    .as_ref()
                    .is_some_and(|u| u.len() > crate::ticket::MAX_RELAY_URL)
        }) {
            return Err(AnnounceError::Limit("provider entry too large"));
        }
        Ok(())
    }
}

impl SignedAnnouncement {
    /// Signs `announcement` with `secret`, whose public key must be the
    /// announcement's author.
    pub fn sign(
        mut announcement: Announcement,
        secret: &AuthorSecret,
    ) -> Result<Self, AnnounceError> {
        announcement.author = secret.public();
        announcement.providers.truncate(MAX_ANNOUNCED_PROVIDERS);
        announcement.check_limits()?;
        let signature = secret.sign(&announcement.signing_message());
        let signed = Self {
            announcement,
            signature,
        };
        let len = signed.to_bytes().len();
        if len > MAX_ANNOUNCEMENT_BYTES {
            return Err(AnnounceError::TooLarge(len));
        }
        Ok(signed)
    }

    /// The signed content.
    pub fn announcement(&self) -> &Announcement {
        &self.announcement
    }

    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut halves = [[0u8; 32]; 2];
        halves[0].copy_from_slice(&self.signature[..32]);
        halves[1].copy_from_slice(&self.signature[32..]);
        let wire = Wire::V1 {
            announcement: self.announcement.clone(),
            signature: halves,
        };
        postcard::to_stdvec(&wire).unwrap_or_default()
    }

    /// Decodes and verifies: size, canonical encoding, limits, signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AnnounceError> {
        let signed = Self::decode_unverified(bytes)?;
        signed.announcement.check_limits()?;
        // The key bytes came from the wire: a non-key fails here too.
        let key = AuthorKey::from_bytes(*signed.announcement.author.as_bytes())
            .map_err(|_| AnnounceError::BadSignature)?;
        if !key.verify(&signed.announcement.signing_message(), &signed.signature) {
            return Err(AnnounceError::BadSignature);
        }
        Ok(signed)
    }

    /// Size and canonical encoding only: neither limits nor signature.
    pub(crate) fn decode_unverified(bytes: &[u8]) -> Result<Self, AnnounceError> {
        if bytes.len() > MAX_ANNOUNCEMENT_BYTES {
            return Err(AnnounceError::TooLarge(bytes.len()));
        }
        let (wire, rest): (Wire, _) =
            postcard::take_from_bytes(bytes).map_err(|_| AnnounceError::Decode)?;
        if !rest.is_empty() {
            return Err(AnnounceError::Decode);
        }
        let Wire::V1 {
            announcement,
            signature,
        } = wire;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&signature[0]);
        sig[32..].copy_from_slice(&signature[1]);
        let signed = Self {
            announcement,
            signature: sig,
        };
        if signed.to_bytes() != bytes {
            return Err(AnnounceError::Decode);
        }
        Ok(signed)
    }

    /// Text form (lowercase base32), for files and logs.
    pub fn to_text(&self) -> String {
        data_encoding::BASE32_NOPAD
            .encode(&self.to_bytes())
            .to_ascii_lowercase()
    }

    /// Parses [`SignedAnnouncement::to_text`], verifying.
    pub fn from_text(text: &str) -> Result<Self, AnnounceError> {
        let bytes = data_encoding::BASE32_NOPAD
            .decode(text.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| AnnounceError::Decode)?;
        Self::from_bytes(&bytes)
    }
}

/// Encodes the catch-up record of one author: the latest announcement of
/// each of their lessons, newest first, at most [`MAX_RECORD_ENTRIES`].
pub fn encode_record(entries: &[SignedAnnouncement]) -> Vec<u8> {
    let mut sorted: Vec<&SignedAnnouncement> = entries.iter().collect();
    sorted.sort_by_key(|a| std::cmp::Reverse(a.announcement.unix_secs));
    let list: Vec<Vec<u8>> = sorted
        .into_iter()
        .take(MAX_RECORD_ENTRIES)
        .map(SignedAnnouncement::to_bytes)
        .collect();
    postcard::to_stdvec(&list).unwrap_or_default()
}

/// Largest encoded catch-up record.
pub const MAX_RECORD_BYTES: usize = MAX_RECORD_ENTRIES * (MAX_ANNOUNCEMENT_BYTES + 4) + 16;

/// Decodes a catch-up record claimed to be `author`'s. Every entry must be
/// a valid announcement signed by `author`; one bad entry refuses the whole
/// record (nobody honest writes one).
pub fn decode_record(
    author: &AuthorKey,
    bytes: &[u8],
) -> Result<Vec<SignedAnnouncement>, AnnounceError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(AnnounceError::TooLarge(bytes.len()));
    }
    let (list, rest): (Vec<Vec<u8>>, _) =
        postcard::take_from_bytes(bytes).map_err(|_| AnnounceError::Decode)?;
    if !rest.is_empty() || list.len() > MAX_RECORD_ENTRIES {
        return Err(AnnounceError::Decode);
    }
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let signed = SignedAnnouncement::from_bytes(&entry)?;
        if &signed.announcement.author != author {
            return Err(AnnounceError::BadSignature);
        }
        out.push(signed);
    }
    Ok(out)
}

/// What [`Book::offer`] made of an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Newer than anything known of its lesson: kept.
    Newer,
    /// The same version (and root) is already known: nothing to do.
    Known,
    /// Older than the version known, or the same version naming another
    /// root: refused.
    Stale,
}

/// The latest announcement of every lesson, per author.
#[derive(Debug, Default, Clone)]
pub struct Book {
    latest: BTreeMap<(AuthorKey, LessonId), SignedAnnouncement>,
}

impl Book {
    /// Offers an announcement; keeps it if it is the newest of its lesson.
    pub fn offer(&mut self, signed: SignedAnnouncement) -> Offer {
        let a = &signed.announcement;
        let key = (a.author, a.lesson_id);
        match self.latest.get(&key) {
            Some(known) if known.announcement.version > a.version => Offer::Stale,
            Some(known) if known.announcement.version == a.version => {
                if known.announcement.root == a.root {
                    Offer::Known
                } else {
                    Offer::Stale
                }
            }
            _ => {
                self.latest.insert(key, signed);
                Offer::Newer
            }
        }
    }

    /// The latest announcement of each lesson of `author`.
    pub fn of_author(&self, author: &AuthorKey) -> Vec<SignedAnnouncement> {
        self.latest
            .iter()
            .filter(|((a, _), _)| a == author)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Every author with at least one announcement.
    pub fn authors(&self) -> Vec<AuthorKey> {
        let mut v: Vec<AuthorKey> = self.latest.keys().map(|(a, _)| *a).collect();
        v.dedup();
        v
    }

    /// Every announcement kept.
    pub fn all(&self) -> impl Iterator<Item = &SignedAnnouncement> {
        self.latest.values()
    }

    /// The version known of a lesson.
    pub fn version_of(&self, author: &AuthorKey, lesson: &LessonId) -> Option<u64> {
        self.latest
            .get(&(*author, *lesson))
            .map(|s| s.announcement.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(secret: &AuthorSecret, lesson: LessonId, version: u64) -> SignedAnnouncement {
        SignedAnnouncement::sign(
            Announcement {
                author: secret.public(),
                lesson_id: lesson,
                version,
                root: [version as u8; 32],
                title: "Fractions".into(),
                unix_secs: 1_700_000_000 + version,
                providers: vec![ProviderInfo {
                    node_id: [1; 32],
                    addrs: vec!["10.0.0.1:4100".parse().unwrap()],
                    relay_url: None,
                    control_port: Some(4100),
                }],
            },
            secret,
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_any_flipped_bit_is_refused() {
        let secret = AuthorSecret::generate();
        let signed = announcement(&secret, LessonId([3; 16]), 2);
        let bytes = signed.to_bytes();
        assert_eq!(SignedAnnouncement::from_bytes(&bytes).unwrap(), signed);
        assert_eq!(
            SignedAnnouncement::from_text(&signed.to_text()).unwrap(),
            signed
        );
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                assert!(
                    SignedAnnouncement::from_bytes(&bad).is_err(),
                    "byte {i} bit {bit:#x} accepted"
                );
            }
        }
    }

    #[test]
    fn titles_with_control_characters_are_refused() {
        let secret = AuthorSecret::generate();
        let mut a = announcement(&secret, LessonId([4; 16]), 1).announcement;
        a.title = "Leçon\u{1b}[2J".into();
        assert!(matches!(
            SignedAnnouncement::sign(a, &secret),
            Err(AnnounceError::Limit(_))
        ));
    }

    #[test]
    fn another_key_cannot_sign_for_an_author() {
        let teacher = AuthorSecret::generate();
        let forger = AuthorSecret::generate();
        let mut forged = announcement(&forger, LessonId([3; 16]), 9);
        // Claim the teacher's key over the forger's signature.
        forged.announcement.author = teacher.public();
        assert_eq!(
            SignedAnnouncement::from_bytes(&forged.to_bytes()),
            Err(AnnounceError::BadSignature)
        );
        // A record under the teacher's key with the forger's entry.
        let record = encode_record(&[announcement(&forger, LessonId([3; 16]), 9)]);
        assert!(decode_record(&teacher.public(), &record).is_err());
    }

    #[test]
    fn book_keeps_the_newest_version_and_refuses_replays() {
        let secret = AuthorSecret::generate();
        let lesson = LessonId([5; 16]);
        let mut book = Book::default();
        assert_eq!(book.offer(announcement(&secret, lesson, 1)), Offer::Newer);
        assert_eq!(book.offer(announcement(&secret, lesson, 3)), Offer::Newer);
        assert_eq!(book.offer(announcement(&secret, lesson, 2)), Offer::Stale);
        assert_eq!(book.offer(announcement(&secret, lesson, 3)), Offer::Known);
        assert_eq!(book.version_of(&secret.public(), &lesson), Some(3));
        // Another lesson of the same author is independent.
        assert_eq!(
            book.offer(announcement(&secret, LessonId([6; 16]), 1)),
            Offer::Newer
        );
        assert_eq!(book.of_author(&secret.public()).len(), 2);
    }

    #[test]
    fn record_round_trip_is_bounded() {
        let secret = AuthorSecret::generate();
        let entries: Vec<_> = (0..(MAX_RECORD_ENTRIES as u8 + 5))
            .map(|i| announcement(&secret, LessonId([i; 16]), 1))
            .collect();
        let record = encode_record(&entries);
        let back = decode_record(&secret.public(), &record).unwrap();
        assert_eq!(back.len(), MAX_RECORD_ENTRIES);
        assert!(decode_record(&secret.public(), &record[..record.len() - 3]).is_err());
    }
}
