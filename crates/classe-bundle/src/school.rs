//! The school as the trust anchor: what the school signs, in its canonical
//! encodings.
//!
//! A family installs one key, the school's *identity* (the first school
//! key, printed by `classe school init`). Everything else is signed and
//! checked against it, offline:
//!
//! - a [`SignedRotation`] replaces school key version `n` by version
//!   `n + 1`, signed by both keys; a chain of them, from the identity,
//!   says which key is the school's current one;
//! - a [`SignedCertificate`] says "this author key belongs to this
//!   teacher (or to the school's seed node), with these roles, between
//!   these dates", signed by a school key;
//! - a [`Credentials`] is a certificate with the rotation chain it needs:
//!   what a teacher installs and what every lesson they share carries;
//! - a [`SignedRevocations`] is the school's revocation list (monotonic
//!   sequence number), signed by the current school key;
//! - a [`SignedStatement`] is the short-lived word of the school's seed
//!   node (an author key certified with the `mirror` role): the revocation
//!   sequence it holds and the latest version of each lesson it mirrored,
//!   with the time it first saw it (its countersignature);
//! - a [`Bulletin`] carries the chain, the list and the statement across
//!   the network (gossip, DHT) or on a USB stick.
//!
//! Each signed message is a domain string followed by the postcard
//! encoding of the value, so no signature can be moved from one kind of
//! message to another. Decoding accepts only the one canonical encoding
//! (re-encoding gives back the same bytes). Verification is in
//! [`crate::anchor`].

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    keys::{AuthorKey, AuthorSecret},
    manifest::LessonId,
};

/// Prefix of a signed teacher (or seed) certificate.
pub const CERT_DOMAIN: &[u8] = b"classe/school/cert/v1\0";
/// Prefix of a school key rotation (signed by the old and the new key).
pub const ROTATION_DOMAIN: &[u8] = b"classe/school/rotation/v1\0";
/// Prefix of a revocation list.
pub const REVOCATION_DOMAIN: &[u8] = b"classe/school/revocations/v1\0";
/// Prefix of a seed node's freshness statement.
pub const STATEMENT_DOMAIN: &[u8] = b"classe/school/statement/v1\0";

/// Most rotations in a chain.
pub const MAX_CHAIN: usize = 16;
/// Most entries in one revocation list (expired certificates leave it).
pub const MAX_REVOKED: usize = 256;
/// Most lessons in one statement.
pub const MAX_STATEMENT_LESSONS: usize = 128;
/// Longest name (school, teacher), in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest revocation reason, in bytes.
pub const MAX_REASON_BYTES: usize = 64;
/// Largest encoded bulletin or school gossip message: a full list, a full
/// statement and a full chain fit, and so does one DHT message.
pub const MAX_BULLETIN_BYTES: usize = 48 * 1024;
/// Largest encoded credentials.
pub const MAX_CREDENTIALS_BYTES: usize = 8 * 1024;

/// Role bit: may publish lessons (a teacher).
pub const ROLE_PUBLISH: u8 = 1;
/// Role bit: may countersign and issue freshness statements (the school's
/// seed node).
pub const ROLE_MIRROR: u8 = 2;

/// A 64-byte ed25519 signature as two halves (serde has no `[u8; 64]`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Sig([[u8; 32]; 2]);

impl Sig {
    /// Wraps raw signature bytes.
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        let mut halves = [[0u8; 32]; 2];
        halves[0].copy_from_slice(&bytes[..32]);
        halves[1].copy_from_slice(&bytes[32..]);
        Self(halves)
    }

    /// The raw signature bytes.
    pub fn to_bytes(self) -> [u8; 64] {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&self.0[0]);
        bytes[32..].copy_from_slice(&self.0[1]);
        bytes
    }
}

