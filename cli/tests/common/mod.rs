//! Drives the real `classe` binary as separate processes, each with its
//! own home, on loopback. Every process started here is killed by its pid
//! when its guard drops, and every folder lives in a temp dir removed at
//! the end of the test.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_classe");

/// Upper bound for any single step; a step that takes longer is a failure.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);

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
        let stdout = child.0.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ticket = rx
            .recv_timeout(STEP_TIMEOUT)
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

/// Kills the child by pid on drop, so no test leaves a process behind.
pub struct Guard(pub Child);

impl Guard {
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
    }

    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn classe");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for classe"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("classe did not finish within {limit:?}");
        }
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every regular file under `root`, as (relative path, content).
pub fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .expect("prefix")
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, std::fs::read(&path).expect("read")));
            }
        }
    }
    out.sort();
    out
}

/// A lesson folder with nested folders, a non-ASCII name, an empty file and
/// a file of `big` bytes.
pub fn make_lesson(dir: &Path, big: usize) {
    std::fs::create_dir_all(dir.join("chapitre 1/exercices")).expect("mkdir");
    std::fs::write(dir.join("README.txt"), "Bonjour la classe\n").expect("write");
    std::fs::write(
        dir.join("chapitre 1/résumé — été.txt"),
        "Les fractions ½ ¾\n",
    )
    .expect("write");
    std::fs::write(dir.join("chapitre 1/exercices/vide.txt"), "").expect("write");
    std::fs::write(dir.join("vidéo.bin"), pseudo_random(big, 42)).expect("write");
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
