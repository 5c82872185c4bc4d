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

/// The exit code for a store open failure: usually the home is in use.
pub fn store_open(e: classe_store::OpenError) -> Exit {
    Exit::new(IO, e.to_string()).with_source(&e)
}
