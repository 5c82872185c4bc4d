//! What the namespace tests share: the classe binary, and a long-running
//! classe process whose stdout lines and stderr are read on threads (so a
//! full pipe never blocks it) and which is ended by its pid on drop (both
//! from `classe-testkit`).

#![allow(dead_code, unused_imports)]

pub mod lab;

use std::path::PathBuf;

pub use classe_testkit::process::{Running, STEP};

/// `target/debug/classe` next to the test binary, or `$CLASSE_BIN`.
pub fn classe_bin() -> PathBuf {
    classe_testkit::bin::classe_bin(None).unwrap_or_else(|| {
        panic!("no classe binary next to this test: run `cargo test --workspace`")
    })
}
