//! `classe share PATH`: import, sign, print the ticket, serve.

use std::{io::Write, path::PathBuf};

use clap::Args;
use classe_store::{ImportError, ImportOptions, ImportProgress, Imported, Skipped};

use crate::{exit::Exit, home::Home, session::with_node, ui, NetArgs};

#[derive(Debug, Args)]
pub struct ShareArgs {
    /// The folder or file to share.
    path: PathBuf,
    /// Title shown to pupils; also their default folder name. Default: the
    /// folder's name.
    #[arg(long)]
    title: Option<String>,
    /// Also draw the ticket as a QR code on stderr.
    #[arg(long)]
    qr: bool,
    /// Start a new lesson instead of a new version of the lesson made from
    /// this folder before.
    #[arg(long)]
    new_lesson: bool,
    /// On exit, write bytes sent and received per peer as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
}

pub async fn run(home: &Home, args: ShareArgs) -> Result<(), Exit> {
    let mut shutdown = ui::Shutdown::install();
    let secret = home.author_secret()?;
    let config = home.node_config(&args.net)?;
    with_node(home, config, args.stats.as_deref(), async |node, _| {
        node.discard_control_events();
        let imported = import(node, &args, &secret).await?;
        let manifest = imported.manifest.manifest();
        node.serve_bundle(imported.root, manifest);
        // Damage in this store is said in the log (warn), bundle and file.
        node.store().spawn_background_check();
        node.provide(imported.root).await;
        let ticket = node.ticket(imported.root, secret.public());
        // Tell followers (the school's seed node, pupils' inboxes): signed,
        // on the author's gossip topic and in their catch-up record.
        let announced = node
            .announce(&secret, imported.root, manifest, &home.announcement_log())
            .await;
        if ticket.providers.first().is_none_or(|p| p.addrs.is_empty()) {
            eprintln!("warning: this machine has no network address pupils could use");
        }
        // The ticket alone on stdout, flushed now: scripts read this line.
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{ticket}").map_err(crate::exit::io("cannot write to stdout"))?;
            out.flush()
                .map_err(crate::exit::io("cannot write to stdout"))?;
        }
        describe(&imported, &secret);
        if let Err(e) = announced {
            eprintln!("warning: followers were not told about this version: {e}");
        }
        eprintln!("Pupils run: classe fetch <the ticket above>");
        if args.qr {
            ui::print_qr(&ticket.to_string());
        }
        eprintln!("Serving until Ctrl-C.");
        shutdown.wait().await;
        eprintln!("Stopping.");
        Ok(())
    })
    .await
}

/// Imports the folder into the store, with a progress bar.
async fn import(
    node: &classe_node::Node,
    args: &ShareArgs,
    secret: &classe_bundle::AuthorSecret,
) -> Result<Imported, Exit> {
    let bar = ui::byte_bar(0, "importing");
    let options = ImportOptions {
        title: args.title.clone(),
        new_lesson: args.new_lesson,
    };
    let imported = node
        .store()
        .import(&args.path, &options, secret, |p| match p {
            ImportProgress::Found { bytes, .. } => bar.set_length(bytes),
            ImportProgress::Imported(done) => bar.set_position(done),
        })
        .await;
    bar.finish_and_clear();
    match imported {
        Ok(i) => {
            print_skipped(&i.skipped);
            Ok(i)
        }
        Err(e) => {
            if let ImportError::Empty { skipped, .. } = &e {
                print_skipped(skipped);
            }
            Err(e.into())
        }
    }
}

/// What is shared, on stderr.
fn describe(imported: &Imported, secret: &classe_bundle::AuthorSecret) {
    let manifest = imported.manifest.manifest();
    eprintln!(
        "Sharing \"{}\" version {}{}: {} file(s), {}{}.",
        manifest.title,
        manifest.version,
        if imported.unchanged {
            " (unchanged since last shared)"
        } else {
            ""
        },
        manifest.files.len(),
        match manifest.dirs.len() {
            0 => String::new(),
            n => format!("{n} empty folder(s), "),
        },
        ui::bytes(manifest.total_size()),
    );
    if !imported.skipped.is_empty() {
        eprintln!(
            "Left out: {} item(s), see the warnings above.",
            imported.skipped.len()
        );
    }
    eprintln!("Signed by your author key {}.", secret.public());
}

/// One warning line per entry left out.
fn print_skipped(skipped: &[Skipped]) {
    for s in skipped {
        // Escaped: a file name with a newline must not forge a line of
        // our output.
        eprintln!(
            "warning: skipped {}: {}",
            s.path.display().to_string().escape_debug(),
            s.reason
        );
    }
}
