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
        let imported = import(home, node, &args, &secret).await?;
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
    home: &Home,
    node: &classe_node::Node,
    args: &ShareArgs,
    secret: &classe_bundle::AuthorSecret,
) -> Result<Imported, Exit> {
    let bar = ui::byte_bar(0, "importing");
    let options = ImportOptions {
        title: args.title.clone(),
        new_lesson: args.new_lesson,
        credentials: credentials(home, secret)?,
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

/// The certificate installed with `classe id --cert`, checked against
/// this key and the clock, with a warning when pupils would refuse it.
fn credentials(
    home: &Home,
    secret: &classe_bundle::AuthorSecret,
) -> Result<Option<classe_bundle::school::Credentials>, Exit> {
    let Some(creds) = home.credentials()? else {
        return Ok(None);
    };
    let cert = &creds.cert.cert;
    let when = classe_bundle::anchor::date;
    if cert.subject != secret.public() {
        eprintln!(
            "warning: the certificate installed is for {}, not for your author key; pupils will refuse this lesson. Install yours with `classe id --cert FILE`",
            cert.subject
        );
    } else if cert.not_after < Home::now() {
        eprintln!(
            "warning: your certificate by {} expired on {}; pupils will refuse this lesson. Ask the school for a new one",
            cert.school_name,
            when(cert.not_after)
        );
    } else if cert.roles & classe_bundle::school::ROLE_PUBLISH == 0 {
        eprintln!("warning: your certificate is for a seed node, not for publishing; pupils will refuse this lesson");
    }
    Ok(Some(creds))
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
    match &manifest.credentials {
        Some(c) => eprintln!(
            "Signed by your author key {}, certified by {} as {}.",
            secret.public(),
            c.cert.cert.school_name,
            c.cert.cert.name
        ),
        None => eprintln!("Signed by your author key {}.", secret.public()),
    }
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
