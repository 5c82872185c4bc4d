//! `classe fetch TICKET`: verify, download, write, then re-share.

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
};

use clap::Args;
use classe_bundle::{
    anchor::{decide, Decision, Endorsement, SchoolBook, VersionBook},
    path::folder_name,
    AuthorKey, SignedManifest, Ticket,
};
use classe_node::{FetchEvent, FetchRequest, TrustDecision};
use classe_store::{iroh_blobs::Hash, ExportError};

use crate::{
    cmd_id::parse_key,
    exit::{Exit, INTERRUPTED, IO, USAGE},
    home::Home,
    session::with_node,
    ui, NetArgs,
};

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The ticket the teacher shared, or a bundle's root hash (64 hex
    /// characters, as `classe ls --json` prints it) to look up through
    /// the seed node, the DHT and the LAN. With a bare root, the signer
    /// must be trusted already or given with --trust.
    #[arg(value_name = "TICKET|ROOT")]
    ticket: String,
    /// Folder to write the lesson to; must not exist or be empty.
    /// Default: ./<title>.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Accept this author for this fetch, without adding them to your
    /// trust list. Repeatable.
    #[arg(long = "trust", value_name = "KEY")]
    trust: Vec<String>,
    /// Exit once the lesson is written instead of sharing it on.
    #[arg(long)]
    no_seed: bool,
    /// Print a JSON summary on stdout once the files are written.
    #[arg(long)]
    json: bool,
    /// Accept a version of the lesson older than one you already fetched
    /// (refused otherwise, so nobody can hand you an outdated lesson).
    #[arg(long)]
    allow_older: bool,
    /// On exit, write bytes sent and received per peer as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
}

fn export_error(e: ExportError, root: Hash) -> Exit {
    match &e {
        ExportError::DestinationExists(_) => Exit::new(
            IO,
            format!(
                "{e}. The lesson is safe in your store: write it elsewhere with `classe export {} DIR`",
                root.to_hex()
            ),
        ),
        _ => e.into(),
    }
}

/// Asks on the terminal whether to trust an unknown author.
fn ask_trust(manifest: &SignedManifest) -> bool {
    let m = manifest.manifest();
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "The lesson \"{}\" ({} file(s), {}) is signed by\n  {}\nwhom you do not trust yet. Check this key with your teacher.",
        m.title,
        m.files.len(),
        ui::bytes(m.total_size()),
        m.author
    )
    .ok();
    write!(err, "Trust this author from now on? [y/N] ").ok();
    err.flush().ok();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes" | "o" | "oui"
    )
}

