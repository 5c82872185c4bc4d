//! `classe demo`: a classroom on this machine.
//!
//! A teacher and a few pupils, each a real `classe` process with its own
//! home, on loopback. Pupils start one after another; each is given the
//! teacher and every pupil that already has the lesson as providers, so
//! the later ones fetch mostly from classmates. At the end every output is
//! compared with the source, and the table shows who sent how many bytes.

use std::{path::Path, process::Stdio, time::Duration};

use clap::Args;
use classe_bundle::{ProviderInfo, Ticket};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::{
    exit::{Exit, INTERNAL, IO},
    ui,
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many pupils.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    pupils: u16,
    /// Size of the sample lesson, in MB.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u16).range(1..=2000))]
    size_mb: u16,
    /// The teacher's upload cap (a school ADSL line, say).
    #[arg(long, default_value = "8MB/s", value_parser = crate::rate::parse_rate)]
    teacher_upload: u64,
    /// Keep the demo's folder instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// How long any one step may take before the demo gives up.
const STEP: Duration = Duration::from_secs(300);

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> Exit + '_ {
    move |e| Exit::new(INTERNAL, format!("demo: {what}: {e}"))
}

fn classe(home: &Path) -> Result<Command, Exit> {
    let exe = std::env::current_exe().map_err(internal("cannot find the classe binary"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--home")
        .arg(home)
        .env_remove("CLASSE_HOME")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(cmd)
}

/// Starts `cmd` and returns it with the first line it prints on stdout.
async fn spawn_first_line(mut cmd: Command, what: &str) -> Result<(Child, String), Exit> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(internal(what))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Exit::new(INTERNAL, "demo: no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    match tokio::time::timeout(STEP, lines.next_line()).await {
        Ok(Ok(Some(line))) => Ok((child, line)),
        _ => {
            child.kill().await.ok();
            Err(Exit::new(INTERNAL, format!("demo: {what} printed nothing")))
        }
    }
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).ok();
    }
}

async fn stop(mut child: Child) {
    terminate(&child);
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        child.kill().await.ok();
    }
}

/// A sample lesson: a few documents and some larger "video" parts.
fn make_lesson(dir: &Path, size_mb: u16) -> Result<(), Exit> {
    classe_testkit::lesson::sample_lesson(dir, size_mb as u64 * 1_000_000, 8)
        .map_err(|e| Exit::new(IO, format!("demo: cannot write the sample lesson: {e}")))
}

pub async fn run(args: DemoArgs) -> Result<(), Exit> {
    let tmp = tempfile::Builder::new()
        .prefix("classe-demo-")
        .tempdir()
        .map_err(internal("cannot create a temporary folder"))?;
    let root = tmp.path().to_path_buf();
    let result = classroom(&args, &root).await;
    if args.keep {
        let kept = tmp.keep();
        eprintln!("Kept the demo folder: {}", kept.display());
    }
    result
}

async fn classroom(args: &DemoArgs, root: &Path) -> Result<(), Exit> {
    let lesson = root.join("lesson");
    make_lesson(&lesson, args.size_mb)?;
    eprintln!(
        "Demo classroom in {}: 1 teacher (upload capped at {}/s), {} pupil(s), a {} MB lesson.",
        root.display(),
        ui::bytes(args.teacher_upload),
        args.pupils,
        args.size_mb
    );
    let (teacher, key, mut ticket) = start_teacher(args, root, &lesson).await?;
    let teacher_id = hex(&ticket.providers[0].node_id);

    let mut names = vec![(teacher_id, "teacher".to_string())];
    let mut pupils = Vec::new();
    let mut rows = Vec::new();
    for i in 1..=args.pupils {
        let name = format!("pupil-{i}");
        let (child, summary) = fetch_pupil(root, &name, &key, &mut ticket).await?;
        let node_id = summary["node_id"].as_str().unwrap_or_default().to_string();
        names.push((node_id, name.clone()));
        rows.push((name, summary));
        pupils.push(child);
    }

    for child in pupils {
        stop(child).await;
    }
    stop(teacher).await;
    report(args, root, &names, &rows);
    Ok(())
}

