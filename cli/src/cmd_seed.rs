//! `classe seed`: the always-on node. Mirrors and pins every lesson
//! announced by the authors it follows, re-shares everything it holds,
//! answers the DHT as the class network's bootstrap node.
//!
//! stdout, for scripts and the school's tooling: first the bootstrap
//! addresses, one per line (`/ip4/A/tcp/P/p2p/ID`), then one JSON object
//! per line for each event (`mirrored`, `mirror_failed`, `ignored`).

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use classe_bundle::{AuthorKey, SignedAnnouncement};
use classe_node::{ControlEvent, FetchRequest, Node, TrustDecision};
use classe_store::iroh_blobs::Hash;
use tokio::task::JoinSet;

use crate::{
    cmd_fetch::folder_name,
    cmd_id::parse_key,
    exit::{Exit, IO, USAGE},
    home::{FileConfig, Home},
    ui, NetArgs,
};

/// The seed's port when none is configured: TCP for discovery, UDP for
/// data.
pub const DEFAULT_PORT: u16 = 4100;
/// Mirrors running at once.
const MIRRORS_AT_ONCE: usize = 2;
/// Announcements waiting for a mirror slot.
const MIRROR_QUEUE: usize = 256;
/// A failed mirror is tried again after this, at most `MIRROR_ATTEMPTS`
/// times in all.
const MIRROR_RETRY: Duration = Duration::from_secs(20);
const MIRROR_ATTEMPTS: u32 = 5;

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Settings file (TOML; see docs/seed.example.toml). Default: the
    /// home's config.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// IP:PORT to listen on, TCP (discovery) and UDP (data) alike.
    /// Default: `listen` in the config, else 0.0.0.0:4100.
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// Mirror the lessons of this author key. Repeatable; added to
    /// `follow` in the config and to `classe follow`.
    #[arg(long = "follow", value_name = "KEY")]
    follow: Vec<String>,
    /// Also write every mirrored lesson into DIR/<title>; a newer version
    /// replaces the older folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// On exit, write bytes sent and received per peer as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    #[command(flatten)]
    relay: RelayServerArgs,
    #[command(flatten)]
    net: NetArgs,
}

/// The school's relay, run inside the seed node.
#[derive(Debug, Args)]
pub struct RelayServerArgs {
    /// Run the school's relay on IP:PORT (TCP for the relay, UDP on the
    /// same port for address discovery), so pupils and teachers at home
    /// reach each other through their routers. Prints
    /// `{"event":"relay","url":...}`; give that URL to `--relay`.
    #[arg(long, value_name = "IP:PORT")]
    relay_server: Option<std::net::SocketAddr>,
    /// Certificate chain (PEM) for an https:// relay. Without it the relay
    /// is plain http:// (a lab, or a school LAN).
    #[arg(long, value_name = "FILE", requires = "relay_key")]
    relay_cert: Option<PathBuf>,
    /// Private key (PEM) of --relay-cert.
    #[arg(long, value_name = "FILE", requires = "relay_cert")]
    relay_key: Option<PathBuf>,
    /// Host name in the relay's URL (the certificate's name). Default: the
    /// IP of --relay-server.
    #[arg(long, value_name = "HOST")]
    relay_host: Option<String>,
    /// Most bytes per second the relay accepts from any one node, e.g.
    /// 2MB/s. Default: no cap.
    #[arg(long, value_name = "RATE", value_parser = crate::rate::parse_rate)]
    relay_max_rate: Option<u64>,
}

/// The relay's settings from flags and the config file; None when the seed
/// runs no relay.
fn relay_server_config(
    args: &RelayServerArgs,
    file: &FileConfig,
) -> Result<Option<classe_node::RelayServerConfig>, Exit> {
    let Some(bind) = args.relay_server.or(file.relay_server) else {
        return Ok(None);
    };
    let cert = args.relay_cert.clone().or(file.relay_cert.clone());
    let key = args.relay_key.clone().or(file.relay_key.clone());
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err(Exit::new(
            USAGE,
            "relay_cert and relay_key go together: give both, or neither for a plain http:// relay",
        )),
    };
    let rate = match args.relay_max_rate {
        Some(r) => Some(r),
        None => file
            .relay_max_rate
            .as_deref()
            .map(crate::rate::parse_rate)
            .transpose()
            .map_err(|e| Exit::new(USAGE, format!("relay_max_rate: {e}")))?,
    };
    Ok(Some(classe_node::RelayServerConfig {
        bind,
        tls,
        max_rate_per_node: rate.map(|r| u32::try_from(r).unwrap_or(u32::MAX)),
        public_host: args.relay_host.clone().or(file.relay_host.clone()),
    }))
}