/// Why bytes are not an acceptable school object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchoolError {
    /// Over the size limit.
    #[error("{what} is {len} bytes, over the limit")]
    TooLarge {
        /// Which object.
        what: &'static str,
        /// Its size.
        len: usize,
    },
    /// Not decodable, or not canonically encoded.
    #[error("{0} cannot be decoded (damaged, or from a newer classe)")]
    Decode(&'static str),
    /// Not text in the expected armour.
    #[error("not a {0}: expected a line starting with \"{1}\"")]
    Armour(&'static str, &'static str),
    /// A signature does not verify.
    #[error("{0} has an invalid signature")]
    BadSignature(&'static str),
    /// A field is over a limit or malformed.
    #[error("{0}")]
    Invalid(String),
}

/// The message a signature covers: `domain ‖ postcard(value)`.
pub(crate) fn signing_message<T: Serialize>(domain: &[u8], value: &T) -> Vec<u8> {
    let mut message = domain.to_vec();
    // A plain struct always encodes.
    message.extend(postcard::to_stdvec(value).unwrap_or_default());
    message
}

fn sign<T: Serialize>(domain: &[u8], value: &T, secret: &AuthorSecret) -> Sig {
    Sig::from_bytes(secret.sign(&signing_message(domain, value)))
}

fn verify<T: Serialize>(domain: &[u8], value: &T, key: &AuthorKey, sig: &Sig) -> bool {
    // Bytes from the wire: a non-key fails verification too.
    AuthorKey::from_bytes(*key.as_bytes())
        .map(|k| k.verify(&signing_message(domain, value), &sig.to_bytes()))
        .unwrap_or(false)
}

/// Decodes `bytes` as a `T`, accepting only its canonical encoding.
pub(crate) fn decode_canonical<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
    max: usize,
    what: &'static str,
) -> Result<T, SchoolError> {
    if bytes.len() > max {
        return Err(SchoolError::TooLarge {
            what,
            len: bytes.len(),
        });
    }
    let (value, rest): (T, _) =
        postcard::take_from_bytes(bytes).map_err(|_| SchoolError::Decode(what))?;
    if !rest.is_empty() || postcard::to_stdvec(&value).ok().as_deref() != Some(bytes) {
        return Err(SchoolError::Decode(what));
    }
    Ok(value)
}

fn check_name(name: &str, what: &str) -> Result<(), SchoolError> {
    if name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(SchoolError::Invalid(format!(
            "{what} is longer than {MAX_NAME_BYTES} bytes or has control characters"
        )));
    }
    Ok(())
}

fn check_reason(reason: &str) -> Result<(), SchoolError> {
    if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
        return Err(SchoolError::Invalid(format!(
            "the reason is longer than {MAX_REASON_BYTES} bytes or has control characters"
        )));
    }
    Ok(())
}

/// What a school says about one author key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The school's identity (its first key).
    pub school: AuthorKey,
    /// The school's name, as families see it.
    pub school_name: String,
    /// Which school key signs this certificate (0: the identity).
    pub key_version: u32,
    /// Unique per school; a revocation may name it.
    pub serial: u64,
    /// The certified author key.
    pub subject: AuthorKey,
    /// The teacher's display name ("Mme Martin").
    pub name: String,
    /// [`ROLE_PUBLISH`], [`ROLE_MIRROR`], or both.
    pub roles: u8,
    /// Seconds since the Unix epoch: valid from.
    pub not_before: u64,
    /// Seconds since the Unix epoch: valid until.
    pub not_after: u64,
}

/// A certificate and the school key's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCertificate {
    /// What is certified.
    pub cert: Certificate,
    sig: Sig,
}

impl SignedCertificate {
    /// Signs `cert` with the school key of its `key_version`.
    pub fn sign(cert: Certificate, key: &AuthorSecret) -> Result<Self, SchoolError> {
        check_name(&cert.name, "the teacher's name")?;
        check_name(&cert.school_name, "the school's name")?;
        if cert.roles == 0 || cert.roles & !(ROLE_PUBLISH | ROLE_MIRROR) != 0 {
            return Err(SchoolError::Invalid("unknown roles".into()));
        }
        let sig = sign(CERT_DOMAIN, &cert, key);
        Ok(Self { cert, sig })
    }

    /// Does `key` sign this certificate?
    pub fn signed_by(&self, key: &AuthorKey) -> bool {
        verify(CERT_DOMAIN, &self.cert, key, &self.sig)
    }
}

/// "School key version `version` is `new_key`."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The school's identity.
    pub school: AuthorKey,
    /// The new key's version, one more than the key it replaces.
    pub version: u32,
    /// The new key.
    pub new_key: AuthorKey,
    /// When it was made.
    pub unix_secs: u64,
}

/// A rotation signed by the key it replaces and by the new key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRotation {
    /// What is rotated.
    pub rotation: Rotation,
    by_old: Sig,
    by_new: Sig,
}

impl SignedRotation {
    /// Signs the rotation from `old` (version `rotation.version - 1`) to
    /// `new` (whose public key must be `rotation.new_key`).
    pub fn sign(rotation: Rotation, old: &AuthorSecret, new: &AuthorSecret) -> Self {
        let by_old = sign(ROTATION_DOMAIN, &rotation, old);
        let by_new = sign(ROTATION_DOMAIN, &rotation, new);
        Self {
            rotation,
            by_old,
            by_new,
        }
    }