pub async fn run(home: &Home, args: FetchArgs) -> Result<(), Exit> {
    let mut shutdown = ui::Shutdown::install();
    let ticket = parse_target(&args.ticket)?;
    let extra_trust: Vec<AuthorKey> = args
        .trust
        .iter()
        .map(|k| parse_key(k))
        .collect::<Result<_, _>>()?;
    let trust_store = home.trust_store()?;
    if let Some(out) = &args.out {
        check_destination(out)?;
    }
    let root = ticket.root;
    repair_store(home, root).await?;
    let mut config = home.node_config(&args.net)?;
    config.leaves_when_done = args.no_seed;
    let schools = home.school_book()?;
    if let Some(control) = &mut config.control {
        // The schools' newest word (revocations, the seed's statement)
        // arrives through their topic and DHT record while we fetch.
        control.schools = schools.schools().map(|s| s.identity).collect();
    }
    let news = SchoolNews::new(schools);
    let endorsed = Endorsed::default();
    let policy = Policy {
        home: home.clone(),
        extra_trust,
        trust_store,
        news: news.clone(),
        versions: home.version_book()?,
        allow_older: args.allow_older,
        max_staleness: home.max_staleness_secs()?,
        root,
        endorsed: endorsed.clone(),
    };
    let trust = move |m| policy.decide(m);
    with_node(home, config, args.stats.as_deref(), async |node, _| {
        match node.take_control_events() {
            Some(rx) => {
                tokio::spawn(news.clone().listen(rx));
            }
            None => news.give_up(),
        }
        let request = FetchRequest {
            root,
            expected_author: ticket.author,
            providers: ticket.providers.clone(),
        };
        let lookup = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let bar = ui::byte_bar(0, "fetching");
        let ui_task = tokio::spawn(show_progress(rx, bar.clone(), lookup.clone()));
        let outcome = tokio::select! {
            r = node.fetch(request, trust, tx) => Some(r),
            _ = shutdown.wait() => None,
        };
        ui_task.await.ok();
        bar.finish_and_clear();
        let report = match outcome {
            None => {
                return Err(Exit::new(
                    INTERRUPTED,
                    "interrupted; run the same command again to resume where it stopped",
                ))
            }
            Some(r) => r?,
        };
        let manifest = report.manifest.manifest();
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(folder_name(&manifest.title, root.as_bytes())));
        write_out(node, root, manifest, &out).await?;
        let out_abs = std::path::absolute(&out).unwrap_or(out.clone());
        let (endorsement, school_wait) = match endorsed.lock().ok().and_then(|e| e.clone()) {
            Some((e, w)) => (Some(e), Some(w)),
            None => (None, None),
        };
        if args.json {
            let dht = lookup.lock().ok().and_then(|l| *l);
            print_summary(
                node,
                &report,
                root,
                &out_abs,
                dht,
                endorsement
                    .as_ref()
                    .map(|e| (e, school_wait.unwrap_or(0.0))),
            )?;
        }
        let signer = match &endorsement {
            Some(e) => format!("signed by {}, certified by {}", e.teacher, e.school),
            None => format!("signature by {} verified", manifest.author.short()),
        };
        eprintln!(
            "Wrote \"{}\" ({} file(s), {}) to {}; received {} in {:.1}s, {signer}.",
            manifest.title,
            manifest.files.len(),
            ui::bytes(report.total_bytes),
            out_abs.display(),
            ui::bytes(report.received_bytes),
            report.elapsed.as_secs_f64(),
        );
        if !args.no_seed {
            eprintln!("Now sharing it with your classmates. Press Ctrl-C to stop.");
            shutdown.wait().await;
        }
        Ok(())
    })
    .await
}

/// A DHT lookup's result, for the JSON summary: providers found, seconds.
type Lookup = std::sync::Arc<std::sync::Mutex<Option<(usize, f64)>>>;

/// Shows the fetch's progress on `bar` and its warnings on stderr.
async fn show_progress(
    mut rx: tokio::sync::mpsc::Receiver<FetchEvent>,
    bar: indicatif::ProgressBar,
    lookup: Lookup,
) {
    let short = |peer: &str| peer[..10.min(peer.len())].to_string();
    while let Some(event) = rx.recv().await {
        match event {
            FetchEvent::Started {
                total_bytes,
                have_bytes,
                providers,
            } => {
                bar.set_length(total_bytes);
                bar.set_position(have_bytes);
                bar.set_message(format!("from {providers} peer(s)"));
                bar.reset_eta();
            }
            FetchEvent::Progress { done_bytes } => bar.set_position(done_bytes),
            FetchEvent::Discovered { providers, seconds } => {
                tracing::info!(providers, seconds, "DHT lookup done");
                if let Ok(mut l) = lookup.lock() {
                    *l = Some((providers, seconds));
                }
            }
            FetchEvent::Retrying { attempt, seconds } => bar.suspend(|| {
                eprintln!(
                    "warning: no provider answered (round {attempt}); trying again in {seconds:.0} s"
                )
            }),
            FetchEvent::ConnectFailed { peer, reason } => bar.suspend(|| {
                eprintln!("warning: cannot reach {}: {reason}", short(&peer))
            }),
            FetchEvent::ProviderDropped { peer, reason } => bar.suspend(|| {
                eprintln!("warning: stopped using {}: {reason}", short(&peer))
            }),
            FetchEvent::Stalled {
                seconds,
                missing_pieces,
                peers,
            } => bar.suspend(|| {
                eprintln!(
                    "warning: nothing received for {seconds} s ({missing_pieces} piece(s) missing, {peers} peer(s) connected); asking every provider known again"
                )
            }),
        }
    }
}

