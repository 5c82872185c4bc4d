//! Drives the real `classe` binary as separate processes, each with its
//! own home, on loopback. Every process started here is killed by its pid
//! when its guard drops, and every folder lives in a temp dir removed at
//! the end of the test.

#![allow(dead_code, unused_imports)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

pub use classe_testkit::{
    lesson::make_lesson,
    process::{first_line, run_with_timeout, Guard, Running},
    pseudo_random,
    tree::{flip_bytes, tree},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_classe");

/// Upper bound for any single step; a step that takes longer is a failure.
pub const STEP_TIMEOUT: Duration = classe_testkit::process::STEP;

/// One user of classe: a home folder.
pub struct User {
    pub home: PathBuf,
}

impl User {
    pub fn new(root: &Path, name: &str) -> Self {
        Self {
            home: root.join(name),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--home").arg(&self.home);
        cmd.env_remove("CLASSE_HOME");
        cmd.env("NO_COLOR", "1");
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs to completion with a time limit.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.cmd();
        cmd.args(args);
        run_with_timeout(cmd, STEP_TIMEOUT)
    }

    /// `classe fetch TICKET --no-seed --out OUT`, trusting `trust` if
    /// given, plus `extra` flags.
    pub fn fetch(&self, ticket: &str, trust: Option<&str>, out: &Path, extra: &[&str]) -> Output {
        let out = out.to_str().expect("utf-8 path");
        let mut args = vec!["fetch", ticket, "--no-seed", "--out", out];
        if let Some(key) = trust {
            args.extend(["--trust", key]);
        }
        args.extend(extra);
        self.run(&args)
    }

    pub fn id(&self) -> String {
        let out = self.run(&["id"]);
        assert!(out.status.success(), "id failed: {}", stderr(&out));
        stdout(&out).trim().to_string()
    }

    /// Starts `classe share`, waits for the ticket line.
    pub fn share(&self, path: &Path, extra: &[&str]) -> Sharer {
        self.share_env(path, extra, &[])
    }

    /// As [`User::share`], with extra environment variables.
    pub fn share_env(&self, path: &Path, extra: &[&str], env: &[(&str, &str)]) -> Sharer {
        let mut cmd = self.cmd();
        cmd.envs(env.iter().copied());
        cmd.arg("share")
            .arg(path)
            .args(["--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = Guard(cmd.spawn().expect("spawn classe share"));
        let ticket = first_line(&mut child.0, STEP_TIMEOUT)
            .expect("share printed no ticket in time")
            .trim()
            .to_string();
        assert!(ticket.starts_with("classe"), "not a ticket: {ticket:?}");
        Sharer { child, ticket }
    }
}

/// A running `classe share`.
pub struct Sharer {
    pub child: Guard,
    pub ticket: String,
}

impl Sharer {
    /// SIGTERM, then the exit status and stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.child.signal_term();
        let status = self
            .child
            .wait_timeout(STEP_TIMEOUT)
            .expect("share did not stop");
        let mut err = String::new();
        if let Some(mut e) = self.child.0.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Staging folders an export left in `dir` (there should be none).
pub fn staging_leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("classe-partial"))
        .collect()
}

pub fn json_line(out: &Output) -> serde_json::Value {
    let text = stdout(out);
    let line = text.lines().next().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}\n{}", stderr(out)))
}

/// A small tmpfs, unmounted on drop. None when this process may not mount
/// (not root): the caller then says so and skips.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, options: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_path_buf()))
    }

    pub fn free(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
