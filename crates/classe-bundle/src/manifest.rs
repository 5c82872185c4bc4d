//! The signed manifest: what a bundle contains and who vouches for it.
//!
//! Encoding: postcard, which is deterministic for a given value. A decoder
//! accepts an input only if re-encoding the decoded value gives back the
//! exact same bytes, so there is one encoding per manifest and a signature
//! can never be moved onto a differently-encoded twin. The signature covers
//! [`SIGNATURE_DOMAIN`] followed by the encoded [`Manifest`], so a manifest
//! signature can never be confused with any other message the same key
//! signs (announcements, later formats).
//!
//! Two formats exist. Format 1 has no folder list; format 2 adds the empty
//! folders at the end of the manifest and is signed under its own domain
//! ([`SIGNATURE_DOMAIN_V2`]). A manifest is written in format 1 when it has
//! no empty folder and in format 2 otherwise, so there is still exactly one
//! accepted encoding per manifest, and a lesson without empty folders can
//! still be read by a classe that knows only format 1.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    keys::{AuthorKey, AuthorSecret},
    limits::{MAX_FILES, MAX_MANIFEST_BYTES, MAX_TITLE_BYTES, MAX_TOTAL_BYTES},
    path::{validate_tree, PathError},
    school::Credentials,
};

/// Prefix of every signed manifest message in format 1 (no empty folders).
pub const SIGNATURE_DOMAIN: &[u8] = b"classe/manifest/v1\0";

/// Prefix of every signed manifest message in format 2 (with empty
/// folders).
pub const SIGNATURE_DOMAIN_V2: &[u8] = b"classe/manifest/v2\0";

/// Prefix of every signed manifest message in format 3 (with the
/// teacher's school credentials).
pub const SIGNATURE_DOMAIN_V3: &[u8] = b"classe/manifest/v3\0";

/// Names a lesson across its versions: version 3 of a lesson has the same
/// lesson id as version 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LessonId(pub [u8; 16]);

impl LessonId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        Self(bytes)
    }
}

impl fmt::Display for LessonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for LessonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LessonId({self})")
    }
}

/// One file of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path with `/` separators; see [`crate::path`].
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 hash of the content (the iroh-blobs hash).
    pub hash: [u8; 32],
}

/// What the author signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Stable across versions of one lesson.
    pub lesson_id: LessonId,
    /// Raised by one each time the author shares a changed lesson.
    pub version: u64,
    /// Human title; also the default output folder name.
    pub title: String,
    /// Who signs it.
    pub author: AuthorKey,
    /// Seconds since the Unix epoch when it was signed.
    pub created_unix_secs: u64,
    /// The files, in the same order as the bundle's hash sequence after the
    /// manifest.
    pub files: Vec<FileEntry>,
    /// Folders that hold no file of the bundle, with `/` separators, each
    /// recreated (empty) on export. Only the deepest ones are listed: `a/b`
    /// implies `a`. Empty in format 1.
    pub dirs: Vec<String>,
    /// The teacher's certificate by their school, with the school's key
    /// chain (format 3): a pupil who trusts the school checks it offline.
    pub credentials: Option<Credentials>,
}

/// Format 2 of [`Manifest`]: without credentials.
#[derive(Serialize, Deserialize)]
struct ManifestV2 {
    lesson_id: LessonId,
    version: u64,
    title: String,
    author: AuthorKey,
    created_unix_secs: u64,
    files: Vec<FileEntry>,
    dirs: Vec<String>,
}

/// Format 3 of [`Manifest`]: format 2's fields, then the credentials.
#[derive(Serialize, Deserialize)]
struct ManifestV3 {
    lesson_id: LessonId,
    version: u64,
    title: String,
    author: AuthorKey,
    created_unix_secs: u64,
    files: Vec<FileEntry>,
    dirs: Vec<String>,
    credentials: Credentials,
}

/// The one format a manifest is written in, chosen by its content.
/// Short-lived (built to encode), so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Format {
    V1(ManifestV1),
    V2(ManifestV2),
    V3(ManifestV3),
}

impl Format {
    fn of(m: &Manifest) -> Self {
        match (&m.credentials, m.dirs.is_empty()) {
            (Some(credentials), _) => Format::V3(ManifestV3 {
                lesson_id: m.lesson_id,
                version: m.version,
                title: m.title.clone(),
                author: m.author,
                created_unix_secs: m.created_unix_secs,
                files: m.files.clone(),
                dirs: m.dirs.clone(),
                credentials: credentials.clone(),
            }),
            (None, true) => Format::V1(ManifestV1::of(m)),
            (None, false) => Format::V2(ManifestV2 {
                lesson_id: m.lesson_id,
                version: m.version,
                title: m.title.clone(),
                author: m.author,
                created_unix_secs: m.created_unix_secs,
                files: m.files.clone(),
                dirs: m.dirs.clone(),
            }),
        }
    }
}