/// What the fetch knows to decide on a lesson's signer.
struct Policy {
    home: Home,
    extra_trust: Vec<AuthorKey>,
    trust_store: classe_bundle::TrustStore,
    news: SchoolNews,
    versions: VersionBook,
    allow_older: bool,
    max_staleness: u64,
    root: Hash,
    /// The certified signer, once accepted: for the final message.
    endorsed: Endorsed,
}

/// The certified signer, and how long the fetch waited for the school's
/// newest word before deciding (seconds).
type Endorsed = std::sync::Arc<std::sync::Mutex<Option<(Endorsement, f64)>>>;

impl Policy {
    /// The decision on `manifest`: a trusted school's verdict first (a
    /// revoked teacher is refused even if trusted directly), then `--trust`
    /// and the trust list, then the no-rollback rule; an unknown author is
    /// asked about on a terminal and, if accepted, added to the list.
    async fn decide(self, manifest: SignedManifest) -> TrustDecision {
        let m = manifest.manifest();
        let author = m.author;
        let direct = self.extra_trust.contains(&author) || self.trust_store.contains(&author);
        let waited = self.news.wait_for_school(m).await;
        let decision = decide(
            &self.news.book(),
            direct,
            m,
            *self.root.as_bytes(),
            Home::now(),
            self.max_staleness,
        );
        let endorsement = match decision {
            Decision::Refused(r) => return TrustDecision::RefusedBecause(r.to_string()),
            Decision::Certified(e) => Some(e),
            Decision::Direct => None,
            Decision::Unknown => {
                if !ask_if_interactive(&self.home, manifest.clone()).await {
                    return TrustDecision::Refused;
                }
                None
            }
        };
        if !self.allow_older {
            if let Err(r) = self.versions.check(m) {
                return TrustDecision::RefusedBecause(r.to_string());
            }
        }
        if let Some(e) = endorsement {
            for w in &e.warnings {
                eprintln!("warning: {w}");
            }
            if let Ok(mut slot) = self.endorsed.lock() {
                *slot = Some((e, waited.as_secs_f64()));
            }
        }
        self.remember(m);
        TrustDecision::Trusted
    }

    /// Keeps the accepted version (no rollback later) and what the
    /// certificate taught (a newer school key, a later signed time).
    fn remember(mut self, m: &classe_bundle::Manifest) {
        if let Err(e) = self.versions.accept(m, *self.root.as_bytes()) {
            eprintln!("warning: could not record the lesson's version: {e}");
        }
        if let Some(creds) = &m.credentials {
            if let Err(e) = self.news.book().learn(creds) {
                eprintln!("warning: could not record the school's key: {e}");
            }
        }
    }
}

