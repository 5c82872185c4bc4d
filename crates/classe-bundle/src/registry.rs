//! The school's own side: its root key and its register of certificates
//! and revocations, kept in a folder of its own (`<home>/school/`),
//! separate from the author key.
//!
//! - `key`: the current school key (mode 0600, the author key format);
//! - `register.json`: the identity, the name, the key version, the next
//!   serial, the certificates issued, and the current bulletin (rotation
//!   chain and revocation list) as text.
//!
//! The whole folder can be exported to one file (mode 0600) and imported
//! on another machine: the school key is meant to live offline, on a
//! machine or USB stick used only for `classe school`.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{
    keys::{AuthorKey, AuthorSecret, KeyError},
    school::{
        Bulletin, Certificate, Credentials, RevocationEntry, RevocationList, Revoked, Rotation,
        SchoolError, SignedCertificate, SignedRevocations, SignedRotation, MAX_CHAIN,
    },
};

/// First line of an exported school file.
const EXPORT_HEADER: &str = "classe-school-export-v1";

/// A school-key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No school key in this home.
    #[error("this home has no school key; create one with `classe school init --name NAME` or bring one with `classe school import FILE`")]
    Missing,
    /// `init` or `import` over an existing school key.
    #[error("this home already holds the school key of {0}; use another --home")]
    Exists(String),
    /// Reading or writing failed.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The key file.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A file is not what it should be.
    #[error("{path} is damaged or not a classe school file")]
    Damaged {
        /// The file.
        path: String,
    },
    /// Signing refused the content.
    #[error(transparent)]
    School(#[from] SchoolError),
    /// A revocation names nothing this school issued.
    #[error("no certificate with serial {0} was issued by this school")]
    UnknownSerial(u64),
    /// Too many rotations.
    #[error("the school key was rotated {MAX_CHAIN} times already; create a new school key")]
    ChainFull,
}

/// A certificate this school issued, as the register keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Issued {
    /// Its serial.
    pub serial: u64,
    /// The teacher's key.
    pub subject: String,
    /// The teacher's name.
    pub name: String,
    /// Role bits.
    pub roles: u8,
    /// Valid until (seconds since the epoch).
    pub not_after: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Register {
    identity: String,
    name: String,
    key_version: u32,
    next_serial: u64,
    issued: Vec<Issued>,
    /// [`Bulletin::to_text`]: the chain and the current revocation list.
    bulletin: String,
}

