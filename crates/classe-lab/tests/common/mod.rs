//! What the namespace tests share: the classe binary, and a long-running
//! classe process whose stdout lines and stderr are read on threads (so a
//! full pipe never blocks it) and which is ended by its pid on drop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// Longest any one step (a line, an event) may take.
pub const STEP: Duration = Duration::from_secs(120);

/// `target/debug/classe` next to the test binary, or `$CLASSE_BIN`.
pub fn classe_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CLASSE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("classe");
    assert!(
        p.is_file(),
        "no classe binary at {}: run `cargo test --workspace`",
        p.display()
    );
    p
}

/// A long-running classe process.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
    /// What it is, for messages.
    pub name: String,
}

impl Running {
    /// Starts `cmd` (stdin closed, stdout and stderr read on threads).
    pub fn spawn(mut cmd: Command, name: String) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let (etx, errors) = mpsc::channel();
        std::thread::spawn(move || {
            let all: Vec<String> = BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect();
            etx.send(all.join("\n")).ok();
        });
        Running {
            child,
            lines,
            errors,
            name,
        }
    }

    /// The next line on stdout; on a timeout, the process is stopped and
    /// the test fails with its stderr.
    pub fn line(&self) -> String {
        match self.lines.recv_timeout(STEP) {
            Ok(l) => l,
            Err(_) => {
                // Its stderr ends when it does.
                self.terminate();
                let err = self
                    .errors
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_default();
                panic!(
                    "{}: no line on stdout within {STEP:?}; stderr:\n{err}",
                    self.name
                )
            }
        }
    }

    /// The next JSON event of `kind`, skipping others (returned too).
    pub fn event(&self, kind: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
        let deadline = Instant::now() + STEP;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "{}: no {kind} event within {STEP:?}; saw {skipped:?}",
                    self.name
                )
            });
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["event"] == kind {
                return (v, skipped);
            }
            skipped.push(v);
        }
    }

    /// The next line on stdout if one has arrived, without waiting.
    pub fn try_line(&self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    /// Every line that arrives within `limit`.
    pub fn lines_for(&self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            out.push(l);
        }
        out
    }

    /// SIGTERM, then wait (bounded); the process must exit with success.
    /// Returns its stderr.
    pub fn stop(mut self) -> String {
        self.terminate();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let err = self
                    .errors
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_default();
                assert!(
                    status.success(),
                    "{} exited with {status}: {err}",
                    self.name
                );
                return err;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not stop within 20 s", self.name);
    }

    fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
}

impl Drop for Running {
    /// SIGTERM, up to 5 s to exit, then SIGKILL. `HOMES_SHOW=1` prints
    /// the stderr of every process, for debugging.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.terminate();
        let mut exited = false;
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::env::var_os("HOMES_SHOW").is_some() {
            let err = self
                .errors
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_default();
            println!("---- {} stderr:\n{err}", self.name);
        }
    }
}