    /// Do `old` and the rotation's new key both sign it?
    pub fn signed_by(&self, old: &AuthorKey) -> bool {
        verify(ROTATION_DOMAIN, &self.rotation, old, &self.by_old)
            && verify(
                ROTATION_DOMAIN,
                &self.rotation,
                &self.rotation.new_key,
                &self.by_new,
            )
    }
}

/// The school keys, by version, that a chain of rotations proves.
/// `keys()[0]` is the identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChain {
    keys: Vec<AuthorKey>,
}

impl KeyChain {
    /// Follows `chain` from `identity`: each rotation must be the next
    /// version, name this school and be signed by the previous key and
    /// its new key.
    pub fn follow(identity: AuthorKey, chain: &[SignedRotation]) -> Result<Self, SchoolError> {
        if chain.len() > MAX_CHAIN {
            return Err(SchoolError::Invalid("school key chain too long".into()));
        }
        let mut keys = vec![identity];
        for (i, r) in chain.iter().enumerate() {
            let previous = keys[i];
            if r.rotation.school != identity || r.rotation.version as usize != i + 1 {
                return Err(SchoolError::Invalid(format!(
                    "school key rotation {} is out of order or for another school",
                    i + 1
                )));
            }
            if !r.signed_by(&previous) {
                return Err(SchoolError::BadSignature("a school key rotation"));
            }
            keys.push(r.rotation.new_key);
        }
        Ok(Self { keys })
    }

    /// The chain of a school that never rotated its key.
    pub fn identity(identity: AuthorKey) -> Self {
        Self {
            keys: vec![identity],
        }
    }

    /// The keys by version.
    pub fn keys(&self) -> &[AuthorKey] {
        &self.keys
    }

    /// The newest version.
    pub fn version(&self) -> u32 {
        (self.keys.len() - 1) as u32
    }

    /// The key of `version`, if the chain reaches it.
    pub fn key(&self, version: u32) -> Option<&AuthorKey> {
        self.keys.get(version as usize)
    }
}

/// A certificate with the rotations needed to check it from the school's
/// identity: what `classe school certify` prints, `classe id --cert`
/// installs and every lesson of a certified teacher carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Rotations from the identity to the key that signed the certificate.
    pub chain: Vec<SignedRotation>,
    /// The certificate.
    pub cert: SignedCertificate,
}

/// First word of the text form of credentials.
const CREDENTIALS_ARMOUR: &str = "classe-cert:";
/// First word of the text form of a bulletin.
const BULLETIN_ARMOUR: &str = "classe-school-bulletin:";

fn armour(prefix: &str, bytes: &[u8]) -> String {
    format!(
        "{prefix}{}",
        data_encoding::BASE32_NOPAD
            .encode(bytes)
            .to_ascii_lowercase()
    )
}

fn unarmour(text: &str, prefix: &'static str, what: &'static str) -> Result<Vec<u8>, SchoolError> {
    // The first line that starts with the prefix: a file may carry
    // comments for the person who reads it.
    let line = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(prefix))
        .ok_or(SchoolError::Armour(what, prefix))?;
    data_encoding::BASE32_NOPAD
        .decode(line.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| SchoolError::Decode(what))
}

