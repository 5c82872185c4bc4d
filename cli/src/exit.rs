//! Exit codes and the error type that carries them. Documented in
//! `docs/cli.md`; scripts rely on them, so they only ever grow.

use std::fmt;

/// Success.
#[allow(dead_code)]
pub const OK: i32 = 0;
/// A bug or an unexpected failure.
pub const INTERNAL: i32 = 1;
/// Bad command line, bad ticket, bad key or bad argument.
pub const USAGE: i32 = 2;
/// The signer is not trusted, the signature is invalid, or the bundle is
/// signed by another key than the ticket says.
pub const UNTRUSTED: i32 = 3;
/// Data failed verification, or the manifest is unsafe.
pub const VERIFY: i32 = 4;
/// No provider could be reached or deliver the bundle in time.
pub const UNREACHABLE: i32 = 5;
/// Local I/O: disk full, permission denied, destination exists, home in
/// use by another process.
pub const IO: i32 = 6;
/// Interrupted by Ctrl-C or SIGTERM before finishing.
pub const INTERRUPTED: i32 = 130;

/// A failure to report: one sentence for the user, an exit code, and
/// optionally the underlying chain for `-v`.
#[derive(Debug)]
pub struct Exit {
    code: i32,
    message: String,
    chain: Option<String>,
}