/// One line of JSON on stdout, flushed.
fn event(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{value}").and_then(|()| out.flush()).is_err() {
        tracing::warn!("cannot write to stdout");
    }
}

pub async fn run(home: &Home, args: SeedArgs) -> Result<(), Exit> {
    let started = Instant::now();
    let mut shutdown = ui::Shutdown::install();
    let file = match &args.config {
        Some(path) => {
            if !path.is_file() {
                return Err(Exit::new(
                    USAGE,
                    format!("config file {} does not exist", path.display()),
                ));
            }
            FileConfig::read(path)?
        }
        None => home.file_config()?,
    };
    let mut follow: Vec<AuthorKey> = Vec::new();
    for text in args.follow.iter().chain(&file.follow) {
        let key = parse_key(text)?;
        if !follow.contains(&key) {
            follow.push(key);
        }
    }
    for key in home.follow_list()? {
        if !follow.contains(&key) {
            follow.push(key);
        }
    }
    let out = args.out.clone().or(file.out.clone());
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir)
            .map_err(crate::exit::io(format!("cannot create {}", dir.display())))?;
    }
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or(std::net::SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
    let mut config = home.node_config_from(&args.net, &file, Some(listen))?;
    if let Some(control) = &mut config.control {
        control.follow = follow.clone();
    }
    // The relay starts before the node, which then uses it too (unless
    // told to use another).
    let relay = match relay_server_config(&args.relay, &file)? {
        Some(rc) => {
            let rc_chain = rc.tls.as_ref().map(|(chain, _)| chain.clone());
            let relay = classe_node::RelayServer::spawn(rc).await.map_err(|e| {
                let code = match e {
                    classe_node::RelayError::Spawn { .. } => IO,
                    _ => USAGE,
                };
                Exit::new(code, e.to_string())
            })?;
            if config.relay_url.is_none() {
                config.relay_url = Some(relay.url().to_string());
                // Our own relay: trust the chain we serve (a school CA's
                // certificate in it), as pupils do with --relay-ca.
                if config.relay_ca.is_none() {
                    config.relay_ca = rc_chain.clone();
                }
            }
            Some(relay)
        }
        None => None,
    };
    let node = Arc::new(home.spawn_node_with(config).await?);
    // Damage in this store is said in the log (warn), bundle and file.
    node.store().spawn_background_check();
    let Some(control) = node.control().cloned() else {
        return Err(Exit::new(IO, "discovery did not start"));
    };
    let mut control_events = node
        .take_control_events()
        .ok_or_else(|| Exit::new(IO, "discovery events are not available"))?;

    // Everything held is served and provided again.
    let held = node
        .store()
        .list()
        .await
        .map_err(|e| Exit::new(IO, format!("cannot read the store: {e}")))?;
    for bundle in &held {
        if bundle.complete {
            node.serve_bundle(bundle.root, bundle.manifest.manifest());
            node.provide(bundle.root).await;
        }
    }

    // The bootstrap addresses first: scripts and admins read them.
    {
        let mut stdout = std::io::stdout().lock();
        for addr in control.listen_addrs().await {
            writeln!(stdout, "{addr}").map_err(crate::exit::io("cannot write to stdout"))?;
        }
        stdout
            .flush()
            .map_err(crate::exit::io("cannot write to stdout"))?;
    }
    if let Some(relay) = &relay {
        event(serde_json::json!({"event": "relay", "url": relay.url().to_string()}));
        eprintln!(
            "Relay for pupils and teachers at home: --relay {}",
            relay.url()
        );
    }
    eprintln!(
        "Seeding {} bundle(s); following {} author(s){}. Press Ctrl-C to stop.",
        held.iter().filter(|b| b.complete).count(),
        follow.len(),
        out.as_ref()
            .map(|d| format!("; writing lessons to {}", d.display()))
            .unwrap_or_default()
    );
    if follow.is_empty() {
        eprintln!(
            "note: no author followed; add one with --follow KEY, `follow` in the config, or `classe follow KEY`"
        );
    }

    // Announcements known from before are re-announced: the seed holds
    // their catch-up records for followers that come later.
    let known = home.announcements();
    for a in &known {
        if follow.contains(&a.announcement().author) {
            control.announce(a.clone()).await;
        }
    }
    // Lessons announced while we were away, or that failed before.
    let complete: std::collections::HashSet<Hash> =
        held.iter().filter(|b| b.complete).map(|b| b.root).collect();
    let mut queue: std::collections::VecDeque<(SignedAnnouncement, u32)> = known
        .iter()
        .filter(|a| follow.contains(&a.announcement().author))
        .filter(|a| !complete.contains(&Hash::from_bytes(a.announcement().root)))
        .map(|a| (a.clone(), 0))
        .collect();

    // The newest version known of each lesson: an older one that finishes
    // mirroring later is kept in the store but not written over the
    // newer folder.
    let newest = Arc::new(std::sync::Mutex::new(classe_bundle::Book::default()));
    for a in &known {
        if let Ok(mut b) = newest.lock() {
            b.offer(a.clone());
        }
    }
    let mut mirrors: JoinSet<(SignedAnnouncement, u32, Result<MirrorDone, String>)> =
        JoinSet::new();
    let mut retries: JoinSet<(SignedAnnouncement, u32)> = JoinSet::new();
    loop {
        while mirrors.len() < MIRRORS_AT_ONCE {
            let Some((a, attempt)) = queue.pop_front() else {
                break;
            };
            let node = node.clone();
            let out = out.clone();
            let newest = newest.clone();
            mirrors.spawn(async move {
                let result = mirror(&node, &a, out.as_deref(), &newest).await;
                (a, attempt, result)
            });
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            Some(ev) = control_events.recv() => match ev {
                ControlEvent::Announced { announcement, via } => {
                    tracing::info!(via, "announcement");
                    // The book holds everything the file held and more:
                    // write it whole.
                    let all: Vec<SignedAnnouncement> = {
                        let mut b = newest.lock().unwrap_or_else(|p| p.into_inner());
                        b.offer(announcement.clone());
                        b.all().cloned().collect()
                    };
                    if let Err(e) = home.save_announcements(&all) {
                        tracing::warn!("cannot keep the announcement: {e}");
                    }
                    if queue.len() < MIRROR_QUEUE {
                        queue.push_back((announcement, 0));
                    }
                }
                ControlEvent::Ignored { reason, from } => event(serde_json::json!({
                    "event": "ignored", "reason": reason, "from": from,
                })),
            },
            Some(done) = mirrors.join_next(), if !mirrors.is_empty() => {
                let Ok((a, attempt, result)) = done else { continue };
                let ann = a.announcement();
                match result {
                    Ok(m) => event(serde_json::json!({
                        "event": "mirrored",
                        "root": Hash::from_bytes(ann.root).to_hex(),
                        "author": ann.author.to_string(),
                        "lesson_id": ann.lesson_id.to_string(),
                        "version": ann.version,
                        "title": ann.title,
                        "bytes": m.total_bytes,
                        "received_bytes": m.received_bytes,
                        "seconds": m.seconds,
                        "out": m.out.map(|p| p.display().to_string()),
                    })),
                    Err(reason) => {
                        event(serde_json::json!({
                            "event": "mirror_failed",
                            "root": Hash::from_bytes(ann.root).to_hex(),
                            "version": ann.version,
                            "title": ann.title,
                            "attempt": attempt + 1,
                            "reason": reason,
                        }));
                        if attempt + 1 < MIRROR_ATTEMPTS {
                            retries.spawn(async move {
                                tokio::time::sleep(MIRROR_RETRY).await;
                                (a, attempt + 1)
                            });
                        }
                    }
                }
            }
            Some(Ok((a, attempt))) = retries.join_next(), if !retries.is_empty() => {
                if queue.len() < MIRROR_QUEUE {
                    queue.push_back((a, attempt));
                }
            }
        }
    }
    eprintln!("Stopping.");
    mirrors.abort_all();
    retries.abort_all();
    while mirrors.join_next().await.is_some() {}
    let mut stats = ui::stats_json(&node, started);
    if let Ok(c) = serde_json::to_value(control.stats().await) {
        stats["discovery"] = c;
    }
    if let Some(relay) = relay {
        if let Ok(c) = serde_json::to_value(relay.carried()) {
            stats["relay"] = c;
        }
        relay.shutdown().await;
    }
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await,
        Err(_) => tracing::warn!("a mirror task still holds the node; exiting anyway"),
    }
    if let Some(path) = args.stats {
        ui::write_json_file(&path, &stats)
            .map_err(crate::exit::io(format!("cannot write {}", path.display())))?;
    }
    Ok(())
}

