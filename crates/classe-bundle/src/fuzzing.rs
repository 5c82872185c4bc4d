//! The properties the fuzz targets check, shared with the corpus replay
//! test so that every committed corpus file runs through the same code
//! under a plain `cargo test` (see `fuzz/README.md`).
//!
//! Each function takes the bytes a peer or a user could hand classe, runs
//! them through the real parser, and panics if a property breaks. Any
//! panic, whatever the input, is a bug in the parser (or in the property).
//!
//! Signed formats are checked twice: as they come (which, without the
//! author's key, almost always stops at the signature), and *re-signed*
//! with a fixed test key, so the checks behind the signature (limits,
//! paths, records) are reached by mutated inputs too.
//!
//! Not part of the API: no stability promise.

use std::{
    collections::BTreeSet,
    path::{Component, Path},
    str::FromStr,
};

use crate::{
    announce::{self, SignedAnnouncement, MAX_ANNOUNCED_PROVIDERS, MAX_RECORD_ENTRIES},
    keys::{AuthorKey, AuthorSecret},
    limits::{
        MAX_COMPONENT_BYTES, MAX_DEPTH, MAX_FILES, MAX_MANIFEST_BYTES, MAX_PATH_BYTES,
        MAX_TITLE_BYTES, MAX_TOTAL_BYTES,
    },
    manifest::{ManifestError, SignedManifest},
    path::{validate_file_list, validate_path},
    swarm_wire::{self, ClientMsg, ServerMsg, MAX_FRAME},
    ticket::{Ticket, MAX_ADDRS, MAX_PROVIDERS, MAX_RELAY_URL, MAX_TICKET_CHARS},
    trust::TrustStore,
};

/// A property check: panics if `data` breaks a property.
pub type Check = fn(&[u8]);

/// Every fuzz target, by name: the name of its `fuzz/fuzz_targets/` file
/// and of its folder under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("ticket", ticket),
    ("manifest", manifest),
    ("path_list", path_list),
    ("announce", announce),
    ("record", record),
    ("swarm_frame", swarm_frame),
    ("keys", keys),
    ("trust_file", trust_file),
];

/// The key the re-signing properties sign with (a test key: its secret is
/// in this file).
pub fn test_secret() -> AuthorSecret {
    AuthorSecret::from_bytes(&[0x5a; 32])
}

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A pasted ticket: one that parses prints back to a ticket that parses
/// to the same value, within the limits.
pub fn ticket(data: &[u8]) {
    let input = text(data);
    let Ok(ticket) = Ticket::from_str(&input) else {
        return;
    };
    assert!(ticket.providers.len() <= MAX_PROVIDERS);
    for p in &ticket.providers {
        assert!(p.addrs.len() <= MAX_ADDRS);
        assert!(p
            .relay_url
            .as_ref()
            .is_none_or(|u| u.len() <= MAX_RELAY_URL));
    }
    assert!(AuthorKey::from_bytes(*ticket.author.as_bytes()).is_ok());
    let printed = ticket.to_string();
    assert!(printed.starts_with(crate::ticket::PREFIX));
    assert!(printed.len() <= MAX_TICKET_CHARS, "{} chars", printed.len());
    assert_eq!(printed, printed.to_ascii_lowercase());
    match Ticket::from_str(&printed) {
        Ok(again) => assert_eq!(again, ticket),
        Err(e) => panic!("a parsed ticket prints to one that does not parse: {e}"),
    }
}

