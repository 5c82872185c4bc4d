//! The hosts of a namespace test: one bridge (a LAN) of `classe`
//! processes, each in its own network namespace with its own home, or on
//! loopback where namespaces are not available.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
};

use classe_lab::net::{self, Shape, Topology};
use classe_testkit::process::{run_with_timeout, Running, STEP};

use super::classe_bin;

/// The hosts of one test: namespaces when possible, else loopback.
pub struct Lab {
    /// The namespaces, or None on loopback.
    pub topo: Option<Topology>,
    /// Where the homes and lessons live.
    pub dir: tempfile::TempDir,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// `hosts` hosts on one bridge (one LAN). None: not possible here.
    pub fn new(hosts: usize, need_lan: bool) -> Option<Self> {
        // One probe for all tests: probes running at once would collide
        // on the probe namespace's name.
        static PROBE: std::sync::OnceLock<net::Probe> = std::sync::OnceLock::new();
        let probe = PROBE.get_or_init(net::probe);
        let dir = tempfile::tempdir().unwrap();
        if probe.usable() {
            let k = LABS.fetch_add(1, Ordering::Relaxed);
            let tag = format!("{}{}d{k}", net::NS_PREFIX, std::process::id());
            let shaped = std::env::var("DISCOVERY_SHAPED").is_ok_and(|v| v == "1");
            let shapes: Vec<Shape> = (0..hosts)
                .map(|i| Shape {
                    up_bps: shaped.then_some(if i <= 1 { 20_000_000 } else { 10_000_000 }),
                    down_bps: None,
                })
                .collect();
            let topo = Topology::build(&tag, &shapes, None).unwrap();
            return Some(Lab {
                topo: Some(topo),
                dir,
            });
        }
        if need_lan {
            println!(
                "SKIPPED: needs root and ip netns for a LAN ({})",
                probe.notes.join("; ")
            );
            return None;
        }
        println!(
            "NOTE: ip netns unavailable ({}); running on loopback instead",
            probe.notes.join("; ")
        );
        Some(Lab { topo: None, dir })
    }

    pub fn ip(&self, host: usize) -> Ipv4Addr {
        match &self.topo {
            Some(t) => t.hosts()[host].ip,
            None => Ipv4Addr::LOCALHOST,
        }
    }

    pub fn command(&self, host: usize, home: &str) -> Command {
        let mut cmd = match &self.topo {
            Some(t) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &t.hosts()[host].ns])
                    .arg(classe_bin());
                c
            }
            None => Command::new(classe_bin()),
        };
        cmd.arg("--home").arg(self.dir.path().join(home));
        if let Ok(filter) = std::env::var("DISCOVERY_LOG") {
            cmd.env("CLASSE_LOG", filter);
        }
        cmd
    }

    /// `--bind IP:0` for share and fetch on `host`.
    pub fn bind(&self, host: usize) -> String {
        format!("{}:0", self.ip(host))
    }

    /// `--listen IP:PORT` for a seed on `host` (distinct ports on
    /// loopback).
    pub fn listen(&self, host: usize) -> String {
        format!(
            "{}:{}",
            self.ip(host),
            41000 + host + 100 * (std::process::id() as usize % 200)
        )
    }

    pub fn run(&self, host: usize, home: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = self.command(host, home);
        cmd.args(args).stdin(Stdio::null());
        run_with_timeout(cmd, STEP)
    }

    pub fn spawn(&self, host: usize, home: &str, args: &[&str]) -> Running {
        let mut cmd = self.command(host, home);
        cmd.args(args);
        Running::spawn(
            cmd,
            format!("{home} {}", args.first().copied().unwrap_or("")),
        )
    }

    /// The author key of `home` (made on first use).
    pub fn author_key(&self, host: usize, home: &str) -> String {
        let out = self.run(host, home, &["id"]);
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// `classe seed --listen <host's address> --no-mdns` and `extra`; the
    /// process and the first bootstrap address it printed.
    pub fn seed(&self, host: usize, home: &str, extra: &[&str]) -> (Running, String) {
        let listen = self.listen(host);
        let mut args = vec!["seed", "--listen", &listen, "--no-mdns"];
        args.extend_from_slice(extra);
        let seed = self.spawn(host, home, &args);
        let bootstrap = seed.line();
        (seed, bootstrap)
    }

    /// `classe share LESSON --bind <host's address>`, with `--bootstrap B
    /// --no-mdns` when a bootstrap is given; the process and its ticket.
    pub fn share(
        &self,
        host: usize,
        home: &str,
        lesson: &Path,
        bootstrap: Option<&str>,
    ) -> (Running, String) {
        let bind = self.bind(host);
        let mut args = vec!["share", lesson.to_str().unwrap(), "--bind", &bind];
        if let Some(b) = bootstrap {
            args.extend(["--bootstrap", b, "--no-mdns"]);
        }
        let sharer = self.spawn(host, home, &args);
        let ticket = sharer.line();
        (sharer, ticket)
    }

    /// `fetch WHAT --trust KEY --bind IP:0 --json --out <dir>/<out>`, with
    /// `--bootstrap ADDR --no-mdns` when a bootstrap is given (the DHT
    /// tests keep mDNS out of the way) and `--no-seed` unless the pupil
    /// keeps sharing.
    pub fn fetch_args(
        &self,
        host: usize,
        what: &str,
        key: &str,
        bootstrap: Option<&str>,
        out: &str,
        keep_sharing: bool,
    ) -> Vec<String> {
        let mut args: Vec<String> = ["fetch", what, "--trust", key, "--bind", &self.bind(host)]
            .map(String::from)
            .to_vec();
        if let Some(b) = bootstrap {
            args.extend(["--bootstrap".into(), b.into(), "--no-mdns".into()]);
        }
        if !keep_sharing {
            args.push("--no-seed".into());
        }
        args.extend([
            "--json".into(),
            "--out".into(),
            self.home(out).display().to_string(),
        ]);
        args
    }

    pub fn home(&self, home: &str) -> PathBuf {
        self.dir.path().join(home)
    }
}
