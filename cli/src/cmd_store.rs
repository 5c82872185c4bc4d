//! `classe ls`, `classe export`, `classe rm`, `classe verify`.

use std::path::PathBuf;

use clap::Args;
use classe_store::{iroh_blobs::Hash, Store};

use crate::{
    exit::{Exit, IO, USAGE, VERIFY},
    home::Home,
    ui,
};

#[derive(Debug, Args)]
pub struct LsArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The bundle's root hash (or a unique prefix of at least 8 characters).
    root: String,
    /// Folder to write; must not exist or be empty.
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Check only this bundle (root hash or a unique prefix of at least 8
    /// characters). Default: every bundle in the store.
    root: Option<String>,
    /// One JSON object per bundle and line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The bundle's root hash (or a unique prefix of at least 8 characters).
    root: String,
}

/// A full hex root, or a unique prefix among the pinned bundles.
async fn resolve_root(store: &Store, text: &str) -> Result<Hash, Exit> {
    let text = text.trim().to_ascii_lowercase();
    if let Ok(hash) = text.parse::<Hash>() {
        return Ok(hash);
    }
    if text.len() < 8 || !text.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Exit::new(
            USAGE,
            format!("{text:?} is not a bundle root; `classe ls` lists them"),
        ));
    }
    let matches: Vec<Hash> = store
        .list()
        .await
        .map_err(Exit::from)?
        .into_iter()
        .map(|b| b.root)
        .filter(|r| r.to_hex().starts_with(&text))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(Exit::new(
            USAGE,
            format!("no bundle starting with {text} in your store"),
        )),
        _ => Err(Exit::new(
            USAGE,
            format!("{text} matches several bundles; give more characters"),
        )),
    }
}

pub async fn ls(home: &Home, args: LsArgs) -> Result<(), Exit> {
    let store = home.open_store().await?;
    let list = store.list().await;
    store.shutdown().await;
    let list = list.map_err(Exit::from)?;
    if !args.json && list.is_empty() {
        eprintln!("Your store is empty.");
    }
    for b in &list {
        let m = b.manifest.manifest();
        let size = m.total_size();
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "root": b.root.to_hex(),
                    "title": m.title,
                    "author": m.author.to_string(),
                    "lesson_id": m.lesson_id.to_string(),
                    "version": m.version,
                    "files": m.files.len(),
                    "size": size,
                    "local_bytes": b.local_bytes.min(size),
                    "complete": b.complete,
                })
            );
        } else {
            println!(
                "{}  {:<9} v{:<3} {:>9}  {}  {}",
                &b.root.to_hex()[..16],
                if b.complete { "complete" } else { "partial" },
                m.version,
                ui::bytes(size),
                m.author.short(),
                m.title
            );
        }
    }
    Ok(())
}

pub async fn export(home: &Home, args: ExportArgs) -> Result<(), Exit> {
    let store = home.open_store().await?;
    let result = async {
        let root = resolve_root(&store, &args.root).await?;
        store.export(root, &args.dir).await.map_err(|e| match e {
            classe_store::ExportError::DestinationExists(_)
            | classe_store::ExportError::Write { .. } => {
                Exit::new(IO, e.to_string()).with_source(&e)
            }
            classe_store::ExportError::Read(classe_store::ReadError::NotFound(_)) => {
                Exit::new(USAGE, format!("no bundle {} in your store", root.to_hex()))
            }
            _ => Exit::new(VERIFY, e.to_string()),
        })
    }
    .await;
    store.shutdown().await;
    result?;
    eprintln!("Wrote {}.", args.dir.display());
    Ok(())
}

pub async fn rm(home: &Home, args: RmArgs) -> Result<(), Exit> {
    let store = home.open_store().await?;
    let result = async {
        let root = resolve_root(&store, &args.root).await?;
        let removed = store.remove(root).await.map_err(Exit::from)?;
        if !removed {
            return Err(Exit::new(
                USAGE,
                format!("no bundle {} in your store", root.to_hex()),
            ));
        }
        Ok(root)
    }
    .await;
    store.shutdown().await;
    let root = result?;
    classe_store::collect_garbage(&home.store_dir()).await?;
    eprintln!("Removed {}.", root.to_hex());
    Ok(())
}

pub async fn verify(home: &Home, args: VerifyArgs) -> Result<(), Exit> {
    let store = home.open_store().await?;
    let result = async {
        let roots = match &args.root {
            Some(text) => vec![resolve_root(&store, text).await?],
            None => store.pinned_roots().await.map_err(Exit::from)?,
        };
        let mut checks = Vec::new();
        for root in roots {
            checks.push(store.check_bundle(root).await.map_err(Exit::from)?);
        }
        Ok::<_, Exit>(checks)
    }
    .await;
    store.shutdown().await;
    let checks = result?;
    if let Some(text) = &args.root {
        if checks.iter().all(|c| !c.in_store) {
            return Err(Exit::new(
                USAGE,
                format!("no bundle {text} in your store; `classe ls` lists them"),
            ));
        }
    }
    if !args.json && checks.is_empty() {
        eprintln!("Your store is empty.");
    }
    let mut damaged = 0usize;
    for check in checks.iter().filter(|c| c.in_store) {
        damaged += usize::from(check.is_damaged());
        if args.json {
            println!("{}", verify_json(check));
        } else {
            print_verify(check);
        }
    }
    if damaged > 0 {
        return Err(Exit::new(
            VERIFY,
            format!(
                "{damaged} bundle(s) damaged in your store; fetch them again to repair (`classe fetch ROOT`), what is good is kept"
            ),
        ));
    }
    Ok(())
}

fn file_state(check: &classe_store::BlobCheck) -> &'static str {
    match check {
        classe_store::BlobCheck::Good { complete: true } => "ok",
        classe_store::BlobCheck::Good { complete: false } => "partial",
        classe_store::BlobCheck::Missing => "missing",
        classe_store::BlobCheck::Damaged { .. } => "damaged",
    }
}

fn verify_json(check: &classe_store::BundleCheck) -> serde_json::Value {
    let status = if check.is_damaged() {
        "damaged"
    } else if check.is_complete() {
        "ok"
    } else {
        "partial"
    };
    serde_json::json!({
        "root": check.root.to_hex(),
        "title": check.title,
        "status": status,
        "header_damage": check.header_damage,
        "files": check.files.iter().map(|f| {
            let ranges = match &f.check {
                classe_store::BlobCheck::Damaged { ranges } => ranges.clone(),
                _ => Vec::new(),
            };
            serde_json::json!({
                "path": f.path,
                "size": f.size,
                "status": file_state(&f.check),
                "damaged_ranges": ranges,
            })
        }).collect::<Vec<_>>(),
    })
}

fn print_verify(check: &classe_store::BundleCheck) {
    let title = check
        .title
        .as_deref()
        .unwrap_or("(unreadable title)")
        .escape_debug()
        .to_string();
    let short = &check.root.to_hex()[..16];
    if let Some(what) = &check.header_damage {
        println!("{short}  DAMAGED  {title}: {what}");
        return;
    }
    if !check.is_damaged() {
        let state = if check.is_complete() {
            "OK"
        } else {
            "OK (partial)"
        };
        println!("{short}  {state}  {title}");
        return;
    }
    println!("{short}  DAMAGED  {title}");
    for f in &check.files {
        if let classe_store::BlobCheck::Damaged { ranges } = &f.check {
            let bytes: u64 = ranges.iter().map(|(s, e)| e - s).sum();
            println!(
                "    damaged: \"{}\" ({bytes} of {} bytes)",
                f.path.escape_debug(),
                f.size
            );
        }
    }
}