impl Credentials {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes (no signature checked: see [`Credentials::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SchoolError> {
        decode_canonical(bytes, MAX_CREDENTIALS_BYTES, "certificate")
    }

    /// One line of text, `classe-cert:` then base32.
    pub fn to_text(&self) -> String {
        armour(CREDENTIALS_ARMOUR, &self.to_bytes())
    }

    /// Parses [`Credentials::to_text`] (a file may add comment lines).
    pub fn from_text(text: &str) -> Result<Self, SchoolError> {
        Self::from_bytes(&unarmour(text, CREDENTIALS_ARMOUR, "certificate")?)
    }

    /// Checks the chain from the certificate's school and the
    /// certificate's signature by the key it names; returns the chain.
    /// Dates, roles and revocation are the anchor's business.
    pub fn verify(&self) -> Result<KeyChain, SchoolError> {
        let cert = &self.cert.cert;
        let chain = KeyChain::follow(cert.school, &self.chain)?;
        let key = chain.key(cert.key_version).ok_or_else(|| {
            SchoolError::Invalid(
                "the certificate names a school key its chain does not reach".into(),
            )
        })?;
        if !self.cert.signed_by(key) {
            return Err(SchoolError::BadSignature("the certificate"));
        }
        check_name(&cert.name, "the teacher's name")?;
        check_name(&cert.school_name, "the school's name")?;
        Ok(chain)
    }
}

/// What a revocation names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Revoked {
    /// Every certificate of this author key.
    Key(AuthorKey),
    /// One certificate.
    Serial(u64),
}

/// One revoked key or certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEntry {
    /// What is revoked.
    pub what: Revoked,
    /// From when (seconds since the Unix epoch): lessons countersigned by
    /// the school's seed node before this time stay valid, nothing else
    /// does. Usually the time the laptop was lost.
    pub since: u64,
    /// Why, for people.
    pub reason: String,
}

/// The school's revocation list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// The school's identity.
    pub school: AuthorKey,
    /// Which school key signs it.
    pub key_version: u32,
    /// Raised by one for each new list; a node never goes back.
    pub seq: u64,
    /// When it was issued.
    pub issued: u64,
    /// When the school promises the next one at the latest.
    pub next_update: u64,
    /// Every revocation still in force.
    pub entries: Vec<RevocationEntry>,
}

/// A revocation list with the school key's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRevocations {
    /// The list.
    pub list: RevocationList,
    sig: Sig,
}

impl SignedRevocations {
    /// Signs `list` with the school key of its `key_version`.
    pub fn sign(list: RevocationList, key: &AuthorSecret) -> Result<Self, SchoolError> {
        if list.entries.len() > MAX_REVOKED {
            return Err(SchoolError::Invalid(format!(
                "more than {MAX_REVOKED} revocations in one list"
            )));
        }
        for e in &list.entries {
            check_reason(&e.reason)?;
        }
        let sig = sign(REVOCATION_DOMAIN, &list, key);
        Ok(Self { list, sig })
    }

    /// Is the list signed by the key of its version in `chain`, and
    /// within limits?
    pub fn verify(&self, chain: &KeyChain) -> Result<(), SchoolError> {
        let list = &self.list;
        if list.entries.len() > MAX_REVOKED {
            return Err(SchoolError::Invalid("revocation list too long".into()));
        }
        let key = chain.key(list.key_version).ok_or_else(|| {
            SchoolError::Invalid("the revocation list names an unknown school key".into())
        })?;
        if list.school != chain.keys()[0] || !verify(REVOCATION_DOMAIN, list, key, &self.sig) {
            return Err(SchoolError::BadSignature("the revocation list"));
        }
        Ok(())
    }

    /// The revocation that applies to a certificate, if any.
    pub fn revokes(&self, cert: &Certificate) -> Option<&RevocationEntry> {
        self.list.entries.iter().find(|e| match e.what {
            Revoked::Key(k) => k == cert.subject,
            Revoked::Serial(s) => s == cert.serial,
        })
    }
}

/// A lesson the seed node mirrored: its countersignature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The lesson's author.
    pub author: AuthorKey,
    /// The lesson.
    pub lesson_id: LessonId,
    /// The newest version the seed holds.
    pub version: u64,
    /// That version's bundle.
    pub root: [u8; 32],
    /// When the seed first held it.
    pub first_seen: u64,
}

/// The seed node's short-lived word: "as of `issued`, the school's
/// revocation list is at `revocation_seq`, and these are the latest
/// versions of its lessons".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The school's identity.
    pub school: AuthorKey,
    /// The revocation list the seed holds (0: none).
    pub revocation_seq: u64,
    /// When it was signed.
    pub issued: u64,
    /// The latest version of each lesson it mirrors, newest first.
    pub lessons: Vec<Seen>,
}

/// A statement, the seed's certificate (role mirror) and its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedStatement {
    /// The statement.
    pub statement: Statement,
    /// The signer's certificate, signed by a school key.
    pub signer: SignedCertificate,
    sig: Sig,
}

impl SignedStatement {
    /// Signs `statement` with the seed's author key, certified by `signer`.
    pub fn sign(
        mut statement: Statement,
        signer: SignedCertificate,
        key: &AuthorSecret,
    ) -> Result<Self, SchoolError> {
        if signer.cert.subject != key.public() {
            return Err(SchoolError::Invalid(
                "the certificate installed is not for this node's key".into(),
            ));
        }
        statement.lessons.truncate(MAX_STATEMENT_LESSONS);
        let sig = sign(STATEMENT_DOMAIN, &statement, key);
        Ok(Self {
            statement,
            signer,
            sig,
        })
    }

    /// Checks the signer's certificate against `chain` (signed by the key
    /// of its version, for this school, role mirror) and the signature.
    /// The certificate's dates and revocation are the anchor's business.
    pub fn verify(&self, chain: &KeyChain) -> Result<(), SchoolError> {
        let s = &self.statement;
        let cert = &self.signer.cert;
        if s.lessons.len() > MAX_STATEMENT_LESSONS {
            return Err(SchoolError::Invalid("statement too long".into()));
        }
        let key = chain.key(cert.key_version).ok_or_else(|| {
            SchoolError::Invalid("the statement's signer names an unknown school key".into())
        })?;
        if s.school != chain.keys()[0] || cert.school != s.school || !self.signer.signed_by(key) {
            return Err(SchoolError::BadSignature(
                "the seed node's certificate in the statement",
            ));
        }
        if cert.roles & ROLE_MIRROR == 0 {
            return Err(SchoolError::Invalid(
                "the statement's signer is not certified as a seed node".into(),
            ));
        }
        if !verify(STATEMENT_DOMAIN, s, &cert.subject, &self.sig) {
            return Err(SchoolError::BadSignature("the statement"));
        }
        Ok(())
    }
}

/// What travels on the school's gossip topic, in its DHT record and in a
/// file: the rotation chain, the newest revocation list and the newest
/// statement. Unsigned as a whole: each part is checked on its own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bulletin {
    /// Rotations from the identity.
    pub chain: Vec<SignedRotation>,
    /// The newest revocation list, if the school issued one.
    pub revocations: Option<SignedRevocations>,
    /// The newest statement of a seed node, if any.
    pub statement: Option<SignedStatement>,
}

impl Bulletin {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes (nothing verified yet: see [`Bulletin::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SchoolError> {
        decode_canonical(bytes, MAX_BULLETIN_BYTES, "school bulletin")
    }

    /// One line of text.
    pub fn to_text(&self) -> String {
        armour(BULLETIN_ARMOUR, &self.to_bytes())
    }

    /// Parses [`Bulletin::to_text`].
    pub fn from_text(text: &str) -> Result<Self, SchoolError> {
        Self::from_bytes(&unarmour(text, BULLETIN_ARMOUR, "school bulletin")?)
    }

    /// The school it is about, from whichever part names it.
    pub fn school(&self) -> Option<AuthorKey> {
        self.chain
            .first()
            .map(|r| r.rotation.school)
            .or_else(|| self.revocations.as_ref().map(|r| r.list.school))
            .or_else(|| self.statement.as_ref().map(|s| s.statement.school))
    }

    /// Checks every part against the school `identity`; returns the chain.
    pub fn verify(&self, identity: AuthorKey) -> Result<KeyChain, SchoolError> {
        let chain = KeyChain::follow(identity, &self.chain)?;
        if let Some(r) = &self.revocations {
            r.verify(&chain)?;
        }
        if let Some(s) = &self.statement {
            s.verify(&chain)?;
        }
        Ok(chain)
    }

    /// Is there anything in `self` that `other` lacks: a longer chain, a
    /// newer list, a newer statement? (Both verified by the caller.)
    pub fn newer_than(&self, other: &Bulletin) -> bool {
        let seq = |b: &Bulletin| b.revocations.as_ref().map_or(0, |r| r.list.seq);
        let issued = |b: &Bulletin| b.statement.as_ref().map_or(0, |s| s.statement.issued);
        self.chain.len() > other.chain.len()
            || seq(self) > seq(other)
            || issued(self) > issued(other)
    }

    /// Keeps, part by part, the newer of `self` and `other` (both verified
    /// against the same identity).
    pub fn merge(&mut self, other: Bulletin) {
        if other.chain.len() > self.chain.len() {
            self.chain = other.chain;
        }
        let seq = |r: &Option<SignedRevocations>| r.as_ref().map_or(0, |r| r.list.seq);
        if seq(&other.revocations) > seq(&self.revocations) {
            self.revocations = other.revocations;
        }
        let issued = |s: &Option<SignedStatement>| s.as_ref().map_or(0, |s| s.statement.issued);
        if issued(&other.statement) > issued(&self.statement) {
            self.statement = other.statement;
        }
    }
}

/// A message on a school's gossip topic.
/// Decoded, checked and dropped: the variants' sizes do not matter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum SchoolMsg {
    /// The school's current bulletin.
    Bulletin(Bulletin),
    /// A certified teacher's announcement (bytes of a
    /// [`crate::SignedAnnouncement`]), with the teacher's credentials, so
    /// that a seed following the school learns of a teacher it has never
    /// heard of.
    Announce {
        /// The teacher's credentials.
        credentials: Credentials,
        /// The signed announcement.
        announcement: Vec<u8>,
    },
}

impl SchoolMsg {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes (nothing verified).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SchoolError> {
        decode_canonical(bytes, MAX_BULLETIN_BYTES, "school message")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(school: &AuthorSecret, teacher: AuthorKey) -> Certificate {
        Certificate {
            school: school.public(),
            school_name: "Collège Jean Moulin".into(),
            key_version: 0,
            serial: 1,
            subject: teacher,
            name: "Mme Martin".into(),
            roles: ROLE_PUBLISH,
            not_before: 1_000,
            not_after: 2_000,
        }
    }

