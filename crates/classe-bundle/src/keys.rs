//! Author keys: the teacher's signing identity.
//!
//! An author key is an ed25519 key pair. Its public half is shown to people
//! as 52 lowercase base32 characters (the same alphabet iroh uses for node
//! ids), so it can be read aloud, pasted into a chat, or typed. The secret
//! half lives in one file with mode 0600, is zeroized on drop and never
//! appears in `Debug` output.

use std::{fmt, fs, io, path::Path, str::FromStr};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use zeroize::Zeroizing;

/// The public half of an author key.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct AuthorKey([u8; 32]);

/// The secret half of an author key. `Debug` prints only the public key.
pub struct AuthorSecret(SigningKey);

/// A text that is not an author key.
#[derive(Debug, thiserror::Error)]
pub enum ParseKeyError {
    /// Not base32, or not 32 bytes long once decoded.
    #[error("not an author key: expected 52 base32 characters (a-z, 2-7)")]
    Encoding,
    /// 32 bytes, but not a point on the curve.
    #[error("not an author key: the bytes are not a valid ed25519 public key")]
    NotOnCurve,
}

/// Loading or saving a secret key file failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading the key file failed.
    #[error("cannot read key file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing the key file failed.
    #[error("cannot write key file {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file does not hold a key in our format.
    #[error("key file {path} is damaged or not a classe key file")]
    Format {
        /// The file.
        path: String,
    },
}

const BASE32: data_encoding::Encoding = data_encoding::BASE32_NOPAD;

/// First line of a secret key file; makes the file self-describing.
const SECRET_FILE_HEADER: &str = "classe-secret-key-v1";

impl AuthorKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Wraps raw bytes, checking they are a valid ed25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, ParseKeyError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| ParseKeyError::NotOnCurve)?;
        Ok(Self(bytes))
    }

    /// Checks `signature` over `message`. Strict verification: rejects
    /// small-order keys and non-canonical signatures.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let signature = Signature::from_bytes(signature);
        key.verify_strict(message, &signature).is_ok() && key.verify(message, &signature).is_ok()
    }

    /// The first 10 characters, for logs and tables.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(10);
        s
    }
}

impl fmt::Display for AuthorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32.encode(&self.0).to_ascii_lowercase())
    }
}

impl fmt::Debug for AuthorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorKey({})", self.short())
    }
}

impl FromStr for AuthorKey {
    type Err = ParseKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        let bytes = BASE32
            .decode(upper.as_bytes())
            .map_err(|_| ParseKeyError::Encoding)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| ParseKeyError::Encoding)?;
        Self::from_bytes(bytes)
    }
}

impl AuthorSecret {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// Wraps 32 secret bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(bytes))
    }

    /// The 32 secret bytes, in a buffer that is wiped when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> AuthorKey {
        AuthorKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Reads a key file written by [`AuthorSecret::save`].
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?);
        Self::from_file_text(&text).ok_or_else(|| KeyError::Format {
            path: path.display().to_string(),
        })
    }

    /// Parses the content of a key file written by [`AuthorSecret::save`];
    /// None if it is not one.
    pub(crate) fn from_file_text(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next() != Some(SECRET_FILE_HEADER) {
            return None;
        }
        let body = lines.next()?;
        let bytes = Zeroizing::new(
            BASE32
                .decode(body.trim().to_ascii_uppercase().as_bytes())
                .ok()?,
        );
        let bytes: &[u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(Self::from_bytes(bytes))
    }

    /// The content [`AuthorSecret::save`] writes.
    pub(crate) fn file_text(&self) -> Zeroizing<String> {
        self.body()
    }

    /// Loads the key at `path`, or creates one there if the file does not
    /// exist yet. Safe against a concurrent first use (`classe id` and
    /// `classe share` started together on a fresh home): exactly one key is
    /// created, and every caller gets the one on disk.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match Self::load(path) {
            Ok(key) => Ok(key),
            Err(KeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Self::create_new(path)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a key at `path` unless one is there already, in which case
    /// that one is loaded. The complete file is written under a name of
    /// its own and then hard-linked into place: the link fails if `path`
    /// exists, so two processes can never both win, and nobody ever reads
    /// half a file.
    fn create_new(path: &Path) -> Result<Self, KeyError> {
        let err = |source| KeyError::Write {
            path: path.display().to_string(),
            source,
        };
        let key = Self::generate();
        let tmp = key.write_temp(path).map_err(err)?;
        let linked = fs::hard_link(&tmp, path);
        // The temporary name goes either way; the key lives on at `path`.
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(key),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            // A file system without hard links (a FAT USB stick): create
            // the file itself exclusively; still one winner.
            Err(_) => match key.write_exclusive(path) {
                Ok(()) => Ok(key),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
                Err(e) => Err(err(e)),
            },
        }
    }

    /// Writes the key with mode 0600, atomically: a crash leaves either the
    /// old file or the new one, never half of one. Replaces a key already
    /// there (`classe id --import --force`).
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let err = |source| KeyError::Write {
            path: path.display().to_string(),
            source,
        };
        let tmp = self.write_temp(path).map_err(err)?;
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err(e)
        })
    }

    fn body(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{SECRET_FILE_HEADER}\n{}\n",
            BASE32
                .encode(self.to_bytes().as_slice())
                .to_ascii_lowercase()
        ))
    }

    /// Creates `path` only if it does not exist, and writes the key.
    fn write_exclusive(&self, path: &Path) -> io::Result<()> {
        use std::io::Write;
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        file.write_all(self.body().as_bytes())?;
        file.sync_all()
    }

    /// The key file's content, written and synced under a temporary name
    /// beside `path` that no other process uses.
    fn write_temp(&self, path: &Path) -> io::Result<std::path::PathBuf> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let body = self.body();
        // Unique per process and call: pid, and the new key's own public
        // half (random) as a nonce.
        let name = format!(
            "{}.{}.{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id(),
            &self.public().to_string()[..8]
        );
        let tmp = path.with_file_name(name);
        write_private(&tmp, body.as_bytes())?;
        Ok(tmp)
    }
}