/// `classe id` and `classe share` for the teacher: its process, its
/// author key and the ticket it printed.
async fn start_teacher(
    args: &DemoArgs,
    root: &Path,
    lesson: &Path,
) -> Result<(Child, String, Ticket), Exit> {
    let teacher_home = root.join("teacher");
    let mut id = classe(&teacher_home)?;
    let out = tokio::time::timeout(STEP, id.arg("id").output())
        .await
        .map_err(|_| Exit::new(INTERNAL, "demo: `classe id` hung"))?
        .map_err(internal("classe id"))?;
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let mut share = classe(&teacher_home)?;
    share
        .arg("share")
        .arg(lesson)
        .args(["--title", "Les fractions", "--bind", "127.0.0.1:0"])
        .arg("--max-upload")
        .arg(args.teacher_upload.to_string())
        .arg("--stats")
        .arg(root.join("teacher-stats.json"));
    let (teacher, ticket_line) = spawn_first_line(share, "classe share").await?;
    let ticket: Ticket = ticket_line
        .parse()
        .map_err(|e| Exit::new(INTERNAL, format!("demo: bad ticket from share: {e}")))?;
    eprintln!("Teacher shares; ticket: {ticket_line}");
    Ok((teacher, key, ticket))
}

/// One pupil fetches with `ticket`, its copy is compared with the lesson,
/// and it is added to `ticket` for the pupils after it. Returns its
/// process (still seeding) and its `--json` summary.
async fn fetch_pupil(
    root: &Path,
    name: &str,
    key: &str,
    ticket: &mut Ticket,
) -> Result<(Child, serde_json::Value), Exit> {
    let home = root.join(name);
    let out_dir = root.join(format!("{name}-lesson"));
    let mut fetch = classe(&home)?;
    fetch
        .arg("fetch")
        .arg(ticket.to_string())
        .args(["--trust", key, "--json", "--bind", "127.0.0.1:0"])
        .arg("--out")
        .arg(&out_dir)
        .arg("--stats")
        .arg(root.join(format!("{name}-stats.json")));
    let (child, line) = spawn_first_line(fetch, "classe fetch").await?;
    let summary: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| Exit::new(INTERNAL, format!("demo: {name} printed no summary: {e}")))?;
    if !classe_testkit::tree::same_tree(&root.join("lesson"), &out_dir) {
        return Err(Exit::new(
            INTERNAL,
            format!("demo: {name}'s copy differs from the lesson"),
        ));
    }
    eprintln!(
        "{name} has the lesson after {:.1}s, verified; it now shares it too.",
        summary["seconds"].as_f64().unwrap_or(0.0)
    );
    // Later pupils also know this one.
    let node_id = summary["node_id"].as_str().unwrap_or_default();
    if let Ok(node_id) = data_encoding::HEXLOWER.decode(node_id.as_bytes()) {
        if let Ok(node_id) = <[u8; 32]>::try_from(node_id) {
            let addrs = serde_json::from_value(summary["addrs"].clone()).unwrap_or_default();
            if ticket.providers.len() < classe_bundle::ticket::MAX_PROVIDERS {
                ticket.providers.push(ProviderInfo {
                    node_id,
                    addrs,
                    relay_url: None,
                    control_port: None,
                });
            }
        }
    }
    Ok((child, summary))
}

/// The tables on stdout: who each pupil received from, who sent what.
fn report(
    args: &DemoArgs,
    root: &Path,
    names: &[(String, String)],
    rows: &[(String, serde_json::Value)],
) {
    let name_of = |id: &str| {
        names
            .iter()
            .find(|(n, _)| n == id)
            .map(|(_, name)| name.clone())
            .unwrap_or_else(|| id[..8.min(id.len())].to_string())
    };
    println!("{:<10} {:>8}  received from", "pupil", "seconds");
    for (name, summary) in rows {
        let from: Vec<String> = summary["per_provider"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(id, b)| {
                        format!("{} {}", name_of(id), ui::bytes(b.as_u64().unwrap_or(0)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<10} {:>8.2}  {}",
            name,
            summary["seconds"].as_f64().unwrap_or(0.0),
            from.join(", ")
        );
    }
    let total: u64 = rows
        .first()
        .and_then(|(_, s)| s["total_bytes"].as_u64())
        .unwrap_or(0);
    println!();
    println!("{:<10} {:>12}", "sender", "bytes sent");
    for (_, name) in names {
        let file = root.join(format!("{name}-stats.json"));
        let sent = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["traffic"]["sent"].as_u64());
        match sent {
            Some(sent) => println!(
                "{:<10} {:>12}  ({:.2} copies of the lesson)",
                name,
                ui::bytes(sent),
                sent as f64 / total.max(1) as f64
            ),
            None => println!("{name:<10} {:>12}", "?"),
        }
    }
    println!(
        "\nEvery copy was verified byte for byte against the teacher's folder. A central server would have sent {:.0} copies.",
        args.pupils
    );
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}
