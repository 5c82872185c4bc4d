//! `classe school …`: the school's root key, its teacher certificates,
//! revocations and key rotations. Meant for the school's IT person, on a
//! machine kept offline (docs/school-keys.md).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use classe_bundle::{
    anchor::{date, end_of_school_year, parse_date},
    registry::SchoolKeys,
    school::{Revoked, ROLE_MIRROR, ROLE_PUBLISH},
};

use crate::{
    cmd_id::parse_key,
    exit::{Exit, USAGE},
    home::Home,
};

#[derive(Debug, Subcommand)]
pub enum SchoolCommand {
    /// Create the school key (in <home>/school, apart from the author key)
    /// and print it: the key families install.
    Init {
        /// The school's name, as families will see it.
        #[arg(long)]
        name: String,
        /// Also draw the families' enrolment line as a QR code on stderr.
        #[arg(long)]
        qr: bool,
    },
    /// Certify a teacher's author key: print the certificate on stdout.
    Certify(CertifyArgs),
    /// Revoke a teacher's key or one certificate: print the new signed
    /// revocation list (a school bulletin) on stdout.
    Revoke(RevokeArgs),
    /// Replace the school key by a new one signed by both; print the
    /// bulletin carrying the rotation. Teachers need new certificates.
    Rotate,
    /// Show the school key, certificates issued and revocations; print
    /// the current bulletin on stdout.
    Status {
        /// Also draw the families' enrolment line as a QR code on stderr.
        #[arg(long)]
        qr: bool,
    },
    /// Copy the school key and register to FILE (mode 0600), for keeping
    /// offline.
    Export {
        /// A new file.
        file: PathBuf,
    },
    /// Bring a school key exported with `classe school export` into this
    /// home.
    Import {
        /// The exported file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CertifyArgs {
    /// The teacher's author key (`classe id` prints it).
    key: String,
    /// The teacher's name as pupils see it ("Mme Martin").
    #[arg(long)]
    name: String,
    /// Last day of validity (YYYY-MM-DD). Default: the end of the school
    /// year (31 August).
    #[arg(long, value_name = "DATE")]
    until: Option<String>,
    /// First day of validity (YYYY-MM-DD). Default: now.
    #[arg(long, value_name = "DATE")]
    from: Option<String>,
    /// `publish` for a teacher, `mirror` for the school's seed node.
    /// Repeatable.
    #[arg(long, value_name = "ROLE", default_value = "publish")]
    role: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// A teacher's author key, or a certificate's serial number.
    what: String,
    /// Why, in a few words (shown to pupils).
    #[arg(long, default_value = "")]
    reason: String,
    /// From when lessons are refused (YYYY-MM-DD, or `now`): lessons the
    /// school's seed node countersigned before stay available. Set it to
    /// the day the laptop was lost. Default: now.
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
}

fn date_arg(text: &str, flag: &str) -> Result<u64, Exit> {
    parse_date(text).ok_or_else(|| {
        Exit::new(
            USAGE,
            format!("{flag} {text:?} is not a date; write it as YYYY-MM-DD, e.g. 2027-08-31"),
        )
    })
}

fn roles(names: &[String]) -> Result<u8, Exit> {
    names.iter().try_fold(0u8, |acc, r| match r.as_str() {
        "publish" => Ok(acc | ROLE_PUBLISH),
        "mirror" => Ok(acc | ROLE_MIRROR),
        other => Err(Exit::new(
            USAGE,
            format!("unknown role {other:?}: use publish (a teacher) or mirror (the seed node)"),
        )),
    })
}

pub fn run(home: &Home, cmd: SchoolCommand) -> Result<(), Exit> {
    let dir = home.school_dir();
    let now = Home::now();
    match cmd {
        SchoolCommand::Init { name, qr } => {
            let school = SchoolKeys::init(&dir, &name)?;
            eprintln!(
                "Created the school key of {} in {} (readable only by you).",
                school.name(),
                dir.display()
            );
            eprintln!("Keep a copy offline: classe school export FILE");
            enrolment(&school, qr);
            println!("{}", school.identity());
        }
        SchoolCommand::Certify(args) => certify(&dir, args, now)?,
        SchoolCommand::Revoke(args) => {
            let mut school = SchoolKeys::open(&dir)?;
            let what = match args.what.parse::<u64>() {
                Ok(serial) => Revoked::Serial(serial),
                Err(_) => Revoked::Key(parse_key(&args.what)?),
            };
            let since = match args.since.as_deref() {
                None | Some("now") => now,
                Some(d) => date_arg(d, "--since")?,
            };
            let list = school.revoke(what, since, &args.reason, now, end_of_school_year(now))?;
            let (seq, entries) = (list.list.seq, list.list.entries.len());
            eprintln!(
                "Revocation list {} of {} signed: {} entr(y/ies). Give it to the seed node (`classe trust update FILE` there); it spreads from there.",
                seq,
                school.name(),
                entries
            );
            println!("{}", school.bulletin().to_text());
        }
        SchoolCommand::Rotate => {
            let mut school = SchoolKeys::open(&dir)?;
            school.rotate(now)?;
            eprintln!(
                "The school key of {} is now at version {}. Certify every teacher again; give the bulletin below to the seed node.",
                school.name(),
                school.key_version()
            );
            println!("{}", school.bulletin().to_text());
        }
        SchoolCommand::Status { qr } => status(&dir, qr)?,
        SchoolCommand::Export { file } => {
            let school = SchoolKeys::open(&dir)?;
            school.export(&file)?;
            eprintln!(
                "Wrote the school key of {} to {} (readable only by you). Anyone with this file can certify teachers for the school: keep it offline.",
                school.name(),
                file.display()
            );
        }
        SchoolCommand::Import { file } => {
            let school = SchoolKeys::import(&dir, &file)?;
            eprintln!("Imported the school key of {}.", school.name());
            println!("{}", school.identity());
        }
    }
    Ok(())
}

fn certify(dir: &std::path::Path, args: CertifyArgs, now: u64) -> Result<(), Exit> {
    let mut school = SchoolKeys::open(dir)?;
    let subject = parse_key(&args.key)?;
    let not_before = match &args.from {
        Some(d) => date_arg(d, "--from")?,
        None => now,
    };
    let not_after = match &args.until {
        Some(d) => date_arg(d, "--until")? + 86_399,
        None => end_of_school_year(now),
    };
    if not_after < not_before {
        return Err(Exit::new(USAGE, "--until is before --from"));
    }
    let roles = roles(&args.role)?;
    let creds = school.certify(subject, &args.name, roles, not_before, not_after)?;
    let cert = &creds.cert.cert;
    eprintln!(
        "Certified {} ({}) for {}, serial {}, until {}. The teacher installs it once with `classe id --cert FILE`.",
        cert.name,
        subject.short(),
        school.name(),
        cert.serial,
        date(not_after)
    );
    if not_after < now {
        eprintln!("warning: this certificate has already expired");
    }
    println!(
        "# classe certificate: {} by {}, serial {}, until {}",
        cert.name,
        school.name(),
        cert.serial,
        date(not_after)
    );
    println!("{}", creds.to_text());
    Ok(())
}

/// The line families type (or scan) to enrol, on stderr.
fn enrolment(school: &SchoolKeys, qr: bool) {
    let line = format!(
        "classe trust add-school {} --name \"{}\"",
        school.identity(),
        school.name().replace('"', "'")
    );
    eprintln!("Families enrol once with:\n  {line}");
    if qr {
        crate::ui::print_qr_exact(&line);
    }
}

fn status(dir: &std::path::Path, qr: bool) -> Result<(), Exit> {
    let school = SchoolKeys::open(dir)?;
    enrolment(&school, qr);
    eprintln!(
        "{}: school key {} (version {})",
        school.name(),
        school.identity(),
        school.key_version()
    );
    for i in school.issued() {
        let role = match (i.roles & ROLE_PUBLISH != 0, i.roles & ROLE_MIRROR != 0) {
            (true, true) => "publish, mirror",
            (true, false) => "publish",
            _ => "mirror",
        };
        eprintln!(
            "  serial {}: {} ({}) {role}, until {}",
            i.serial,
            i.name,
            i.subject,
            date(i.not_after)
        );
    }
    if let Some(r) = &school.bulletin().revocations {
        eprintln!("Revocation list {}:", r.list.seq);
        for e in &r.list.entries {
            let what = match e.what {
                Revoked::Key(k) => k.to_string(),
                Revoked::Serial(s) => format!("serial {s}"),
            };
            eprintln!("  {what} since {} ({})", date(e.since), e.reason);
        }
    }
    println!("{}", school.bulletin().to_text());
    Ok(())
}
