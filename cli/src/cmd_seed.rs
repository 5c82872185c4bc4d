//! `classe seed`: the always-on node. Mirrors and pins every lesson
//! announced by the authors it follows, re-shares everything it holds,
//! answers the DHT as the class network's bootstrap node.
//!
//! stdout, for scripts and the school's tooling: first the bootstrap
//! addresses, one per line (`/ip4/A/tcp/P/p2p/ID`), then one JSON object
//! per line for each event (`mirrored`, `mirror_failed`, `ignored`).

use std::{io::Write, path::PathBuf};

use clap::Args;
use classe_bundle::AuthorKey;
use classe_node::{Node, Seed, SeedConfig, SeedError, SeedEvent};
use classe_store::iroh_blobs::Hash;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    cmd_id::parse_key,
    exit::{Exit, USAGE},
    home::{FileConfig, Home},
    session::with_node,
    ui, NetArgs,
};

/// The seed's port when none is configured: TCP for discovery, UDP for
/// data.
pub const DEFAULT_PORT: u16 = 4100;

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
    /// Mirror the lessons of every teacher this school key certifies (the
    /// school must be trusted: `classe follow --school` does both).
    /// Repeatable; added to `follow_schools` in the config.
    #[arg(long = "follow-school", value_name = "KEY")]
    follow_school: Vec<String>,
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

/// What `classe seed` runs with, from flags, the config file and the home.
struct Settings {
    file: FileConfig,
    follow: Vec<AuthorKey>,
    schools: Vec<AuthorKey>,
    out: Option<PathBuf>,
    listen: std::net::SocketAddr,
}

