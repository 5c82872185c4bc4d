//! The classroom lab: an emulated network on one machine that measures how
//! long it takes to get a lesson of F bytes to N pupils, with classe and
//! with a central server, against the Kumar–Ross lower bound
//! `T_min = max(F/u_s, F/d_min, N·F/(u_s + Σu_i))` and the central bound
//! `N·F/u_s`.
//!
//! ```text
//! Plan (parameters) ──► for each N, each scenario: run::run_scenario
//!     net::Topology      N+1 namespaces, a bridge namespace, veth, tc HTB
//!     scenario::Scenario a seed command and a pupil command (sh -c)
//!     proc::Proc         processes in namespaces, in their own groups
//!     lesson::Lesson     F random bytes, and the check of each output
//!   ──► run::RunResult ──► report: JSON lines, Markdown table, SVG plots
//! ```
//!
//! Everything a run creates (namespaces, processes, temporary folders) is
//! removed when the run ends, when it fails, and on Ctrl-C or SIGTERM
//! ([`until_interrupted`]); `classe-lab clean` removes what a lab killed
//! with SIGKILL left behind. Nothing touches the root namespace's
//! interfaces. The flat lab's namespaces have no route outside
//! 10.77.0.0/16; the home lab's (`homenet`, `homelab`: pupils behind NAT
//! routers, the school relay on an emulated internet) none outside
//! 198.18.0.0/15 and their own 192.168.1.0/24.

pub mod contender;
pub mod homelab;
pub mod homenet;
pub mod lesson;
pub mod metrics;
pub mod net;
pub mod plan;
pub mod proc;
pub mod report;
pub mod run;
pub mod scenario;
pub mod units;

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Mutex,
};

static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn paths() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    PATHS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records a temporary folder for the emergency sweep.
pub(crate) fn register_path(p: &Path) {
    paths().push(p.to_path_buf());
}

/// Forgets a folder (removed or kept on purpose).
pub(crate) fn unregister_path(p: &Path) {
    paths().retain(|q| q != p);
}

/// Kills every process group this lab started, removes every namespace
/// this process created and every temporary folder it registered. Safe to
/// call at any time; for the interrupt path and the end of `main`.
pub fn cleanup_all() {
    proc::kill_all_registered();
    // Let the killed processes exit before their folders go.
    std::thread::sleep(std::time::Duration::from_millis(300));
    homenet::remove_stale(Some(std::process::id()));
    let dirs: Vec<PathBuf> = paths().drain(..).collect();
    for d in dirs {
        std::fs::remove_dir_all(&d).ok();
    }
}

/// Runs `f` until it finishes or the process gets SIGINT or SIGTERM; on a
/// signal, sweeps everything ([`cleanup_all`]) and returns `None`.
pub async fn until_interrupted<F: Future>(f: F) -> Option<F::Output> {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return Some(f.await);
    };
    let out = tokio::select! {
        out = f => Some(out),
        _ = int.recv() => None,
        _ = term.recv() => None,
    };
    if out.is_none() {
        eprintln!("classe-lab: interrupted; removing namespaces, processes and files");
        cleanup_all();
    }
    out
}
