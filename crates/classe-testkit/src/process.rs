//! Child processes for tests: each is ended by its pid when its handle
//! drops, waits have time limits, and stdout lines are read on a thread
//! so that a full pipe never blocks the child.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

/// Longest one step (a line, an event, a short command) may take in a
/// test before it counts as a failure.
pub const STEP: Duration = Duration::from_secs(120);

/// How long a dropped [`Running`] gets between SIGTERM and SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(5);

/// Sends `signal` (`"TERM"`, `"KILL"`, ...) to `pid` with kill(1): std has
/// no other signal than SIGKILL, and this crate takes no libc.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Polls `child` until it exits or `limit` passes.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends `child` if it still runs: SIGTERM and up to `grace` to exit (none
/// when `grace` is zero), then SIGKILL, and reaps it.
pub fn end(child: &mut Child, grace: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    if !grace.is_zero() {
        signal(child.id(), "TERM");
        if wait_timeout(child, grace).is_some() {
            return;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills the child by pid on drop (SIGKILL at once), so no test leaves a
/// process behind.
pub struct Guard(pub Child);

impl Guard {
    /// SIGTERM.
    pub fn signal_term(&self) {
        signal(self.0.id(), "TERM");
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Its exit status, if it exits within `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.0, limit)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        end(&mut self.0, Duration::ZERO);
    }
}

/// Runs `cmd` to completion with stdout and stderr captured; past `limit`
/// it is killed (by pid) and the test fails.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("cannot wait for {what}: {e}")),
        Err(_) => {
            signal(pid, "KILL");
            panic!("{what} did not finish within {limit:?}");
        }
    }
}

/// Each line `r` gives, sent on the returned channel by a thread until
/// the end of `r` (or until the receiver is dropped).
pub fn read_lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line `child` prints on stdout (which must be piped), if it
/// comes within `limit`.
pub fn first_line(child: &mut Child, limit: Duration) -> Option<String> {
    let stdout = child.stdout.take()?;
    read_lines(stdout).recv_timeout(limit).ok()
}

/// Where a [`Running`] process's stderr goes.
enum Stderr {
    /// Read on a thread into a buffer; the flag is set at its end.
    Pipe(Arc<Mutex<(String, bool)>>),
    /// A file (readable after a SIGKILL, and complete at each read).
    File(PathBuf),
}

/// A long-running child: stdin closed, stdout lines on a channel, stderr
/// kept. Dropping it ends it (SIGTERM, 5 s, then SIGKILL); `HOMES_SHOW=1`
/// then prints its stderr, for debugging.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Stderr,
    /// What it is, for messages.
    pub name: String,
}

impl Running {
    /// Starts `cmd` with its stderr kept in memory.
    pub fn spawn(cmd: Command, name: String) -> Running {
        Self::start(cmd, name, None)
    }

    /// Starts `cmd` with its stderr written to `file`.
    pub fn spawn_logged(cmd: Command, name: String, file: PathBuf) -> Running {
        Self::start(cmd, name, Some(file))
    }

    fn start(mut cmd: Command, name: String, file: Option<PathBuf>) -> Running {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        match &file {
            Some(f) => cmd.stderr(
                std::fs::File::create(f)
                    .unwrap_or_else(|e| panic!("{name}: cannot create {}: {e}", f.display())),
            ),
            None => cmd.stderr(Stdio::piped()),
        };
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take();
        let lines = match stdout {
            Some(out) => read_lines(out),
            None => mpsc::channel().1,
        };
        let stderr = match (file, child.stderr.take()) {
            (Some(f), _) => Stderr::File(f),
            (None, pipe) => {
                let buf = Arc::new(Mutex::new((String::new(), pipe.is_none())));
                if let Some(pipe) = pipe {
                    let buf = buf.clone();
                    std::thread::spawn(move || {
                        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                            let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                            if !b.0.is_empty() {
                                b.0.push('\n');
                            }
                            b.0.push_str(&line);
                        }
                        buf.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
                    });
                }
                Stderr::Pipe(buf)
            }
        };
        Running {
            child,
            lines,
            stderr,
            name,
        }
    }

    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        match &self.stderr {
            Stderr::Pipe(buf) => buf.lock().unwrap_or_else(|p| p.into_inner()).0.clone(),
            Stderr::File(f) => std::fs::read_to_string(f).unwrap_or_default(),
        }
    }

    /// Its stderr, once its end has been read (at most `limit` of waiting:
    /// a child of the process may hold it open).
    pub fn stderr_within(&self, limit: Duration) -> String {
        if let Stderr::Pipe(buf) = &self.stderr {
            let deadline = Instant::now() + limit;
            while !buf.lock().unwrap_or_else(|p| p.into_inner()).1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.stderr()
    }

    /// The next stdout line within `limit`, or None (timeout or exit).
    pub fn line_within(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// The next stdout line if one has arrived, without waiting.
    pub fn try_line(&self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    /// The next stdout line; after [`STEP`], the process is stopped and
    /// the test fails with its stderr.
    pub fn line(&self) -> String {
        self.line_within(STEP).unwrap_or_else(|| {
            self.terminate();
            panic!(
                "{}: no line on stdout within {STEP:?}; stderr:\n{}",
                self.name,
                self.stderr_within(Duration::from_secs(5))
            )
        })
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

    /// The next JSON line whose `event` is `kind` within `limit`, with the
    /// JSON lines skipped before it; None on a timeout or exit.
    pub fn event_within(
        &self,
        kind: &str,
        limit: Duration,
    ) -> Option<(serde_json::Value, Vec<serde_json::Value>)> {
        self.event_until(kind, Instant::now() + limit).ok()
    }

    /// The next `kind` event within [`STEP`]; fails the test otherwise,
    /// naming the events it saw.
    pub fn event(&self, kind: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
        self.event_until(kind, Instant::now() + STEP)
            .unwrap_or_else(|skipped| {
                panic!(
                    "{}: no {kind} event within {STEP:?}; saw {skipped:?}",
                    self.name
                )
            })
    }

    /// The event and those skipped, or (on a timeout or exit) those skipped.
    fn event_until(
        &self,
        kind: &str,
        deadline: Instant,
    ) -> Result<(serde_json::Value, Vec<serde_json::Value>), Vec<serde_json::Value>> {
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                return Err(skipped);
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["event"] == kind {
                return Ok((v, skipped));
            }
            skipped.push(v);
        }
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its exit status, if it exits within `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.child, limit)
    }

    /// SIGTERM.
    pub fn terminate(&self) {
        signal(self.child.id(), "TERM");
    }

    /// SIGKILL, and reap it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then up to 20 s to exit, which must be a success. Returns
    /// its stderr.
    pub fn stop(mut self) -> String {
        self.terminate();
        let Some(status) = self.wait_timeout(Duration::from_secs(20)) else {
            panic!("{} did not stop within 20 s", self.name);
        };
        let err = self.stderr_within(Duration::from_secs(5));
        assert!(
            status.success(),
            "{} exited with {status}: {err}",
            self.name
        );
        err
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        end(&mut self.child, DROP_GRACE);
        if std::env::var_os("HOMES_SHOW").is_some() {
            let err = self.stderr_within(Duration::from_secs(2));
            println!("---- {} stderr:\n{err}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn run_with_timeout_captures_and_returns() {
        let out = run_with_timeout(sh("echo out; echo err >&2; exit 3"), STEP);
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    #[should_panic(expected = "did not finish within")]
    fn run_with_timeout_fails_a_hung_command() {
        run_with_timeout(sh("sleep 30"), Duration::from_millis(200));
    }

    #[test]
    fn running_reads_lines_events_and_stderr() {
        let p = Running::spawn(
            sh(
                r#"echo hello; echo '{"event":"a"}'; echo '{"event":"b","n":1}'; echo oops >&2; sleep 30"#,
            ),
            "sh".into(),
        );
        assert_eq!(p.line(), "hello");
        let (v, skipped) = p.event("b");
        assert_eq!(v["n"], 1);
        assert_eq!(skipped.len(), 1);
        assert_eq!(p.line_within(Duration::from_millis(100)), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.stderr().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(p.stderr(), "oops");
        // SIGTERM ends sh, which is not a success.
        let mut p = p;
        p.terminate();
        let status = p.wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(!status.success());
    }

    #[test]
    fn dropping_a_guard_or_running_ends_the_process() {
        let g = Guard(sh("sleep 30").spawn().unwrap());
        let pid = g.0.id();
        drop(g);
        assert!(!alive(pid));
        let r = Running::spawn(sh("sleep 30"), "sleep".into());
        let pid = r.id();
        drop(r);
        assert!(!alive(pid));
    }

    #[test]
    fn a_logged_stderr_is_read_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("err");
        let mut p = Running::spawn_logged(sh("echo to-file >&2"), "sh".into(), file.clone());
        assert!(p.wait_timeout(Duration::from_secs(10)).unwrap().success());
        assert_eq!(p.stderr(), "to-file\n");
        assert_eq!(std::fs::read_to_string(file).unwrap(), "to-file\n");
    }

    #[test]
    fn first_line_waits_for_a_line() {
        let mut c = sh("sleep 0.1; echo ticket; sleep 30");
        c.stdout(Stdio::piped());
        let mut g = Guard(c.spawn().unwrap());
        assert_eq!(first_line(&mut g.0, STEP).as_deref(), Some("ticket"));
    }

    /// Whether `pid` is still a process (a reaped one is gone).
    fn alive(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }
}