    #[test]
    fn credentials_round_trip_as_text_and_verify() {
        let school = AuthorSecret::generate();
        let teacher = AuthorSecret::generate().public();
        let creds = Credentials {
            chain: vec![],
            cert: SignedCertificate::sign(cert(&school, teacher), &school).unwrap(),
        };
        let text = format!("# for Mme Martin\n{}\n", creds.to_text());
        let back = Credentials::from_text(&text).unwrap();
        assert_eq!(back, creds);
        assert_eq!(back.verify().unwrap().version(), 0);
    }

    #[test]
    fn a_certificate_signed_by_another_key_is_refused() {
        let school = AuthorSecret::generate();
        let other = AuthorSecret::generate();
        let teacher = AuthorSecret::generate().public();
        let creds = Credentials {
            chain: vec![],
            cert: SignedCertificate::sign(cert(&school, teacher), &other).unwrap(),
        };
        assert_eq!(
            creds.verify(),
            Err(SchoolError::BadSignature("the certificate"))
        );
    }

    #[test]
    fn a_chain_must_be_signed_by_both_keys_in_order() {
        let k0 = AuthorSecret::generate();
        let k1 = AuthorSecret::generate();
        let k2 = AuthorSecret::generate();
        let rot = |v, new: &AuthorSecret| Rotation {
            school: k0.public(),
            version: v,
            new_key: new.public(),
            unix_secs: 5,
        };
        let r1 = SignedRotation::sign(rot(1, &k1), &k0, &k1);
        let r2 = SignedRotation::sign(rot(2, &k2), &k1, &k2);
        let chain = KeyChain::follow(k0.public(), &[r1, r2.clone()]).unwrap();
        assert_eq!(chain.key(2), Some(&k2.public()));
        // Out of order.
        assert!(KeyChain::follow(k0.public(), std::slice::from_ref(&r2)).is_err());
        // Not signed by the key it replaces.
        let forged = SignedRotation::sign(rot(1, &k2), &k1, &k2);
        assert!(KeyChain::follow(k0.public(), &[forged]).is_err());
    }

