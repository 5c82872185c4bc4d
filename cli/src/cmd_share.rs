//! `classe share PATH`: import, sign, print the ticket, serve.

use std::{io::Write, path::PathBuf, time::Instant};

use clap::Args;
use classe_store::{ImportError, ImportOptions, ImportProgress, Skipped};

use crate::{
    exit::{Exit, IO, USAGE},
    home::Home,
    ui, NetArgs,
};

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

fn import_error(e: ImportError) -> Exit {
    let code = match &e {
        ImportError::ReadSource { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            USAGE
        }
        ImportError::ReadSource { .. }
        | ImportError::Lessons { .. }
        | ImportError::Store { .. } => IO,
        ImportError::NotShareable(_) | ImportError::Empty { .. } | ImportError::Manifest(_) => {
            USAGE
        }
    };
    Exit::new(code, e.to_string()).with_source(&e)
}

pub async fn run(home: &Home, args: ShareArgs) -> Result<(), Exit> {
    let started = Instant::now();
    let mut shutdown = ui::Shutdown::install();
    let secret = home.author_secret()?;
    let node = home.spawn_node(&args.net).await?;
    node.discard_control_events();

    let bar = ui::byte_bar(0, "importing");
    let options = ImportOptions {
        title: args.title.clone(),
        new_lesson: args.new_lesson,
    };
    let imported = node
        .store()
        .import(&args.path, &options, &secret, |p| match p {
            ImportProgress::Found { bytes, .. } => bar.set_length(bytes),
            ImportProgress::Imported(done) => bar.set_position(done),
        })
        .await;
    bar.finish_and_clear();
    let imported = match imported {
        Ok(i) => i,
        Err(e) => {
            if let ImportError::Empty { skipped, .. } = &e {
                print_skipped(skipped);
            }
            node.shutdown().await;
            return Err(import_error(e));
        }
    };
    print_skipped(&imported.skipped);
    let manifest = imported.manifest.manifest();
    node.serve_bundle(imported.root, manifest);
    // Damage in this store is said in the log (warn), bundle and file.
    node.store().spawn_background_check();
    node.provide(imported.root).await;
    let ticket = node.ticket(imported.root, secret.public());
    // Tell followers (the school's seed node, pupils' inboxes): signed,
    // on the author's gossip topic and in their catch-up record.
    let announced = announce(home, &node, &secret, imported.root, manifest).await;
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
    let stats = ui::stats_json(&node, started);
    node.shutdown().await;
    if let Some(path) = args.stats {
        ui::write_json_file(&path, &stats)
            .map_err(crate::exit::io(format!("cannot write {}", path.display())))?;
    }
    Ok(())
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

/// Signs an announcement of this version and hands it to the control
/// plane; keeps it in the home so a restart re-announces it.
async fn announce(
    home: &Home,
    node: &classe_node::Node,
    secret: &classe_bundle::AuthorSecret,
    root: classe_store::iroh_blobs::Hash,
    manifest: &classe_bundle::Manifest,
) -> Result<(), String> {
    let Some(control) = node.control() else {
        return Ok(());
    };
    let announcement = classe_bundle::Announcement {
        author: secret.public(),
        lesson_id: manifest.lesson_id,
        version: manifest.version,
        root: *root.as_bytes(),
        title: manifest.title.clone(),
        unix_secs: manifest.created_unix_secs,
        providers: vec![node.provider_info()],
    };
    let signed =
        classe_bundle::SignedAnnouncement::sign(announcement, secret).map_err(|e| e.to_string())?;
    control.announce(signed.clone()).await;
    let mut all = home.announcements();
    all.push(signed);
    home.save_announcements(&all).map_err(|e| e.to_string())
}
