//! Lesson bundles: what a teacher signs and a pupil verifies.
//!
//! This crate is pure: no network, no async, no iroh. It knows
//!
//! - [`anchor`]: what a node knows of the schools it trusts, the chain
//!   check of a certified lesson, and the no-rollback rule;
//! - [`announce`]: signed "version V of lesson L is bundle R" messages
//!   and the rule that only a newer version replaces an older one;
//! - [`keys`]: the teacher's *author key* (ed25519) and how it is stored;
//! - [`manifest`]: the signed description of a bundle (title, lesson id,
//!   version, files with their sizes and BLAKE3 hashes), its canonical
//!   encoding and its signature;
//! - [`path`]: which relative paths are safe to write on a pupil's disk;
//! - [`registry`]: the school's own key and register (certify, revoke,
//!   rotate, export);
//! - [`school`]: what a school signs (certificates, key rotations,
//!   revocation lists, its seed node's statements);
//! - [`swarm_wire`]: the messages of the swarm protocol and their frames;
//! - [`ticket`]: the short text a teacher hands out;
//! - [`trust`]: the list of authors a pupil accepts.
//!
//! A bundle on the wire is an iroh-blobs hash sequence `[manifest, file0,
//! file1, ...]`; the layers above this one move the bytes. See
//! `docs/bundle-format.md` for the byte-level description.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod anchor;
pub mod announce;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod manifest;
pub mod path;
pub mod registry;
pub mod school;
pub mod swarm_wire;
pub mod ticket;
pub mod trust;

pub use announce::{Announcement, Book, Offer, SignedAnnouncement};
pub use keys::{AuthorKey, AuthorSecret, KeyError, ParseKeyError};
pub use manifest::{FileEntry, LessonId, Manifest, ManifestError, SignedManifest};
pub use path::{validate_file_list, validate_path, PathError};
pub use ticket::{ProviderInfo, Ticket, TicketError};
pub use trust::{TrustError, TrustStore};

/// Limits that bound what a manifest may describe. A fetcher refuses a
/// manifest that exceeds any of them before it downloads a single file.
pub mod limits {
    /// Largest encoded signed manifest, in bytes.
    pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
    /// Most files in one bundle.
    pub const MAX_FILES: usize = 20_000;
    /// Largest sum of file sizes in one bundle (256 GiB).
    pub const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024 * 1024;
    /// Longest relative path, in bytes of UTF-8.
    pub const MAX_PATH_BYTES: usize = 1024;
    /// Longest single path component, in bytes of UTF-8.
    pub const MAX_COMPONENT_BYTES: usize = 255;
    /// Deepest nesting of folders.
    pub const MAX_DEPTH: usize = 32;
    /// Longest title, in bytes of UTF-8.
    pub const MAX_TITLE_BYTES: usize = 256;
}
