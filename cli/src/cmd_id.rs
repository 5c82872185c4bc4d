//! `classe id` and `classe trust`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use classe_bundle::{
    anchor::date,
    school::{Bulletin, Credentials, ROLE_MIRROR},
    AuthorKey, AuthorSecret,
};

use crate::{
    exit::{Exit, IO, UNTRUSTED, USAGE},
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
    /// Install the certificate your school gave you (`classe school
    /// certify` prints it): every lesson you share then carries it, and
    /// the school's families accept it without a prompt.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["import", "export"])]
    cert: Option<PathBuf>,
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
    /// Stop accepting lessons signed by KEY (an author or a school).
    Remove {
        /// An author key, or a school key.
        key: String,
    },
    /// Accept lessons of every teacher the school KEY certifies (the key
    /// `classe school init` printed; the school hands it out).
    AddSchool {
        /// The school key.
        key: String,
        /// The school's name.
        #[arg(long)]
        name: String,
    },
    /// Take in a school bulletin (revocations, key rotations, the seed
    /// node's word) from FILE, or `-` for stdin: what `classe school
    /// revoke` printed, or `classe trust bulletin` on another machine.
    Update {
        /// The bulletin file, or `-`.
        file: PathBuf,
    },
    /// Print the bulletin this home holds for school KEY (on a seed node
    /// certified as `mirror`, with a fresh statement), to carry on a USB
    /// stick to machines that are offline.
    Bulletin {
        /// The school key.
        key: String,
    },
}

pub fn parse_key(text: &str) -> Result<AuthorKey, Exit> {
    text.parse()
        .map_err(|e| Exit::new(USAGE, format!("{text:?}: {e}")))
}

pub fn id(home: &Home, args: IdArgs) -> Result<(), Exit> {
    if let Some(file) = args.cert {
        return install_cert(home, &file);
    }
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
    if let Ok(Some(creds)) = home.credentials() {
        let cert = &creds.cert.cert;
        eprintln!(
            "Certified as {} by {} until {}.",
            cert.name,
            cert.school_name,
            date(cert.not_after)
        );
    }
    println!("{}", secret.public());
    Ok(())
}

/// `classe id --cert FILE`: checks the certificate is this home's, with a
/// chain that verifies, and keeps it.
fn install_cert(home: &Home, file: &std::path::Path) -> Result<(), Exit> {
    let text = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(crate::exit::io("cannot read stdin"))?
    } else {
        std::fs::read_to_string(file)
            .map_err(crate::exit::io(format!("cannot read {}", file.display())))?
    };
    let creds = Credentials::from_text(&text).map_err(|e| {
        Exit::new(
            USAGE,
            format!(
                "{}: {e}; ask the school for the certificate again",
                file.display()
            ),
        )
    })?;
    creds.verify().map_err(|e| {
        Exit::new(
            UNTRUSTED,
            format!("the certificate does not verify ({e}); ask the school for it again"),
        )
    })?;
    let me = home.author_secret()?.public();
    let cert = &creds.cert.cert;
    if cert.subject != me {
        return Err(Exit::new(
            USAGE,
            format!(
                "this certificate is for the key {}, not for this home's author key {me}; install it in the right home (--home)",
                cert.subject
            ),
        ));
    }
    let text = format!(
        "# {} certified by {} until {}\n{}\n",
        cert.name,
        cert.school_name,
        date(cert.not_after),
        creds.to_text()
    );
    crate::home::write_atomic(&home.credentials_path(), text.as_bytes())?;
    eprintln!(
        "Installed: {}, certified by {} until {}. Lessons you share now carry this certificate.",
        cert.name,
        cert.school_name,
        date(cert.not_after)
    );
    if cert.not_after < Home::now() {
        eprintln!("warning: this certificate has expired: pupils will refuse your lessons; ask the school for a new one");
    }
    if cert.roles & classe_bundle::school::ROLE_PUBLISH == 0 {
        eprintln!("note: this certificate is for a seed node (mirror), not for publishing lessons");
    }
    println!("{me}");
    Ok(())
}

pub fn trust(home: &Home, cmd: TrustCommand) -> Result<(), Exit> {
    match cmd {
        TrustCommand::AddSchool { key, name } => {
            let key = parse_key(&key)?;
            home.school_book()?.add(key, &name)?;
            eprintln!("Trusted the school {name} ({key}): lessons of the teachers it certifies are accepted.");
            return Ok(());
        }
        TrustCommand::Update { file } => return update(home, &file),
        TrustCommand::Bulletin { key } => return bulletin(home, &parse_key(&key)?),
        _ => {}
    }
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
            for school in home.school_book()?.schools() {
                println!("{}  {} (school)", school.identity, school.name);
            }
        }
        TrustCommand::Remove { key } => {
            let key = parse_key(&key)?;
            if home.school_book()?.remove(&key)? {
                eprintln!("Removed the school {key}.");
                return Ok(());
            }
            if !store.remove(&key) {
                return Err(Exit::new(USAGE, format!("{key} was not trusted")));
            }
            save(&store)?;
            eprintln!("Removed {key}.");
        }
        TrustCommand::AddSchool { .. }
        | TrustCommand::Update { .. }
        | TrustCommand::Bulletin { .. } => {}
    }
    Ok(())
}

/// `classe trust update FILE`: a bulletin for a trusted school.
fn update(home: &Home, file: &std::path::Path) -> Result<(), Exit> {
    let text = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(crate::exit::io("cannot read stdin"))?
    } else {
        std::fs::read_to_string(file)
            .map_err(crate::exit::io(format!("cannot read {}", file.display())))?
    };
    let bulletin = Bulletin::from_text(&text)
        .map_err(|e| Exit::new(USAGE, format!("{}: {e}", file.display())))?;
    let school = bulletin
        .school()
        .ok_or_else(|| Exit::new(USAGE, "the bulletin is empty"))?;
    let mut book = home.school_book()?;
    let changed = book.absorb(school, bulletin)?;
    let state = book
        .get(&school)
        .ok_or(Exit::new(USAGE, "school not trusted"))?;
    let seq = state
        .bulletin
        .revocations
        .as_ref()
        .map_or(0, |r| r.list.seq);
    if changed {
        eprintln!("Updated {}: revocation list {seq}.", state.name);
    } else {
        eprintln!(
            "Nothing new for {}: this home already holds revocation list {seq} or newer.",
            state.name
        );
    }
    Ok(())
}

/// `classe trust bulletin KEY`: what this home holds of a school, with a
/// fresh statement if this home is certified as the school's seed node.
fn bulletin(home: &Home, school: &AuthorKey) -> Result<(), Exit> {
    let mut book = home.school_book()?;
    if book.get(school).is_none() {
        return Err(Exit::new(
            USAGE,
            format!(
                "the school {school} is not trusted here; add it with `classe trust add-school`"
            ),
        ));
    }
    let signed = match home.credentials()? {
        Some(c) if c.cert.cert.school == *school && c.cert.cert.roles & ROLE_MIRROR != 0 => {
            book.sign_statement(school, &c.cert, &home.author_secret()?, Home::now())?
        }
        _ => None,
    };
    let bulletin = match signed {
        Some(b) => b,
        None => book
            .get(school)
            .map(|s| s.bulletin.clone())
            .unwrap_or_default(),
    };
    println!("{}", bulletin.to_text());
    Ok(())
}
