//! `classe`: share a lesson folder with a class, peer to peer.
//!
//! This binary turns flags, `CLASSE_*` environment variables and the home's
//! `config.toml` into library configuration, prints results on stdout and
//! everything else on stderr, and maps errors to documented exit codes
//! (see `docs/cli.md`).

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod cmd_fetch;
mod cmd_follow;
mod cmd_id;
mod cmd_school;
mod cmd_seed;
mod cmd_share;
mod cmd_store;
mod demo;
mod exit;
mod home;
mod rate;
mod session;
mod ui;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit::Exit;

/// Peer-to-peer classroom sharing: signed lesson bundles, fetched from the
/// teacher and from classmates at once.
#[derive(Debug, Parser)]
#[command(name = "classe", version, about, long_about = None)]
struct Cli {
    /// Folder holding this user's keys, trust list and store. Two homes
    /// are two independent users. Default: $CLASSE_HOME, else the
    /// platform data folder (~/.local/share/classe on Linux).
    #[arg(long, global = true, env = "CLASSE_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// More detail on stderr (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print your author key (the identity pupils trust), or move it.
    Id(cmd_id::IdArgs),
    /// Manage the authors and schools whose lessons you accept.
    #[command(subcommand)]
    Trust(cmd_id::TrustCommand),
    /// The school's key: certify teachers, revoke, rotate (for the
    /// school's IT person).
    #[command(subcommand)]
    School(cmd_school::SchoolCommand),
    /// Share a folder or file: print a ticket, then serve until stopped.
    Share(cmd_share::ShareArgs),
    /// Fetch a lesson from a ticket, write it to a folder, then re-share it.
    Fetch(cmd_fetch::FetchArgs),
    /// Run an always-on node: mirror and re-share every lesson of the
    /// teachers it follows (a school's seed node, or a pupil's inbox).
    Seed(cmd_seed::SeedArgs),
    /// Receive new lessons of a teacher automatically (with `classe seed`).
    Follow(cmd_follow::FollowArgs),
    /// Stop following a teacher.
    Unfollow(cmd_follow::UnfollowArgs),
    /// List the bundles in your store.
    Ls(cmd_store::LsArgs),
    /// Write a bundle from your store to a folder.
    Export(cmd_store::ExportArgs),
    /// Remove a bundle from your store and reclaim its space.
    Rm(cmd_store::RmArgs),
    /// Check the bundles in your store against their hashes (exit 4 if
    /// any is damaged).
    Verify(cmd_store::VerifyArgs),
    /// Run a classroom on this machine: a teacher and a few pupils, each a
    /// separate classe process with its own home, on loopback.
    Demo(demo::DemoArgs),
}

/// Network settings shared by the commands that run a node.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// UDP address to listen on. Default: 0.0.0.0:0 (all interfaces, any
    /// port), or `bind` in config.toml.
    #[arg(long, env = "CLASSE_BIND", value_name = "ADDR")]
    bind: Option<std::net::SocketAddr>,
    /// The relay server your school runs (`classe seed --relay-server`
    /// prints its URL; http:// or https://). Pupils at home need it to
    /// reach each other through their routers. Default: `relay` in
    /// config.toml, else none (direct connections only).
    #[arg(long, env = "CLASSE_RELAY", value_name = "URL")]
    relay: Option<String>,
    /// Extra root certificates (PEM) to trust for an https:// relay whose
    /// certificate comes from the school's own authority.
    #[arg(long, env = "CLASSE_RELAY_CA", value_name = "FILE")]
    relay_ca: Option<std::path::PathBuf>,
    /// Do not ask the home router to open a port (UPnP-IGD, NAT-PMP, PCP).
    #[arg(long, env = "CLASSE_NO_PORT_MAPPING")]
    no_port_mapping: bool,
    /// Upload cap over all peers, e.g. 2MB/s, 10Mbit/s, 500KiB/s.
    #[arg(long, env = "CLASSE_MAX_UPLOAD", value_name = "RATE", value_parser = rate::parse_rate)]
    max_upload: Option<u64>,
    /// Download cap, same units as --max-upload.
    #[arg(long, env = "CLASSE_MAX_DOWNLOAD", value_name = "RATE", value_parser = rate::parse_rate)]
    max_download: Option<u64>,
    /// Most peers served at once.
    #[arg(long, value_name = "N")]
    max_peers: Option<usize>,
    /// Seconds to wait for a provider to answer.
    #[arg(long, value_name = "SECS")]
    connect_timeout: Option<u64>,
    /// A node to join the class network through, usually the school's
    /// seed node (the address `classe seed` prints). Repeatable; added to
    /// `bootstrap` in config.toml.
    #[arg(long, value_name = "ADDR")]
    bootstrap: Vec<String>,
    /// Do not look for classmates on the local network (mDNS).
    #[arg(long, env = "CLASSE_NO_MDNS")]
    no_mdns: bool,
    /// Tickets only: no DHT, no announcements, no mDNS (share and fetch;
    /// `seed` needs discovery).
    #[arg(long, env = "CLASSE_NO_DISCOVERY")]
    no_discovery: bool,
}

fn main() {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let verbose = cli.verbose;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::INTERNAL);
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for stray background tasks (a QUIC close, a store thread)
    // longer than a moment.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => {}
        Err(e) => {
            let code = e.code();
            eprintln!("error: {e}");
            if verbose > 0 {
                if let Some(chain) = e.chain() {
                    eprintln!("{chain}");
                }
            }
            std::process::exit(code);
        }
    }
}

async fn run(cli: Cli) -> Result<(), Exit> {
    let home = home::Home::resolve(cli.home)?;
    match cli.command {
        Command::Id(args) => cmd_id::id(&home, args),
        Command::Trust(cmd) => cmd_id::trust(&home, cmd),
        Command::School(cmd) => cmd_school::run(&home, cmd),
        Command::Share(args) => cmd_share::run(&home, args).await,
        Command::Fetch(args) => cmd_fetch::run(&home, args).await,
        Command::Seed(args) => cmd_seed::run(&home, args).await,
        Command::Follow(args) => cmd_follow::follow(&home, args),
        Command::Unfollow(args) => cmd_follow::unfollow(&home, args),
        Command::Ls(args) => cmd_store::ls(&home, args).await,
        Command::Export(args) => cmd_store::export(&home, args).await,
        Command::Rm(args) => cmd_store::rm(&home, args).await,
        Command::Verify(args) => cmd_store::verify(&home, args).await,
        Command::Demo(args) => demo::run(args).await,
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        // libp2p reports unreachable peers and lost multicast at warn:
        // routine on a LAN, noise on a pupil's terminal.
        0 => "warn,libp2p_mdns=error,libp2p_swarm=error,libp2p_kad=error,libp2p_gossipsub=error",
        1 => "info,classe=info",
        2 => "info,classe=debug,classe_node=debug,classe_store=debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("CLASSE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colour codes only for a person at a terminal, not in a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(verbose > 1)
        .init();
}