/// Creates `path` readable by its owner only and writes `data` to it.
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // The mode above only applies when the file is created.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(data)?;
    file.sync_all()
}

impl fmt::Debug for AuthorSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AuthorSecret(public={}, secret=<redacted>)",
            self.public().short()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_use_creates_one_key_that_everyone_gets() {
        // `classe id` and `classe share` started together on a fresh home
        // once ended with two different keys, one of them not on disk.
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("author.key");
            let keys: Vec<AuthorKey> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| AuthorSecret::load_or_create(&path).unwrap().public()))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let on_disk = AuthorSecret::load(&path).unwrap().public();
            assert!(
                keys.iter().all(|k| *k == on_disk),
                "round {round}: {keys:?} vs {on_disk:?}"
            );
            // No temporary file is left beside it.
            let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(names.len(), 1, "round {round}: {names:?}");
        }
    }

    #[test]
    fn key_text_round_trips() {
        let key = AuthorSecret::generate().public();
        let text = key.to_string();
        assert_eq!(text.len(), 52);
        assert_eq!(text.parse::<AuthorKey>().unwrap(), key);
        assert_eq!(text.to_uppercase().parse::<AuthorKey>().unwrap(), key);
    }

    #[test]
    fn damaged_key_text_is_refused() {
        let text = AuthorSecret::generate().public().to_string();
        assert!(text[..51].parse::<AuthorKey>().is_err());
        assert!(format!("{text}a").parse::<AuthorKey>().is_err());
        assert!("hello".parse::<AuthorKey>().is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let key = AuthorSecret::generate();
        let secret_text = BASE32
            .encode(key.to_bytes().as_slice())
            .to_ascii_lowercase();
        let debug = format!("{key:?}");
        assert!(debug.contains("redacted"));
        assert!(!debug.contains(&secret_text[..12]));
    }

    #[test]
    fn key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/author.key");
        let key = AuthorSecret::load_or_create(&path).unwrap();
        let again = AuthorSecret::load_or_create(&path).unwrap();
        assert_eq!(key.public(), again.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn damaged_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("author.key");
        fs::write(&path, "classe-secret-key-v1\nnot base32!\n").unwrap();
        assert!(matches!(
            AuthorSecret::load(&path),
            Err(KeyError::Format { .. })
        ));
        fs::write(&path, "something else\n").unwrap();
        assert!(matches!(
            AuthorSecret::load(&path),
            Err(KeyError::Format { .. })
        ));
    }

    #[test]
    fn signatures_verify_only_for_the_signed_message() {
        let key = AuthorSecret::generate();
        let sig = key.sign(b"hello");
        assert!(key.public().verify(b"hello", &sig));
        assert!(!key.public().verify(b"hellO", &sig));
        assert!(!AuthorSecret::generate().public().verify(b"hello", &sig));
    }
}
