//! What classe's tests, `classe demo`, the lab and the bench share, so
//! that each exists once:
//!
//! - [`rng`]: one small seeded generator (SplitMix64) for repeatable,
//!   incompressible bytes;
//! - [`lesson`]: lesson folders to share;
//! - [`tree`]: every file under a folder, to compare a copy with its source;
//! - [`bin`]: where the `classe` binary is;
//! - [`process`]: child processes that are ended by their pid when dropped,
//!   runs with a time limit, stdout lines read with a time limit.
//!
//! Only std and serde_json: `classe demo` links this crate into the
//! binary, and the scheduler's own generator stays in `classe-swarm`,
//! which takes no dependency.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod bin;
pub mod lesson;
pub mod process;
pub mod rng;
pub mod tree;

pub use rng::{pseudo_random, Rng};