/// Manifest bytes from a peer: canonical, and whatever passes
/// `decode_verified` is within every limit and names only safe paths.
pub fn manifest(data: &[u8]) {
    let verified = SignedManifest::decode_verified(data);
    let Ok(decoded) = SignedManifest::from_bytes(data) else {
        assert!(verified.is_err());
        return;
    };
    // One encoding per manifest.
    assert_eq!(decoded.to_bytes(), data);
    // Callers may ask an unverified manifest its size.
    let _ = decoded.manifest().total_size();
    if let Ok(signed) = verified {
        assert_verified_manifest(&signed);
    }
    // Re-signed by the test key: only the limits and the paths decide.
    let secret = test_secret();
    let mut manifest = decoded.manifest().clone();
    manifest.author = secret.public();
    let signature = secret.sign(&manifest.signing_message());
    let bytes = SignedManifest::from_parts(manifest.clone(), signature).to_bytes();
    let valid = manifest.validate();
    match SignedManifest::decode_verified(&bytes) {
        Ok(signed) => {
            assert!(valid.is_ok());
            assert_eq!(signed.manifest(), &manifest);
            assert_eq!(signed.to_bytes(), bytes);
            assert_verified_manifest(&signed);
            let again = SignedManifest::sign(manifest, &secret);
            assert!(again.is_ok_and(|a| a.to_bytes() == bytes));
        }
        Err(ManifestError::TooLarge(_)) => assert!(bytes.len() > MAX_MANIFEST_BYTES),
        Err(e) => {
            assert!(valid.is_err(), "valid manifest refused: {e}");
            assert!(SignedManifest::sign(manifest, &secret).is_err());
        }
    }
}

fn assert_verified_manifest(signed: &SignedManifest) {
    let m = signed.manifest();
    assert!(signed.to_bytes().len() <= MAX_MANIFEST_BYTES);
    assert!(m.files.len() <= MAX_FILES);
    assert!(m.total_size() <= MAX_TOTAL_BYTES);
    assert!(m.title.len() <= MAX_TITLE_BYTES);
    assert!(!m.title.chars().any(char::is_control));
    let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_safe_list(&paths);
}

/// A list of paths, one a line: every list `validate_file_list` accepts
/// is safe by an independent check, and so is every path `validate_path`
/// accepts.
pub fn path_list(data: &[u8]) {
    let input = text(data);
    let paths: Vec<&str> = input.split('\n').collect();
    for p in &paths {
        if validate_path(p).is_ok() {
            assert_safe_path(p);
        }
    }
    if validate_file_list(paths.iter().copied()).is_ok() {
        assert_safe_list(&paths);
    }
}

/// Names Windows gives to devices, whatever follows a dot (`NUL.txt`).
fn is_windows_device(component: &str) -> bool {
    let stem = component.split('.').next().unwrap_or_default().trim_end();
    let upper = stem.to_uppercase();
    if matches!(
        upper.as_str(),
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$"
    ) {
        return true;
    }
    // COM0-COM9, LPT0-LPT9, and the superscript digits Windows also counts.
    let Some(rest) = upper
        .strip_prefix("COM")
        .or_else(|| upper.strip_prefix("LPT"))
    else {
        return false;
    };
    let mut chars = rest.chars();
    matches!(
        (chars.next(), chars.next()),
        (Some('0'..='9' | '¹' | '²' | '³'), None)
    )
}

fn assert_safe_path(p: &str) {
    assert!(!p.is_empty() && p.len() <= MAX_PATH_BYTES, "{p:?}");
    assert!(!p.starts_with('/'), "{p:?}");
    assert!(
        !p.chars()
            .any(|c| c.is_control() || matches!(c, '\\' | ':' | '<' | '>' | '"' | '|' | '?' | '*')),
        "{p:?}"
    );
    // Joined under any folder, it stays inside it.
    assert!(
        Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "{p:?}"
    );
    let components: Vec<&str> = p.split('/').collect();
    assert!(components.len() <= MAX_DEPTH, "{p:?}");
    for c in components {
        assert!(!c.is_empty() && c != "." && c != "..", "{p:?}");
        assert!(c.len() <= MAX_COMPONENT_BYTES, "{p:?}");
        assert!(!c.ends_with('.') && !c.ends_with(' '), "{p:?}");
        assert!(!is_windows_device(c), "{p:?} names a Windows device");
    }
}

/// No two entries the same, ignoring case, and no file that is also a
/// folder of another entry.
fn assert_safe_list(paths: &[&str]) {
    let mut folded: Vec<String> = paths.iter().map(|p| p.to_lowercase()).collect();
    folded.sort();
    for pair in folded.windows(2) {
        assert_ne!(pair[0], pair[1], "duplicate entry");
    }
    let set: BTreeSet<&str> = folded.iter().map(String::as_str).collect();
    for f in &folded {
        let folder = format!("{f}/");
        let inside = set.range(folder.as_str()..).next();
        assert!(
            !inside.is_some_and(|x| x.starts_with(&folder)),
            "{f:?} is a file and a folder"
        );
    }
    for p in paths {
        assert_safe_path(p);
    }
}

