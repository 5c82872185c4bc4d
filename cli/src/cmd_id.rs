//! `classe id` and `classe trust`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use classe_bundle::{AuthorKey, AuthorSecret};

use crate::{
    exit::{Exit, IO, USAGE},
    home::Home,
};

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Copy your secret author key to FILE (mode 0600), to use the same
    /// identity on another machine. Keep that file private.
    #[arg(long, value_name = "FILE", conflicts_with = "import")]
    export: Option<PathBuf>,
    /// Replace your author key with the one in FILE (made by --export).
    #[arg(long, value_name = "FILE")]
    import: Option<PathBuf>,
    /// With --import: replace an existing, different key. The old one is
    /// kept next to it as author.key.old.
    #[arg(long, requires = "import")]
    force: bool,
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Accept lessons signed by KEY.
    Add {
        /// An author key, as printed by `classe id`.
        key: String,
        /// A name to remember them by.
        #[arg(long)]
        name: Option<String>,
    },
    /// List trusted authors.
    List,
    /// Stop accepting lessons signed by KEY.
    Remove {
        /// An author key.
        key: String,
    },
}

pub fn parse_key(text: &str) -> Result<AuthorKey, Exit> {
    text.parse()
        .map_err(|e| Exit::new(USAGE, format!("{text:?}: {e}")))
}

pub fn id(home: &Home, args: IdArgs) -> Result<(), Exit> {
    if let Some(file) = args.import {
        let new = AuthorSecret::load(&file)
            .map_err(|e| Exit::new(USAGE, e.to_string()).with_source(&e))?;
        let path = home.author_key_path();
        if path.exists() {
            let old = home.author_secret()?;
            if old.public() != new.public() {
                if !args.force {
                    return Err(Exit::new(
                        USAGE,
                        format!(
                            "this home already has a different author key ({}); add --force to replace it",
                            old.public()
                        ),
                    ));
                }
                old.save(&path.with_extension("key.old"))
                    .map_err(|e| Exit::new(IO, e.to_string()))?;
            }
        }
        new.save(&path)
            .map_err(|e| Exit::new(IO, e.to_string()).with_source(&e))?;
        eprintln!("Imported author key.");
        println!("{}", new.public());
        return Ok(());
    }
    let secret = home.author_secret()?;
    if let Some(file) = args.export {
        if file.exists() {
            return Err(Exit::new(
                IO,
                format!("{} already exists; choose a new file name", file.display()),
            ));
        }
        secret
            .save(&file)
            .map_err(|e| Exit::new(IO, e.to_string()).with_source(&e))?;
        eprintln!(
            "Wrote your secret author key to {} (readable only by you). Anyone with this file can sign lessons as you.",
            file.display()
        );
    }
    println!("{}", secret.public());
    Ok(())
}

pub fn trust(home: &Home, cmd: TrustCommand) -> Result<(), Exit> {
    let mut store = home.trust_store()?;
    let save = |store: &classe_bundle::TrustStore| {
        store
            .save()
            .map_err(|e| Exit::new(IO, e.to_string()).with_source(&e))
    };
    match cmd {
        TrustCommand::Add { key, name } => {
            let key = parse_key(&key)?;
            // Without --name, an author already trusted keeps their name.
            let name = name.or_else(|| store.name(&key).map(str::to_owned));
            store.add(key, name.as_deref().unwrap_or(""));
            save(&store)?;
            eprintln!("Trusted {key}.");
        }
        TrustCommand::List => {
            for (key, name) in store.entries() {
                if name.is_empty() {
                    println!("{key}");
                } else {
                    println!("{key}  {name}");
                }
            }
        }
        TrustCommand::Remove { key } => {
            let key = parse_key(&key)?;
            if !store.remove(&key) {
                return Err(Exit::new(USAGE, format!("{key} was not trusted")));
            }
            save(&store)?;
            eprintln!("Removed {key}.");
        }
    }
    Ok(())
}