/// An open school register with its key.
pub struct SchoolKeys {
    dir: PathBuf,
    key: AuthorSecret,
    identity: AuthorKey,
    register: Register,
    bulletin: Bulletin,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl SchoolKeys {
    /// Creates a school key and an empty register in `dir`.
    pub fn init(dir: &Path, name: &str) -> Result<Self, RegistryError> {
        if let Ok(existing) = Self::open(dir) {
            return Err(RegistryError::Exists(existing.register.name));
        }
        let key = AuthorSecret::generate();
        let identity = key.public();
        let keys = Self {
            dir: dir.to_path_buf(),
            identity,
            register: Register {
                identity: identity.to_string(),
                name: crate::trust::clean_name(name),
                key_version: 0,
                next_serial: 1,
                issued: Vec::new(),
                bulletin: Bulletin::default().to_text(),
            },
            bulletin: Bulletin::default(),
            key,
        };
        keys.save()?;
        Ok(keys)
    }

    /// Opens the register in `dir`.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        let key_path = dir.join("key");
        if !key_path.exists() {
            return Err(RegistryError::Missing);
        }
        let key = AuthorSecret::load(&key_path)?;
        let path = dir.join("register.json");
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let damaged = || RegistryError::Damaged {
            path: path.display().to_string(),
        };
        let register: Register = serde_json::from_str(&text).map_err(|_| damaged())?;
        let identity: AuthorKey = register.identity.parse().map_err(|_| damaged())?;
        let bulletin = Bulletin::from_text(&register.bulletin).map_err(|_| damaged())?;
        let chain = bulletin.verify(identity).map_err(|_| damaged())?;
        if chain.key(register.key_version) != Some(&key.public()) {
            return Err(damaged());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            identity,
            register,
            bulletin,
        })
    }

    /// The school's identity: the key families install.
    pub fn identity(&self) -> AuthorKey {
        self.identity
    }

    /// The school's name.
    pub fn name(&self) -> &str {
        &self.register.name
    }

    /// The current key version.
    pub fn key_version(&self) -> u32 {
        self.register.key_version
    }

    /// The certificates issued.
    pub fn issued(&self) -> &[Issued] {
        &self.register.issued
    }

    /// The current bulletin (chain and revocation list).
    pub fn bulletin(&self) -> &Bulletin {
        &self.bulletin
    }

    /// Signs a certificate for `subject` and records it.
    pub fn certify(
        &mut self,
        subject: AuthorKey,
        name: &str,
        roles: u8,
        not_before: u64,
        not_after: u64,
    ) -> Result<Credentials, RegistryError> {
        let cert = Certificate {
            school: self.identity,
            school_name: self.register.name.clone(),
            key_version: self.register.key_version,
            serial: self.register.next_serial,
            subject,
            name: crate::trust::clean_name(name),
            roles,
            not_before,
            not_after,
        };
        let signed = SignedCertificate::sign(cert.clone(), &self.key)?;
        self.register.next_serial += 1;
        self.register.issued.push(Issued {
            serial: cert.serial,
            subject: subject.to_string(),
            name: cert.name,
            roles,
            not_after,
        });
        self.save()?;
        Ok(Credentials {
            chain: self.bulletin.chain.clone(),
            cert: signed,
        })
    }

    /// Adds a revocation and signs the next list (sequence + 1). Entries
    /// whose certificates have all expired before `now` are dropped, so
    /// the list stays short.
    pub fn revoke(
        &mut self,
        what: Revoked,
        since: u64,
        reason: &str,
        now: u64,
        next_update: u64,
    ) -> Result<&SignedRevocations, RegistryError> {
        if let Revoked::Serial(s) = what {
            if !self.register.issued.iter().any(|i| i.serial == s) {
                return Err(RegistryError::UnknownSerial(s));
            }
        }
        let mut entries: Vec<RevocationEntry> = self
            .bulletin
            .revocations
            .as_ref()
            .map(|r| r.list.entries.clone())
            .unwrap_or_default();
        entries.retain(|e| e.what != what && self.still_valid(&e.what, now));
        entries.push(RevocationEntry {
            what,
            since,
            reason: crate::trust::clean_name(reason),
        });
        let seq = self.bulletin.revocations.as_ref().map_or(0, |r| r.list.seq) + 1;
        let list = RevocationList {
            school: self.identity,
            key_version: self.register.key_version,
            seq,
            issued: now,
            next_update,
            entries,
        };
        self.bulletin.revocations = Some(SignedRevocations::sign(list, &self.key)?);
        self.save()?;
        self.bulletin
            .revocations
            .as_ref()
            .ok_or(RegistryError::Missing)
    }

    /// Does any certificate named by `what` still run after `now`?
    /// (Unknown keys are kept: they may be certificates of another
    /// register.)
    fn still_valid(&self, what: &Revoked, now: u64) -> bool {
        let mut matching = self.register.issued.iter().filter(|i| match what {
            Revoked::Serial(s) => i.serial == *s,
            Revoked::Key(k) => i.subject == k.to_string(),
        });
        let mut any = false;
        let valid = matching.any(|i| {
            any = true;
            i.not_after >= now
        });
        valid || !any
    }

    /// Replaces the school key by a new one, signed by both. The
    /// revocation list is signed again by the new key; teachers need new
    /// certificates (pupils refuse ones signed by a retired key).
    pub fn rotate(&mut self, now: u64) -> Result<&Bulletin, RegistryError> {
        if self.bulletin.chain.len() >= MAX_CHAIN {
            return Err(RegistryError::ChainFull);
        }
        let new = AuthorSecret::generate();
        let rotation = Rotation {
            school: self.identity,
            version: self.register.key_version + 1,
            new_key: new.public(),
            unix_secs: now,
        };
        self.bulletin
            .chain
            .push(SignedRotation::sign(rotation, &self.key, &new));
        self.register.key_version += 1;
        self.key = new;
        if let Some(r) = self.bulletin.revocations.take() {
            let mut list = r.list;
            list.key_version = self.register.key_version;
            list.seq += 1;
            list.issued = now;
            self.bulletin.revocations = Some(SignedRevocations::sign(list, &self.key)?);
        }
        self.save()?;
        Ok(&self.bulletin)
    }

    fn save(&self) -> Result<(), RegistryError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        // The key first: a register never names a key that is not on disk.
        self.key.save(&self.dir.join("key"))?;
        let mut register = self.register.clone();
        register.bulletin = self.bulletin.to_text();
        let path = self.dir.join("register.json");
        let text = serde_json::to_string_pretty(&register).unwrap_or_default();
        crate::trust::write_atomic(&path, text.as_bytes()).map_err(io_err(&path))
    }

    /// Writes the key and the register to one new file (mode 0600).
    pub fn export(&self, file: &Path) -> Result<(), RegistryError> {
        let mut register = self.register.clone();
        register.bulletin = self.bulletin.to_text();
        let text = Zeroizing::new(format!(
            "{EXPORT_HEADER}\n{}{}\n",
            self.key.file_text().as_str(),
            serde_json::to_string(&register).unwrap_or_default()
        ));
        write_private_new(file, text.as_bytes()).map_err(io_err(file))
    }

    /// Reads a file written by [`SchoolKeys::export`] into `dir`.
    pub fn import(dir: &Path, file: &Path) -> Result<Self, RegistryError> {
        if let Ok(existing) = Self::open(dir) {
            return Err(RegistryError::Exists(existing.register.name));
        }
        let text = Zeroizing::new(fs::read_to_string(file).map_err(io_err(file))?);
        let damaged = || RegistryError::Damaged {
            path: file.display().to_string(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(EXPORT_HEADER) {
            return Err(damaged());
        }
        let key_text = Zeroizing::new(format!(
            "{}\n{}\n",
            lines.next().unwrap_or_default(),
            lines.next().unwrap_or_default()
        ));
        let key = AuthorSecret::from_file_text(&key_text).ok_or_else(damaged)?;
        let register: Register =
            serde_json::from_str(lines.next().unwrap_or_default()).map_err(|_| damaged())?;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        key.save(&dir.join("key"))?;
        let path = dir.join("register.json");
        let json = serde_json::to_string_pretty(&register).unwrap_or_default();
        crate::trust::write_atomic(&path, json.as_bytes()).map_err(io_err(&path))?;
        Self::open(dir).map_err(|e| {
            // Leave nothing half-imported behind.
            let _ = fs::remove_file(dir.join("key"));
            let _ = fs::remove_file(&path);
            match e {
                RegistryError::Damaged { .. } => damaged(),
                e => e,
            }
        })
    }
}

/// Creates `path` (which must not exist) with mode 0600 and writes it.
fn write_private_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::school::ROLE_PUBLISH;

    #[test]
    fn a_register_certifies_revokes_rotates_and_survives_export() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("school");
        let mut school = SchoolKeys::init(&home, "Collège Jean Moulin").unwrap();
        assert!(SchoolKeys::init(&home, "again").is_err());
        let teacher = AuthorSecret::generate().public();
        let creds = school
            .certify(teacher, "Mme Martin", ROLE_PUBLISH, 10, 1000)
            .unwrap();
        assert_eq!(creds.verify().unwrap().version(), 0);
        assert_eq!(creds.cert.cert.serial, 1);
        let list = school
            .revoke(Revoked::Serial(1), 50, "laptop stolen", 60, 900)
            .unwrap();
        assert_eq!(list.list.seq, 1);
        assert!(school.revoke(Revoked::Serial(9), 50, "", 60, 900).is_err());
        school.rotate(70).unwrap();
        assert_eq!(school.key_version(), 1);
        let b = school.bulletin().clone();
        let chain = b.verify(school.identity()).unwrap();
        assert_eq!(chain.version(), 1);
        assert_eq!(b.revocations.as_ref().unwrap().list.seq, 2);
        let again = SchoolKeys::open(&home).unwrap();
        assert_eq!(again.key_version(), 1);
        let file = dir.path().join("export");
        again.export(&file).unwrap();
        assert!(again.export(&file).is_err(), "never overwrites a file");
        let copy = SchoolKeys::import(&dir.path().join("other"), &file).unwrap();
        assert_eq!(copy.identity(), again.identity());
        assert_eq!(copy.issued().len(), 1);
    }
}