/// Gossip announcements: canonical, verified, within limits; re-signed by
/// the test key, accepted exactly when within limits.
pub fn announce(data: &[u8]) {
    if let Ok(signed) = SignedAnnouncement::from_bytes(data) {
        assert_eq!(signed.to_bytes(), data);
        assert_announcement(&signed);
    }
    if let Ok(signed) = SignedAnnouncement::from_text(&text(data)) {
        assert_eq!(SignedAnnouncement::from_text(&signed.to_text()), Ok(signed));
    }
    let Ok(decoded) = SignedAnnouncement::decode_unverified(data) else {
        return;
    };
    assert_eq!(decoded.to_bytes(), data);
    resign_announcement(&decoded);
}

fn assert_announcement(signed: &SignedAnnouncement) {
    let a = signed.announcement();
    assert!(signed.to_bytes().len() <= announce::MAX_ANNOUNCEMENT_BYTES);
    assert!(a.title.len() <= MAX_TITLE_BYTES && !a.title.chars().any(char::is_control));
    assert!(a.providers.len() <= MAX_ANNOUNCED_PROVIDERS);
    for p in &a.providers {
        assert!(p.addrs.len() <= MAX_ADDRS);
        assert!(p
            .relay_url
            .as_ref()
            .is_none_or(|u| u.len() <= MAX_RELAY_URL));
    }
}

/// Signs the content of `decoded` with the test key; returns it if it is
/// acceptable.
fn resign_announcement(decoded: &SignedAnnouncement) -> Option<SignedAnnouncement> {
    let secret = test_secret();
    let content = decoded.announcement().clone();
    let signed = SignedAnnouncement::sign(content, &secret).ok()?;
    assert_announcement(&signed);
    let bytes = signed.to_bytes();
    match SignedAnnouncement::from_bytes(&bytes) {
        Ok(back) => assert_eq!(back, signed),
        Err(e) => panic!("a freshly signed announcement is refused: {e}"),
    }
    Some(signed)
}

/// Catch-up records from the DHT: what decodes is the author's, bounded,
/// and survives a re-encoding; re-signed entries make a record that
/// decodes.
pub fn record(data: &[u8]) {
    let secret = test_secret();
    let author = secret.public();
    if let Ok(entries) = announce::decode_record(&author, data) {
        assert!(entries.len() <= MAX_RECORD_ENTRIES);
        for e in &entries {
            assert_eq!(e.announcement().author, author);
            assert_announcement(e);
        }
        assert_same_entries(&entries, &announce::encode_record(&entries), &author);
    }
    // The same bytes read as a list of re-signed entries.
    let Ok((list, _)) = postcard::take_from_bytes::<Vec<Vec<u8>>>(data) else {
        return;
    };
    let entries: Vec<SignedAnnouncement> = list
        .iter()
        .take(MAX_RECORD_ENTRIES)
        .filter_map(|e| SignedAnnouncement::decode_unverified(e).ok())
        .filter_map(|d| resign_announcement(&d))
        .collect();
    let encoded = announce::encode_record(&entries);
    assert!(encoded.len() <= announce::MAX_RECORD_BYTES);
    assert_same_entries(&entries, &encoded, &author);
}

fn assert_same_entries(entries: &[SignedAnnouncement], encoded: &[u8], author: &AuthorKey) {
    match announce::decode_record(author, encoded) {
        Ok(back) => {
            let mut a: Vec<Vec<u8>> = entries.iter().map(|e| e.to_bytes()).collect();
            let mut b: Vec<Vec<u8>> = back.iter().map(|e| e.to_bytes()).collect();
            a.sort();
            b.sort();
            assert_eq!(a, b);
        }
        Err(e) => panic!("an encoded record does not decode: {e}"),
    }
}

/// The most decoding a frame of `frame_len` bytes may allocate. In memory
/// a decoded message takes at most 8 bytes per byte of frame (a one-byte
/// varint becomes a `u64`), twice that while a list whose announced length
/// is a lie grows by doubling, and serde reserves at most 1 MiB ahead for
/// each of the two nested levels of lists (peers, then their addresses).
/// For a frame of [`MAX_FRAME`] bytes: 6 MiB.
pub fn swarm_alloc_bound(frame_len: usize) -> usize {
    16 * frame_len + 2 * 1024 * 1024
}