    #[test]
    fn changing_any_byte_of_credentials_breaks_them() {
        let school = AuthorSecret::generate();
        let teacher = AuthorSecret::generate().public();
        let creds = Credentials {
            chain: vec![],
            cert: SignedCertificate::sign(cert(&school, teacher), &school).unwrap(),
        };
        let bytes = creds.to_bytes();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            let accepted = Credentials::from_bytes(&damaged).and_then(|c| c.verify());
            assert!(accepted.is_err(), "flipping byte {i} was accepted");
        }
    }

    #[test]
    fn bulletins_merge_part_by_part() {
        let school = AuthorSecret::generate();
        let list = |seq| {
            SignedRevocations::sign(
                RevocationList {
                    school: school.public(),
                    key_version: 0,
                    seq,
                    issued: seq,
                    next_update: 99,
                    entries: vec![],
                },
                &school,
            )
            .unwrap()
        };
        let mut a = Bulletin {
            revocations: Some(list(2)),
            ..Bulletin::default()
        };
        let b = Bulletin {
            revocations: Some(list(1)),
            ..Bulletin::default()
        };
        assert!(a.verify(school.public()).is_ok());
        assert!(!b.newer_than(&a) && a.newer_than(&b));
        a.merge(b);
        assert_eq!(a.revocations.as_ref().unwrap().list.seq, 2);
        let other = AuthorSecret::generate();
        assert!(a.verify(other.public()).is_err());
    }
}