impl ManifestV2 {
    fn into_manifest(self) -> Manifest {
        Manifest {
            lesson_id: self.lesson_id,
            version: self.version,
            title: self.title,
            author: self.author,
            created_unix_secs: self.created_unix_secs,
            files: self.files,
            dirs: self.dirs,
            credentials: None,
        }
    }
}

impl ManifestV3 {
    fn into_manifest(self) -> Manifest {
        Manifest {
            lesson_id: self.lesson_id,
            version: self.version,
            title: self.title,
            author: self.author,
            created_unix_secs: self.created_unix_secs,
            files: self.files,
            dirs: self.dirs,
            credentials: Some(self.credentials),
        }
    }
}

/// Format 1 of [`Manifest`]: the same fields without `dirs`.
#[derive(Serialize, Deserialize)]
struct ManifestV1 {
    lesson_id: LessonId,
    version: u64,
    title: String,
    author: AuthorKey,
    created_unix_secs: u64,
    files: Vec<FileEntry>,
}

impl ManifestV1 {
    fn of(m: &Manifest) -> Self {
        Self {
            lesson_id: m.lesson_id,
            version: m.version,
            title: m.title.clone(),
            author: m.author,
            created_unix_secs: m.created_unix_secs,
            files: m.files.clone(),
        }
    }

    fn into_manifest(self) -> Manifest {
        Manifest {
            lesson_id: self.lesson_id,
            version: self.version,
            title: self.title,
            author: self.author,
            created_unix_secs: self.created_unix_secs,
            files: self.files,
            dirs: Vec::new(),
            credentials: None,
        }
    }
}

/// Signature bytes, kept as two halves because serde has no 64-byte arrays.
type SignatureBytes = [[u8; 32]; 2];

/// The versioned envelope on the wire. A new format is a new variant, and
/// old readers refuse it with a clear error. `V2`'s manifest encodes as
/// `V1`'s followed by the folder list, `V3`'s as `V2`'s followed by the
/// credentials.
#[derive(Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
enum Wire {
    V1 {
        manifest: ManifestV1,
        signature: SignatureBytes,
    },
    V2 {
        manifest: ManifestV2,
        signature: SignatureBytes,
    },
    V3 {
        manifest: ManifestV3,
        signature: SignatureBytes,
    },
}

/// A manifest with its signature, as stored in the bundle's first blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedManifest {
    manifest: Manifest,
    signature: [u8; 64],
}

/// Why a manifest is refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {0} bytes, more than the limit of {MAX_MANIFEST_BYTES}")]
    TooLarge(usize),
    /// Not a manifest in a format this version understands.
    #[error("manifest cannot be decoded: {0}")]
    Decode(String),
    /// Decodes, but not from the one canonical encoding, or has bytes after
    /// the end.
    #[error("manifest is not canonically encoded")]
    NotCanonical,
    /// The signature does not match the manifest and its author key.
    #[error("manifest signature is invalid")]
    BadSignature,
    /// A file path is unsafe.
    #[error("manifest names an unsafe path: {0}")]
    UnsafePath(#[from] PathError),
    /// Too many files, too many bytes, or a bad title.
    #[error("manifest exceeds a limit: {0}")]
    Limit(String),
}

impl Manifest {
    /// The exact bytes the signature covers: format 1 without empty
    /// folders, format 2 with.
    pub fn signing_message(&self) -> Vec<u8> {
        // Encoding a plain struct into a Vec cannot fail.
        let (domain, body) = match Format::of(self) {
            Format::V1(m) => (SIGNATURE_DOMAIN, postcard::to_stdvec(&m)),
            Format::V2(m) => (SIGNATURE_DOMAIN_V2, postcard::to_stdvec(&m)),
            Format::V3(m) => (SIGNATURE_DOMAIN_V3, postcard::to_stdvec(&m)),
        };
        let mut message = domain.to_vec();
        message.extend(body.unwrap_or_default());
        message
    }