/// Swarm frames from a peer, as both message types: a length prefix over
/// [`MAX_FRAME`] is refused, and a message that decodes encodes to a frame
/// (no longer than the input: postcard's encoding is the shortest) that
/// decodes to the same message. Allocations are not bounded here; see
/// [`swarm_frame_limited`].
pub fn swarm_frame(data: &[u8]) {
    swarm_frame_limited(data, &|_| {});
}

/// [`swarm_frame`], with each decoding run under an allocation limit:
/// `limit(Some(n))` is called just before, and must make any allocation
/// past `n` more bytes fail (a harness that owns the global allocator does
/// that); `limit(None)` just after lifts it.
pub fn swarm_frame_limited(data: &[u8], limit: &dyn Fn(Option<usize>)) {
    if let Some(prefix) = data.get(..4) {
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        assert_eq!(
            swarm_wire::check_len(len).is_ok(),
            len as usize <= MAX_FRAME
        );
    }
    frame_round_trip::<ClientMsg>(data, limit);
    frame_round_trip::<ServerMsg>(data, limit);
}

fn frame_round_trip<T>(body: &[u8], limit: &dyn Fn(Option<usize>))
where
    T: for<'a> serde::Deserialize<'a> + serde::Serialize + PartialEq + std::fmt::Debug,
{
    limit(Some(swarm_alloc_bound(body.len())));
    let decoded = swarm_wire::decode::<T>(body);
    limit(None);
    let Ok(msg) = decoded else {
        return;
    };
    let frame = match swarm_wire::encode(&msg) {
        Ok(frame) => frame,
        Err(e) => panic!("a decoded message does not encode: {e}"),
    };
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    assert!(swarm_wire::check_len(len).is_ok_and(|l| l == frame.len() - 4));
    assert!(frame.len() - 4 <= body.len());
    match swarm_wire::decode::<T>(&frame[4..]) {
        Ok(again) => assert_eq!(again, msg),
        Err(e) => panic!("a re-encoded message does not decode: {e}"),
    }
}

/// Author keys and secret key files (one target: both decode the same
/// base32 text).
pub fn keys(data: &[u8]) {
    author_key(data);
    secret_key_file(data);
}

/// An author key typed or pasted: one text per key (letter case and
/// surrounding blanks aside), which prints back to itself.
pub fn author_key(data: &[u8]) {
    let input = text(data);
    let Ok(key) = AuthorKey::from_str(&input) else {
        return;
    };
    let printed = key.to_string();
    assert_eq!(printed.len(), 52);
    assert_eq!(printed, input.trim().to_ascii_lowercase());
    assert!(AuthorKey::from_bytes(*key.as_bytes()).is_ok());
    assert_eq!(AuthorKey::from_str(&printed).ok(), Some(key));
}

/// A secret key file: one that loads is saved back to a file that loads
/// to the same key.
pub fn secret_key_file(data: &[u8]) {
    let Some(secret) = AuthorSecret::from_file_text(&text(data)) else {
        return;
    };
    let written = secret.file_text();
    match AuthorSecret::from_file_text(&written) {
        Some(again) => {
            assert_eq!(*again.to_bytes(), *secret.to_bytes());
            assert_eq!(again.public(), secret.public());
        }
        None => panic!("a saved key file does not load"),
    }
}

/// A trust file: one that loads is saved back to a file that loads to the
/// same entries, whose names are printable.
pub fn trust_file(data: &[u8]) {
    let path = std::path::PathBuf::from("trust");
    let Ok(store) = TrustStore::parse(path.clone(), &text(data)) else {
        return;
    };
    for (_, name) in store.entries() {
        assert!(!name.chars().any(char::is_control), "{name:?}");
        assert_eq!(name.trim(), name);
    }
    match TrustStore::parse(path, &store.to_text()) {
        Ok(again) => assert_eq!(again.entries(), store.entries()),
        Err(e) => panic!("a saved trust file does not load: {e}"),
    }
}