/// How long a fetch waits for its school's newest word (a DHT read on a
/// school network takes well under a second).
const NEWS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The school book, kept up to date from the network during the fetch.
#[derive(Clone)]
struct SchoolNews {
    book: std::sync::Arc<std::sync::Mutex<SchoolBook>>,
    arrived: std::sync::Arc<tokio::sync::Notify>,
    /// Set once a bulletin arrived or nothing can arrive (no discovery).
    settled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SchoolNews {
    fn new(book: SchoolBook) -> Self {
        Self {
            book: std::sync::Arc::new(std::sync::Mutex::new(book)),
            arrived: Default::default(),
            settled: Default::default(),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, SchoolBook> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Nothing will arrive (tickets only): never wait.
    fn give_up(&self) {
        self.settled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes in every school bulletin the control plane reports.
    async fn listen(self, mut rx: tokio::sync::mpsc::Receiver<classe_node::ControlEvent>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                classe_node::ControlEvent::SchoolBulletin {
                    school, bulletin, ..
                } => match self.book().absorb(school, *bulletin) {
                    Ok(true) => tracing::info!(%school, "newer school bulletin kept"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("school bulletin not kept: {e}"),
                },
                classe_node::ControlEvent::SchoolChecked { .. } => {
                    self.settled
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    self.arrived.notify_waiters();
                }
                _ => {}
            }
        }
        self.give_up();
        self.arrived.notify_waiters();
    }

    /// For a lesson certified by a trusted school: waits (a moment at
    /// most) for the first read of the school's DHT record, so that a
    /// pupil online gets a revocation issued minutes ago.
    async fn wait_for_school(&self, m: &classe_bundle::Manifest) -> std::time::Duration {
        let started = std::time::Instant::now();
        let Some(creds) = &m.credentials else {
            return started.elapsed();
        };
        if self.book().get(&creds.cert.cert.school).is_none() {
            return started.elapsed();
        }
        let arrived = self.arrived.notified();
        if self.settled.load(std::sync::atomic::Ordering::Relaxed) {
            return started.elapsed();
        }
        let _ = tokio::time::timeout(NEWS_WAIT, arrived).await;
        started.elapsed()
    }
}

/// Asks on a terminal whether to trust an unknown author; adds them to
/// the trust list if so. Refuses when nobody is at a terminal.
async fn ask_if_interactive(home: &Home, manifest: SignedManifest) -> bool {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !interactive {
        return false;
    }
    let author = manifest.manifest().author;
    let yes = tokio::task::spawn_blocking(move || ask_trust(&manifest))
        .await
        .unwrap_or(false);
    if yes {
        if let Ok(mut store) = home.trust_store() {
            store.add(author, "");
            if let Err(e) = store.save() {
                eprintln!("warning: could not save the trust list: {e}");
            }
        }
    }
    yes
}

/// Writes the fetched lesson to `out`, refusing up front when the disk
/// lacks the room rather than failing halfway.
async fn write_out(
    node: &classe_node::Node,
    root: Hash,
    manifest: &classe_bundle::Manifest,
    out: &Path,
) -> Result<(), Exit> {
    if let Some(free) = classe_node::free_space(out).await {
        if free < manifest.total_size() {
            return Err(Exit::new(
                IO,
                format!(
                    "not enough disk space to write {}: {} needed, {} free. The lesson is in your store; free some space and run `classe export {} DIR`",
                    out.display(),
                    ui::bytes(manifest.total_size()),
                    ui::bytes(free),
                    root.to_hex()
                ),
            ));
        }
    }
    node.store()
        .export(root, out)
        .await
        .map_err(|e| export_error(e, root))
}

/// The JSON summary `--json` prints on stdout (docs/cli.md).
fn print_summary(
    node: &classe_node::Node,
    report: &classe_node::FetchReport,
    root: Hash,
    out_abs: &Path,
    lookup: Option<(usize, f64)>,
    endorsement: Option<(&Endorsement, f64)>,
) -> Result<(), Exit> {
    let manifest = report.manifest.manifest();
    // How each provider's bytes travelled: direct or relayed (QUIC
    // datagram bytes, overhead included).
    let all_paths = node.path_bytes();
    let me = node.provider_info();
    let provider_paths: std::collections::BTreeMap<&String, &classe_node::PathBytes> = report
        .per_provider
        .keys()
        .filter_map(|p| all_paths.get(p).map(|b| (p, b)))
        .collect();
    let summary = serde_json::json!({
        "root": root.to_hex(),
        "title": manifest.title,
        "author": manifest.author.to_string(),
        "lesson_id": manifest.lesson_id.to_string(),
        "version": manifest.version,
        "out": out_abs.display().to_string(),
        "files": manifest.files.iter().map(|f| serde_json::json!({
            "path": f.path, "size": f.size,
        })).collect::<Vec<_>>(),
        "total_bytes": report.total_bytes,
        "already_had_bytes": report.already_had_bytes,
        "received_bytes": report.received_bytes,
        "per_provider": report.per_provider,
        "seconds": report.elapsed.as_secs_f64(),
        "node_id": data_encoding::HEXLOWER.encode(&node.id()),
        "dht_lookup": lookup.map(|(providers, seconds)| {
            serde_json::json!({ "providers": providers, "seconds": seconds })
        }),
        "addrs": me.addrs,
        "relay_url": me.relay_url,
        "first_byte_secs": report.first_byte_secs,
        "paths": provider_paths,
        "certified": endorsement.map(|(e, waited)| serde_json::json!({
            "teacher": e.teacher, "school": e.school, "school_key": e.identity.to_string(),
            "school_wait_secs": waited,
        })),
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{summary}").map_err(crate::exit::io("cannot write to stdout"))?;
    stdout
        .flush()
        .map_err(crate::exit::io("cannot write to stdout"))
}

/// Before a fetch trusts what the store holds of `root`: checks it against
/// its hashes, and drops damaged blobs so that the fetch gets them again.
/// Reads what the store holds of the bundle once.
async fn repair_store(home: &Home, root: Hash) -> Result<(), Exit> {
    let store = home.open_store().await?;
    let check = store.check_bundle(root).await;
    store.shutdown().await;
    let check = check
        .map_err(|e| Exit::new(IO, format!("cannot check your store: {e}")).with_source(&e))?;
    if !check.is_damaged() {
        return Ok(());
    }
    if let Some(what) = &check.header_damage {
        eprintln!("warning: {what} is damaged in your store; fetching it again");
    }
    for f in check.files.iter().filter(|f| f.check.is_damaged()) {
        eprintln!(
            "warning: \"{}\" is damaged in your store; fetching it again",
            f.path.escape_debug()
        );
    }
    classe_store::drop_blobs(&home.store_dir(), &check.damaged_blobs())
        .await
        .map_err(|e| {
            Exit::new(
                IO,
                format!("cannot remove damaged data from your store: {e}"),
            )
            .with_source(&e)
        })
}

/// What to fetch: from a ticket, or a bare root hash.
struct Target {
    root: Hash,
    author: Option<AuthorKey>,
    providers: Vec<classe_bundle::ProviderInfo>,
}

fn parse_target(text: &str) -> Result<Target, Exit> {
    let text = text.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut root = [0u8; 32];
        data_encoding::HEXLOWER_PERMISSIVE
            .decode_mut(text.as_bytes(), &mut root)
            .map_err(|_| Exit::new(USAGE, "the root hash is not valid hexadecimal"))?;
        return Ok(Target {
            root: Hash::from_bytes(root),
            author: None,
            providers: Vec::new(),
        });
    }
    let ticket: Ticket = text.parse().map_err(|e: classe_bundle::TicketError| {
        Exit::new(
            USAGE,
            format!("{e} (expected a ticket from `classe share`, or a 64-character root hash)"),
        )
    })?;
    Ok(Target {
        root: Hash::from_bytes(ticket.root),
        author: Some(ticket.author),
        providers: ticket.providers,
    })
}

/// Refuses a destination that exists and is not an empty folder, before
/// any download.
fn check_destination(out: &Path) -> Result<(), Exit> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(Exit::new(
                IO,
                format!(
                    "{} already exists and is not empty; choose another --out",
                    out.display()
                ),
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => Err(Exit::new(
            IO,
            format!(
                "{} exists and is not a folder; choose another --out",
                out.display()
            ),
        )),
    }
}