impl Exit {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            chain: None,
        }
    }

    /// Keeps the error's source chain for `-v`.
    pub fn with_source(mut self, source: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = String::new();
        let mut next = Some(source);
        while let Some(e) = next {
            chain.push_str(&format!("  caused by: {e}\n"));
            next = e.source();
        }
        self.chain = Some(chain.trim_end().to_string());
        self
    }

    pub fn code(&self) -> i32 {
        self.code
    }

    pub fn chain(&self) -> Option<&str> {
        self.chain.as_deref()
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Shorthand: an I/O failure with its cause, for `map_err`.
pub fn io(message: impl Into<String>) -> impl FnOnce(std::io::Error) -> Exit {
    let message = message.into();
    move |e| Exit::new(IO, format!("{message}: {e}")).with_source(&e)
}

// The one table from library errors to exit codes. Every command converts
// with `?`; docs/cli.md lists the code of each error a user can meet, and
// tests/exit_codes.rs checks some per command.

impl From<classe_store::OpenError> for Exit {
    /// Usually the home is in use by another classe.
    fn from(e: classe_store::OpenError) -> Self {
        Exit::new(IO, e.to_string()).with_source(&e)
    }
}

impl From<classe_store::ReadError> for Exit {
    /// The disk failed: IO. No such bundle: USAGE. What the store holds
    /// does not verify: VERIFY.
    fn from(e: classe_store::ReadError) -> Self {
        let code = match &e {
            classe_store::ReadError::Store(_) => IO,
            classe_store::ReadError::NotFound(_) => USAGE,
            _ => VERIFY,
        };
        Exit::new(code, e.to_string()).with_source(&e)
    }
}

impl From<classe_node::RelayError> for Exit {
    /// A relay that cannot bind is local I/O; a bad URL or certificate
    /// file is a usage error.
    fn from(e: classe_node::RelayError) -> Self {
        let code = match &e {
            classe_node::RelayError::Spawn { .. } => IO,
            _ => USAGE,
        };
        Exit::new(code, e.to_string()).with_source(&e)
    }
}

impl From<classe_node::SpawnError> for Exit {
    fn from(e: classe_node::SpawnError) -> Self {
        match e {
            classe_node::SpawnError::Relay(r) => r.into(),
            classe_node::SpawnError::Bind { .. } | classe_node::SpawnError::Control(_) => {
                Exit::new(IO, e.to_string()).with_source(&e)
            }
        }
    }
}

impl From<classe_node::SeedError> for Exit {
    fn from(e: classe_node::SeedError) -> Self {
        match e {
            classe_node::SeedError::Store(r) => r.into(),
            classe_node::SeedError::Schools(a) => a.into(),
            classe_node::SeedError::NoControl | classe_node::SeedError::Out { .. } => {
                Exit::new(IO, e.to_string()).with_source(&e)
            }
        }
    }
}

impl From<classe_node::FetchError> for Exit {
    fn from(e: classe_node::FetchError) -> Self {
        use classe_node::FetchError;
        let message = match &e {
            FetchError::Untrusted(key) => format!(
                "the lesson is signed by {key}, whom you do not trust; if you know this is your teacher's key, run `classe trust add {key}` (or pass --trust {key}) and fetch again"
            ),
            FetchError::WrongAuthor { .. } => format!(
                "{e}; the ticket may have been altered: ask your teacher for the ticket again"
            ),
            FetchError::NoProvider(_) => format!(
                "{e}; check the ticket, your network, and that a sharer is online, then run the same command again (what arrived is kept)"
            ),
            _ => e.to_string(),
        };
        let code = match &e {
            FetchError::NoProvider(_) => UNREACHABLE,
            FetchError::WrongAuthor { .. }
            | FetchError::InvalidSignature
            | FetchError::Untrusted(_)
            | FetchError::Refused(_) => UNTRUSTED,
            FetchError::UnsafeManifest(_) | FetchError::Verification(_) => VERIFY,
            FetchError::Store(_) => IO,
        };
        Exit::new(code, message).with_source(&e)
    }
}

impl From<classe_store::ImportError> for Exit {
    fn from(e: classe_store::ImportError) -> Self {
        use classe_store::ImportError;
        let code = match &e {
            ImportError::ReadSource { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                USAGE
            }
            ImportError::ReadSource { .. }
            | ImportError::Lessons { .. }
            | ImportError::Store { .. } => IO,
            ImportError::NotShareable(_) | ImportError::Empty { .. } | ImportError::Manifest(_) => {
                USAGE
            }
        };
        Exit::new(code, e.to_string()).with_source(&e)
    }
}

impl From<classe_store::ExportError> for Exit {
    /// Writing failed or the destination is taken: IO. The store's copy
    /// does not verify, or is missing or unsafe: VERIFY.
    fn from(e: classe_store::ExportError) -> Self {
        use classe_store::ExportError;
        let code = match &e {
            ExportError::DestinationExists(_) | ExportError::Write { .. } => IO,
            ExportError::Read(classe_store::ReadError::Store(_)) => IO,
            ExportError::Read(classe_store::ReadError::NotFound(_)) => USAGE,
            ExportError::Read(_)
            | ExportError::Incomplete { .. }
            | ExportError::UnsafePath(_)
            | ExportError::Damaged { .. } => VERIFY,
        };
        Exit::new(code, e.to_string()).with_source(&e)
    }
}

impl From<classe_bundle::KeyError> for Exit {
    /// A key file that cannot be read or written, or is not a key.
    fn from(e: classe_bundle::KeyError) -> Self {
        Exit::new(IO, e.to_string()).with_source(&e)
    }
}

impl From<classe_bundle::TrustError> for Exit {
    fn from(e: classe_bundle::TrustError) -> Self {
        Exit::new(IO, e.to_string()).with_source(&e)
    }
}

impl From<classe_node::PublishError> for Exit {
    fn from(e: classe_node::PublishError) -> Self {
        Exit::new(IO, e.to_string()).with_source(&e)
    }
}

impl From<classe_bundle::anchor::AnchorError> for Exit {
    fn from(e: classe_bundle::anchor::AnchorError) -> Self {
        use classe_bundle::anchor::AnchorError;
        let code = match &e {
            AnchorError::Io { .. } | AnchorError::Damaged { .. } => IO,
            AnchorError::Bulletin(_) => UNTRUSTED,
            AnchorError::UnknownSchool(_) => USAGE,
        };
        Exit::new(code, e.to_string()).with_source(&e)
    }
}

impl From<classe_bundle::registry::RegistryError> for Exit {
    fn from(e: classe_bundle::registry::RegistryError) -> Self {
        use classe_bundle::registry::RegistryError;
        let code = match &e {
            RegistryError::Io { .. } | RegistryError::Key(_) => IO,
            RegistryError::Damaged { .. } => IO,
            _ => USAGE,
        };
        Exit::new(code, e.to_string()).with_source(&e)
    }
}