fn settings(home: &Home, args: &SeedArgs) -> Result<Settings, Exit> {
    let file = match &args.config {
        Some(path) if !path.is_file() => {
            return Err(Exit::new(
                USAGE,
                format!("config file {} does not exist", path.display()),
            ))
        }
        Some(path) => FileConfig::read(path)?,
        None => home.file_config()?,
    };
    let follow = merge_keys(&args.follow, &file.follow, home.follow_list()?)?;
    let schools = merge_keys(
        &args.follow_school,
        &file.follow_schools,
        home.followed_schools()?,
    )?;
    let book = home.school_book()?;
    if let Some(k) = schools.iter().find(|k| book.get(k).is_none()) {
        return Err(Exit::new(
            USAGE,
            format!("the school {k} is followed but not trusted; run `classe follow --school {k} --name NAME`"),
        ));
    }
    Ok(Settings {
        schools,
        out: args.out.clone().or(file.out.clone()),
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or(std::net::SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
        follow,
        file,
    })
}

/// The schools followed, with this node's mirror certificate if it has
/// one (to countersign and sign statements).
fn school_seeding(
    home: &Home,
    schools: Vec<AuthorKey>,
) -> Result<Option<classe_node::SchoolSeeding>, Exit> {
    if schools.is_empty() {
        return Ok(None);
    }
    let signer = match home.credentials()? {
        Some(c) if c.cert.cert.roles & classe_bundle::school::ROLE_MIRROR != 0 => {
            Some(std::sync::Arc::new((c.cert, home.author_secret()?)))
        }
        _ => {
            eprintln!("note: this seed node has no certificate with the mirror role: it mirrors the school's lessons but cannot countersign them (`classe school certify KEY --role mirror`, then `classe id --cert FILE` here)");
            None
        }
    };
    Ok(Some(classe_node::SchoolSeeding {
        schools,
        book_dir: home.dir.join("schools"),
        signer,
        statement_every: std::time::Duration::from_secs(
            std::env::var("CLASSE_STATEMENT_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3600),
        ),
    }))
}

/// Keys from flags, then the config file, then the home's list, once each.
fn merge_keys(
    flags: &[String],
    file: &[String],
    listed: Vec<AuthorKey>,
) -> Result<Vec<AuthorKey>, Exit> {
    let mut keys: Vec<AuthorKey> = Vec::new();
    for key in flags
        .iter()
        .chain(file)
        .map(|t| parse_key(t))
        .chain(listed.into_iter().map(Ok))
    {
        let key = key?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Starts the school's relay if one is configured; the node then uses it
/// too (unless told to use another).
async fn start_relay(
    args: &SeedArgs,
    file: &FileConfig,
    config: &mut classe_node::NodeConfig,
) -> Result<Option<classe_node::RelayServer>, Exit> {
    let Some(rc) = relay_server_config(&args.relay, file)? else {
        return Ok(None);
    };
    let rc_chain = rc.tls.as_ref().map(|(chain, _)| chain.clone());
    let relay = classe_node::RelayServer::spawn(rc).await?;
    if config.relay_url.is_none() {
        config.relay_url = Some(relay.url().to_string());
        // Our own relay: trust the chain we serve (a school CA's
        // certificate in it), as pupils do with --relay-ca.
        if config.relay_ca.is_none() {
            config.relay_ca = rc_chain;
        }
    }
    Ok(Some(relay))
}

pub async fn run(home: &Home, args: SeedArgs) -> Result<(), Exit> {
    let mut shutdown = ui::Shutdown::install();
    let Settings {
        file,
        follow,
        schools,
        out,
        listen,
    } = settings(home, &args)?;
    let mut config = home.node_config_from(&args.net, &file, Some(listen))?;
    if let Some(control) = &mut config.control {
        control.follow = follow.clone();
        control.schools = schools.clone();
    }
    let relay = start_relay(&args, &file, &mut config).await?;
    let seed_config = SeedConfig {
        follow,
        out,
        log: Some(home.announcement_log()),
        school: school_seeding(home, schools)?,
        ..SeedConfig::default()
    };
    let result = with_node(home, config, args.stats.as_deref(), async |node, stats| {
        let seed = Seed::start(node, seed_config.clone()).await?;
        greet(node, &seed, &seed_config, relay.as_ref()).await?;
        let stop = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel(64);
        let printer = async {
            while let Some(ev) = rx.recv().await {
                event(seed_event_json(ev));
            }
        };
        // The service runs until the signal cancels it; then it stops its
        // mirrors and returns, and the printer ends with its channel.
        let signal = async {
            shutdown.wait().await;
            stop.cancel();
        };
        tokio::join!(seed.run(tx, stop.clone()), printer, signal);
        eprintln!("Stopping.");
        if let Some(c) = relay
            .as_ref()
            .and_then(|r| serde_json::to_value(r.carried()).ok())
        {
            stats.insert("relay".into(), c);
        }
        Ok(())
    })
    .await;
    if let Some(relay) = relay {
        relay.shutdown().await;
    }
    result
}

/// The bootstrap addresses on stdout (scripts and admins read them first),
/// the relay's URL, and a word on stderr.
async fn greet(
    node: &Node,
    seed: &Seed,
    config: &SeedConfig,
    relay: Option<&classe_node::RelayServer>,
) -> Result<(), Exit> {
    let control = node.control().ok_or(SeedError::NoControl)?;
    {
        let mut stdout = std::io::stdout().lock();
        for addr in control.listen_addrs().await {
            writeln!(stdout, "{addr}").map_err(crate::exit::io("cannot write to stdout"))?;
        }
        stdout
            .flush()
            .map_err(crate::exit::io("cannot write to stdout"))?;
    }
    if let Some(relay) = relay {
        event(serde_json::json!({"event": "relay", "url": relay.url().to_string()}));
        eprintln!(
            "Relay for pupils and teachers at home: --relay {}",
            relay.url()
        );
    }
    eprintln!(
        "Seeding {} bundle(s); following {} author(s){}. Press Ctrl-C to stop.",
        seed.held(),
        config.follow.len(),
        config
            .out
            .as_ref()
            .map(|d| format!("; writing lessons to {}", d.display()))
            .unwrap_or_default()
    );
    if let Some(s) = &config.school {
        eprintln!(
            "Following {} school(s): every teacher they certify is mirrored.",
            s.schools.len()
        );
    }
    if config.follow.is_empty() && config.school.is_none() {
        eprintln!(
            "note: no author followed; add one with --follow KEY, `follow` in the config, or `classe follow KEY`"
        );
    }
    Ok(())
}

/// A seed event as the JSON line `classe seed` prints (docs/cli.md).
fn seed_event_json(ev: SeedEvent) -> serde_json::Value {
    match ev {
        SeedEvent::Mirrored(m) => {
            let ann = &m.announcement;
            serde_json::json!({
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
            })
        }
        SeedEvent::MirrorFailed {
            announcement: ann,
            attempt,
            error,
        } => serde_json::json!({
            "event": "mirror_failed",
            "root": Hash::from_bytes(ann.root).to_hex(),
            "version": ann.version,
            "title": ann.title,
            "attempt": attempt,
            "reason": error.to_string(),
        }),
        SeedEvent::Ignored { reason, from } => serde_json::json!({
            "event": "ignored", "reason": reason, "from": from,
        }),
        SeedEvent::Withheld { root } => serde_json::json!({
            "event": "withheld", "root": root.to_hex(),
        }),
        SeedEvent::Bulletin {
            school,
            revocation_seq,
            via,
        } => serde_json::json!({
            "event": "bulletin", "school": school.to_string(),
            "revocation_seq": revocation_seq, "via": via,
        }),
    }
}