    /// Sum of all file sizes (saturating: a manifest not yet validated
    /// may claim sizes whose sum overflows).
    pub fn total_size(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |total, f| total.saturating_add(f.size))
    }

    /// Checks paths (of files and empty folders), entry count, total size
    /// and title.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let entries = self.files.len().saturating_add(self.dirs.len());
        if entries > MAX_FILES {
            return Err(ManifestError::Limit(format!(
                "{entries} files and folders, more than {MAX_FILES}"
            )));
        }
        let mut total: u64 = 0;
        for file in &self.files {
            total = total
                .checked_add(file.size)
                .filter(|t| *t <= MAX_TOTAL_BYTES)
                .ok_or_else(|| ManifestError::Limit("total size too large".into()))?;
        }
        if self.title.len() > MAX_TITLE_BYTES || self.title.chars().any(char::is_control) {
            return Err(ManifestError::Limit(
                "title too long or has control characters".into(),
            ));
        }
        validate_tree(
            self.files.iter().map(|f| f.path.as_str()),
            self.dirs.iter().map(String::as_str),
        )?;
        Ok(())
    }
}

impl SignedManifest {
    /// Validates and signs `manifest`. The author key in the manifest must be
    /// the public half of `secret`.
    pub fn sign(manifest: Manifest, secret: &AuthorSecret) -> Result<Self, ManifestError> {
        if manifest.author != secret.public() {
            return Err(ManifestError::BadSignature);
        }
        manifest.validate()?;
        let signature = secret.sign(&manifest.signing_message());
        let signed = Self {
            manifest,
            signature,
        };
        let len = signed.to_bytes().len();
        if len > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(len));
        }
        Ok(signed)
    }

    /// The manifest. Not yet trusted: call [`SignedManifest::verify`] first.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The signature bytes.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (a, b) = self.signature.split_at(32);
        let mut halves = [[0u8; 32]; 2];
        halves[0].copy_from_slice(a);
        halves[1].copy_from_slice(b);
        let wire = match Format::of(&self.manifest) {
            Format::V1(manifest) => Wire::V1 {
                manifest,
                signature: halves,
            },
            Format::V2(manifest) => Wire::V2 {
                manifest,
                signature: halves,
            },
            Format::V3(manifest) => Wire::V3 {
                manifest,
                signature: halves,
            },
        };
        postcard::to_stdvec(&wire).unwrap_or_default()
    }

    /// Decodes, refusing oversized, trailing or non-canonical input. Does
    /// not check the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let (wire, rest): (Wire, _) =
            postcard::take_from_bytes(bytes).map_err(|e| ManifestError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ManifestError::NotCanonical);
        }
        let (manifest, signature) = match wire {
            Wire::V1 {
                manifest,
                signature,
            } => (manifest.into_manifest(), signature),
            // A format-2 manifest with no folder re-encodes as format 1
            // and is refused as not canonical below.
            Wire::V2 {
                manifest,
                signature,
            } => (manifest.into_manifest(), signature),
            Wire::V3 {
                manifest,
                signature,
            } => (manifest.into_manifest(), signature),
        };
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&signature[0]);
        sig[32..].copy_from_slice(&signature[1]);
        let decoded = Self {
            manifest,
            signature: sig,
        };
        if decoded.to_bytes() != bytes {
            return Err(ManifestError::NotCanonical);
        }
        Ok(decoded)
    }

    /// Checks the signature against the author key named in the manifest.
    pub fn verify(&self) -> Result<(), ManifestError> {
        if self
            .manifest
            .author
            .verify(&self.manifest.signing_message(), &self.signature)
        {
            Ok(())
        } else {
            Err(ManifestError::BadSignature)
        }
    }

    /// Decodes, verifies the signature and validates the content: what a
    /// fetcher does before it trusts anything in a manifest.
    pub fn decode_verified(bytes: &[u8]) -> Result<Self, ManifestError> {
        let signed = Self::from_bytes(bytes)?;
        signed.verify()?;
        signed.manifest.validate()?;
        Ok(signed)
    }

    /// Pairs a manifest with signature bytes, checking nothing (the fuzz
    /// properties re-sign what they decode).
    pub(crate) fn from_parts(manifest: Manifest, signature: [u8; 64]) -> Self {
        Self {
            manifest,
            signature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secret: &AuthorSecret) -> Manifest {
        Manifest {
            lesson_id: LessonId([7; 16]),
            version: 3,
            title: "Les fractions — CM2".into(),
            author: secret.public(),
            created_unix_secs: 1_584_316_800,
            files: vec![
                FileEntry {
                    path: "cours.pdf".into(),
                    size: 1234,
                    hash: [1; 32],
                },
                FileEntry {
                    path: "exercices/série 1.txt".into(),
                    size: 0,
                    hash: [2; 32],
                },
            ],
            dirs: Vec::new(),
            credentials: None,
        }
    }

    fn with_dirs(secret: &AuthorSecret, dirs: &[&str]) -> Manifest {
        let mut m = sample(secret);
        m.dirs = dirs.iter().map(|d| d.to_string()).collect();
        m
    }

    /// Signs without validating, as a malicious author could.
    fn forge(manifest: Manifest, secret: &AuthorSecret) -> Vec<u8> {
        let signature = secret.sign(&manifest.signing_message());
        SignedManifest {
            manifest,
            signature,
        }
        .to_bytes()
    }

    #[test]
    fn manifest_round_trips() {
        let secret = AuthorSecret::generate();
        let signed = SignedManifest::sign(sample(&secret), &secret).unwrap();
        let bytes = signed.to_bytes();
        let back = SignedManifest::decode_verified(&bytes).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.manifest(), &sample(&secret));
    }

    #[test]
    fn changing_any_byte_breaks_the_manifest() {
        let secret = AuthorSecret::generate();
        let bytes = SignedManifest::sign(sample(&secret), &secret)
            .unwrap()
            .to_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80] {
                let mut damaged = bytes.clone();
                damaged[i] ^= flip;
                assert!(
                    SignedManifest::decode_verified(&damaged).is_err(),
                    "flipping bit {flip:#x} of byte {i} was accepted"
                );
            }
        }
    }

    #[test]
    fn trailing_and_truncated_bytes_are_refused() {
        let secret = AuthorSecret::generate();
        let bytes = SignedManifest::sign(sample(&secret), &secret)
            .unwrap()
            .to_bytes();
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            SignedManifest::from_bytes(&longer),
            Err(ManifestError::NotCanonical)
        ));
        assert!(SignedManifest::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(SignedManifest::from_bytes(&[]).is_err());
    }

    #[test]
    fn oversized_manifest_is_refused_before_decoding() {
        let big = vec![0u8; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            SignedManifest::from_bytes(&big),
            Err(ManifestError::TooLarge(_))
        ));
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let secret = AuthorSecret::generate();
        let other = AuthorSecret::generate();
        let mut manifest = sample(&secret);
        // Claims to be `secret`'s but is signed by `other`.
        let signature = other.sign(&manifest.signing_message());
        let forged = SignedManifest {
            manifest: manifest.clone(),
            signature,
        };
        assert!(matches!(
            SignedManifest::decode_verified(&forged.to_bytes()),
            Err(ManifestError::BadSignature)
        ));
        // And signing with the wrong secret is refused up front.
        manifest.author = secret.public();
        assert!(SignedManifest::sign(manifest, &other).is_err());
    }

    #[test]
    fn unsafe_paths_are_refused_on_sign_and_on_decode() {
        let secret = AuthorSecret::generate();
        let mut manifest = sample(&secret);
        manifest.files[0].path = "../escape".into();
        assert!(matches!(
            SignedManifest::sign(manifest.clone(), &secret),
            Err(ManifestError::UnsafePath(_))
        ));
        // A malicious author can still produce such bytes; the reader refuses.
        let signature = secret.sign(&manifest.signing_message());
        let bytes = SignedManifest {
            manifest,
            signature,
        }
        .to_bytes();
        assert!(matches!(
            SignedManifest::decode_verified(&bytes),
            Err(ManifestError::UnsafePath(_))
        ));
    }

    #[test]
    fn total_size_of_an_unvalidated_manifest_does_not_overflow() {
        // Found by fuzzing: sizes whose sum overflows made `total_size`
        // panic (debug) or wrap (release) on a manifest not yet validated.
        let secret = AuthorSecret::generate();
        let mut manifest = sample(&secret);
        manifest.files[0].size = u64::MAX;
        manifest.files[1].size = 2;
        assert_eq!(manifest.total_size(), u64::MAX);
        assert!(matches!(manifest.validate(), Err(ManifestError::Limit(_))));
    }

    #[test]
    fn encoding_is_deterministic() {
        let secret = AuthorSecret::generate();
        let a = SignedManifest::sign(sample(&secret), &secret).unwrap();
        let b = SignedManifest::sign(sample(&secret), &secret).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
    }

    #[test]
    fn empty_folders_round_trip_in_format_2() {
        let secret = AuthorSecret::generate();
        let manifest = with_dirs(&secret, &["à rendre", "a/b/c"]);
        let signed = SignedManifest::sign(manifest.clone(), &secret).unwrap();
        let bytes = signed.to_bytes();
        assert_eq!(bytes[0], 1, "format 2 is variant 1");
        let back = SignedManifest::decode_verified(&bytes).unwrap();
        assert_eq!(back.manifest(), &manifest);
        assert!(manifest.signing_message().starts_with(SIGNATURE_DOMAIN_V2));
        // Every byte counts in format 2 too.
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            assert!(
                SignedManifest::decode_verified(&damaged).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn a_manifest_without_empty_folders_is_written_in_format_1() {
        let secret = AuthorSecret::generate();
        let signed = SignedManifest::sign(sample(&secret), &secret).unwrap();
        let bytes = signed.to_bytes();
        assert_eq!(bytes[0], 0);
        // Format 1's layout: no folder list between the files and the
        // signature (the worked example of docs/bundle-format.md).
        let v1 = postcard::to_stdvec(&ManifestV1::of(signed.manifest())).unwrap();
        assert_eq!(&bytes[1..bytes.len() - 64], &v1[..]);
        assert!(signed
            .manifest()
            .signing_message()
            .starts_with(SIGNATURE_DOMAIN));
    }

    fn certified(secret: &AuthorSecret) -> Manifest {
        use crate::school::{Certificate, SignedCertificate, ROLE_PUBLISH};
        let school = AuthorSecret::generate();
        let cert = Certificate {
            school: school.public(),
            school_name: "Collège Jean Moulin".into(),
            key_version: 0,
            serial: 7,
            subject: secret.public(),
            name: "Mme Martin".into(),
            roles: ROLE_PUBLISH,
            not_before: 1,
            not_after: 2,
        };
        let mut m = with_dirs(secret, &["à rendre"]);
        m.credentials = Some(Credentials {
            chain: vec![],
            cert: SignedCertificate::sign(cert, &school).unwrap(),
        });
        m
    }

    #[test]
    fn format_3_carries_the_certificate_under_its_own_domain() {
        let secret = AuthorSecret::generate();
        let signed = SignedManifest::sign(certified(&secret), &secret).unwrap();
        let bytes = signed.to_bytes();
        assert_eq!(bytes[0], 2, "variant V3");
        let back = SignedManifest::decode_verified(&bytes).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.manifest(), &certified_manifest_of(&signed));
        assert!(signed
            .manifest()
            .signing_message()
            .starts_with(SIGNATURE_DOMAIN_V3));
        // The same content without the certificate is another manifest,
        // signed under format 2's domain: a certificate cannot be removed
        // or added without the author's signature.
        let mut stripped = back.manifest().clone();
        stripped.credentials = None;
        let forged = SignedManifest::from_parts(stripped, *signed.signature()).to_bytes();
        assert!(matches!(
            SignedManifest::decode_verified(&forged),
            Err(ManifestError::BadSignature)
        ));
    }

    fn certified_manifest_of(m: &SignedManifest) -> Manifest {
        m.manifest().clone()
    }

    #[test]
    fn format_2_with_no_folder_is_not_canonical() {
        let secret = AuthorSecret::generate();
        let m = sample(&secret);
        let manifest = ManifestV2 {
            lesson_id: m.lesson_id,
            version: m.version,
            title: m.title,
            author: m.author,
            created_unix_secs: m.created_unix_secs,
            files: m.files,
            dirs: m.dirs,
        };
        let mut message = SIGNATURE_DOMAIN_V2.to_vec();
        message.extend(postcard::to_stdvec(&manifest).unwrap());
        let signature = secret.sign(&message);
        let (a, b) = signature.split_at(32);
        let wire = Wire::V2 {
            manifest,
            signature: [a.try_into().unwrap(), b.try_into().unwrap()],
        };
        let bytes = postcard::to_stdvec(&wire).unwrap();
        assert!(matches!(
            SignedManifest::from_bytes(&bytes),
            Err(ManifestError::NotCanonical)
        ));
    }

    #[test]
    fn unsafe_empty_folders_are_refused_on_sign_and_on_decode() {
        let secret = AuthorSecret::generate();
        for bad in [
            "../x",
            "a/../../b",
            "/etc",
            "C:/x",
            "con",
            "cours.pdf",
            "exercices",
        ] {
            let manifest = with_dirs(&secret, &[bad]);
            assert!(
                matches!(
                    SignedManifest::sign(manifest.clone(), &secret),
                    Err(ManifestError::UnsafePath(_))
                ),
                "{bad:?} was signed"
            );
            let bytes = forge(manifest, &secret);
            assert!(
                matches!(
                    SignedManifest::decode_verified(&bytes),
                    Err(ManifestError::UnsafePath(_))
                ),
                "{bad:?} was accepted"
            );
        }
    }
}