struct MirrorDone {
    total_bytes: u64,
    received_bytes: u64,
    seconds: f64,
    out: Option<PathBuf>,
}

/// Fetches, verifies, pins and serves one announced bundle; writes it to
/// `out` if given. An announcement only says where to look: the manifest
/// must be signed by the same followed author and name the same lesson
/// and version.
async fn mirror(
    node: &Node,
    a: &SignedAnnouncement,
    out: Option<&Path>,
    newest: &std::sync::Mutex<classe_bundle::Book>,
) -> Result<MirrorDone, String> {
    let ann = a.announcement();
    let root = Hash::from_bytes(ann.root);
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let author = ann.author;
    let lesson = ann.lesson_id;
    let version = ann.version;
    let request = FetchRequest {
        root,
        expected_author: Some(author),
        providers: ann.providers.clone(),
    };
    let trust = move |m: classe_bundle::SignedManifest| async move {
        let m = m.manifest();
        if m.author == author && m.lesson_id == lesson && m.version == version {
            TrustDecision::Trusted
        } else {
            TrustDecision::Refused
        }
    };
    let result = node.fetch(request, trust, tx).await;
    drain.abort();
    let report = result.map_err(|e| match e {
        classe_node::FetchError::Untrusted(_) => {
            "the bundle's manifest does not match its announcement (lesson or version)".into()
        }
        e => e.to_string(),
    })?;
    let manifest = report.manifest.manifest();
    node.serve_bundle(root, manifest);
    node.provide(root).await;
    let is_newest = newest
        .lock()
        .map(|b| b.version_of(&author, &lesson).is_none_or(|v| v <= version))
        .unwrap_or(true);
    let written = match out {
        Some(dir) if is_newest => Some(write_lesson(node, root, &manifest.title, dir).await?),
        _ => None,
    };
    Ok(MirrorDone {
        total_bytes: report.total_bytes,
        received_bytes: report.received_bytes,
        seconds: started.elapsed().as_secs_f64(),
        out: written,
    })
}

/// Writes the lesson to `dir/<title>`: exported beside it first, then put
/// in place by renames, so the folder is always a whole version.
async fn write_lesson(node: &Node, root: Hash, title: &str, dir: &Path) -> Result<PathBuf, String> {
    let name = folder_name(title, root);
    let target = dir.join(&name);
    let pid = std::process::id();
    let fresh = dir.join(format!(".{name}.classe-new-{pid}"));
    let old = dir.join(format!(".{name}.classe-old-{pid}"));
    let _ = std::fs::remove_dir_all(&fresh);
    node.store()
        .export(root, &fresh)
        .await
        .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    let had_old = target.exists();
    if had_old {
        std::fs::rename(&target, &old)
            .map_err(|e| format!("cannot replace {}: {e}", target.display()))?;
    }
    if let Err(e) = std::fs::rename(&fresh, &target) {
        if had_old {
            let _ = std::fs::rename(&old, &target);
        }
        let _ = std::fs::remove_dir_all(&fresh);
        return Err(format!("cannot write {}: {e}", target.display()));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(target)
}
