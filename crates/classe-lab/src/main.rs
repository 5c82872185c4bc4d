//! `classe-lab`: the classroom lab. See `docs/benchmarks.md`.
//!
//! ```text
//! classe-lab run      measure (needs root, iproute2; nginx + curl for `central`)
//! classe-lab report   redraw the table and plots from a results file
//! classe-lab probe    what this machine can emulate (netns, HTB, netem)
//! classe-lab clean    remove namespaces left by a lab killed with SIGKILL
//! ```

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use classe_lab::{
    net,
    plan::Plan,
    report,
    run::Churn,
    scenario::{self, Scenario},
    units::{parse_opt_rate, parse_rate, parse_size},
};

/// The classroom lab: classe against a central server and the Kumar–Ross
/// bound, on an emulated network of namespaces.
#[derive(Debug, Parser)]
#[command(name = "classe-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the scenarios at each class size and write the results.
    Run(Box<RunArgs>),
    /// Write the table and plots again from a results file.
    Report {
        /// The JSON lines file.
        #[arg(long, default_value = "lab-results/results.jsonl")]
        results: PathBuf,
        /// Where to write results.md, completion.svg, bytes.svg.
        #[arg(long, default_value = "lab-results")]
        out: PathBuf,
    },
    /// Say what this machine can emulate.
    Probe,
    /// Remove namespaces left behind by a lab that was killed (SIGKILL).
    Clean,
    /// The class at home: every pupil and the teacher behind a home
    /// router (a NAT mix), the school's relay on a public address.
    Homes(Box<HomesArgs>),
    /// Adversary for the discovery tests: join the class network and
    /// publish a replayed or forged announcement, then leave.
    Adversary(Box<AdversaryArgs>),
}

#[derive(Debug, clap::Args)]
struct HomesArgs {
    /// The classe binary. Default: target/release/classe next to this one.
    #[arg(long)]
    classe: Option<PathBuf>,
    /// Pupils.
    #[arg(long, default_value_t = 30)]
    pupils: usize,
    /// Lesson size.
    #[arg(long, default_value = "50MB", value_parser = parse_size)]
    lesson: u64,
    /// Files in the lesson.
    #[arg(long, default_value_t = 20)]
    files: usize,
    /// Teacher's upload.
    #[arg(long, default_value = "20Mbit", value_parser = parse_rate)]
    teacher_up: u64,
    /// Pupils' upload.
    #[arg(long, default_value = "10Mbit", value_parser = parse_rate)]
    pupil_up: u64,
    /// Pupils' download.
    #[arg(long, default_value = "100Mbit", value_parser = parse_rate)]
    pupil_down: u64,
    /// The school's upload and download.
    #[arg(long, default_value = "100Mbit", value_parser = parse_rate)]
    school: u64,
    /// Share of pupils behind UPnP routers.
    #[arg(long, default_value_t = 0.25)]
    upnp: f64,
    /// Share of pupils behind symmetric NATs.
    #[arg(long, default_value_t = 0.15)]
    symmetric: f64,
    /// Runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Where results.jsonl is appended.
    #[arg(long, default_value = "lab-results/homes")]
    out: PathBuf,
}

async fn homes(args: HomesArgs) -> Result<bool> {
    use classe_lab::homelab;
    let classe = args
        .classe
        .clone()
        .or_else(default_classe)
        .context("no classe binary: give --classe")?;
    let mut results = Vec::new();
    for run in 0..args.runs {
        let tag = format!("{}{}m{run}", net::NS_PREFIX, std::process::id());
        let cfg = homelab::HomeLabConfig {
            classe: classe.clone(),
            pupils: args.pupils,
            lesson_bytes: args.lesson,
            files: args.files,
            teacher_up: args.teacher_up,
            pupil_up: args.pupil_up,
            pupil_down: Some(args.pupil_down),
            school_bps: Some(args.school),
            upnp: args.upnp,
            symmetric: args.symmetric,
            teacher_nat: classe_lab::homenet::Nat::PortPreserving,
            timeout: Duration::from_secs(args.timeout_secs),
            seed: 42 + run as u64,
        };
        let r = homelab::run(&tag, &cfg).await?;
        homelab::record(&args.out, &r)?;
        eprintln!("{}", homelab::table(std::slice::from_ref(&r)));
        results.push(r);
    }
    println!("{}", homelab::table(&results));
    Ok(results.iter().all(|r| r.finished == r.n))
}

#[derive(Debug, clap::Args)]
struct AdversaryArgs {
    /// TCP address to listen on (IP:0).
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Node to join through (as `classe seed` prints it).
    #[arg(long)]
    bootstrap: String,
    /// Re-announce this validly signed announcement (a line of a home's
    /// `announcements` file): gossip and catch-up record.
    #[arg(long)]
    replay: Option<String>,
    /// Forge announcements for this author key: one signed by another key
    /// but naming this one (bad signature), one validly signed by another
    /// key, both on this author's topic.
    #[arg(long)]
    forge_as: Option<String>,
    /// Seconds to stay online so gossip and records spread.
    #[arg(long, default_value_t = 8)]
    stay_secs: u64,
}

async fn adversary(args: AdversaryArgs) -> Result<bool> {
    use classe_bundle::{Announcement, AuthorKey, AuthorSecret, LessonId, SignedAnnouncement};
    let node_key = AuthorSecret::generate().to_bytes();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let config = classe_control::ControlConfig {
        listen: args.listen,
        bootstrap: vec![
            classe_control::parse_bootstrap(&args.bootstrap).map_err(anyhow::Error::msg)?
        ],
        mdns: false,
        ..Default::default()
    };
    let control = classe_control::Control::spawn(&node_key, config, tx).await?;
    if let Some(text) = &args.replay {
        let signed = SignedAnnouncement::from_text(text)?;
        eprintln!(
            "replaying version {} of lesson {}",
            signed.announcement().version,
            signed.announcement().lesson_id
        );
        control.announce(signed).await;
    }
    if let Some(key) = &args.forge_as {
        let victim: AuthorKey = key.parse()?;
        let forger = AuthorSecret::generate();
        let forged = SignedAnnouncement::sign(
            Announcement {
                author: forger.public(),
                lesson_id: LessonId::random(),
                version: 99,
                root: [0xab; 32],
                title: "forged".into(),
                unix_secs: 0,
                providers: Vec::new(),
            },
            &forger,
        )?;
        // Wrong key: validly signed by the forger, on the victim's topic.
        control.publish_raw(victim, forged.to_bytes()).await;
        // Bad signature: the victim's key over the forger's signature.
        let mut bytes = forged.to_bytes();
        bytes[1..33].copy_from_slice(victim.as_bytes());
        control.publish_raw(victim, bytes).await;
        eprintln!("published two forged announcements for {victim}");
    }
    tokio::time::sleep(Duration::from_secs(args.stay_secs.min(120))).await;
    control.shutdown(Duration::from_secs(2)).await;
    Ok(true)
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The small CI configuration: N = 3, F = 5 MB (flags still override).
    #[arg(long)]
    smoke: bool,
    /// Scenarios to run, in order: built-in `central`, `classe`, or names
    /// from --scenario-file. Default: central,classe and every file's.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// A contender as JSON (see the scenario module's docs). Repeatable.
    #[arg(long, value_name = "FILE")]
    scenario_file: Vec<PathBuf>,
    /// Class sizes N. Default: 10,30 (smoke: 3).
    #[arg(long, value_delimiter = ',')]
    pupils: Vec<usize>,
    /// Lesson size F. Default: 50MB (smoke: 5MB).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Split the lesson into this many files.
    #[arg(long, default_value_t = 1)]
    files: usize,
    /// Seed of the lesson's random bytes.
    #[arg(long)]
    data_seed: Option<u64>,
    /// The seed host's upload u_s (its own uplink).
    #[arg(long, default_value = "20mbit", value_parser = parse_rate)]
    seed_up: u64,
    /// The seed host's download (`none`: unshaped).
    #[arg(long, default_value = "none", value_parser = opt_rate)]
    seed_down: OptRate,
    /// Each pupil's upload u.
    #[arg(long, default_value = "10mbit", value_parser = parse_rate)]
    up: u64,
    /// Each pupil's download d, shaped on its bridge port (`none`: unshaped).
    #[arg(long, default_value = "100mbit", value_parser = opt_rate)]
    down: OptRate,
    /// Per-pupil uploads, cycled over the pupils (e.g. 10mbit,10mbit,2mbit).
    #[arg(long, value_delimiter = ',', value_parser = parse_rate)]
    up_list: Vec<u64>,
    /// Per-pupil downloads, cycled.
    #[arg(long, value_delimiter = ',', value_parser = opt_rate)]
    down_list: Vec<OptRate>,
    /// Fraction of slow pupils, spread over the class.
    #[arg(long, default_value_t = 0.0)]
    slow_fraction: f64,
    /// A slow pupil's upload.
    #[arg(long, default_value = "1mbit", value_parser = parse_rate)]
    slow_up: u64,
    /// A slow pupil's download.
    #[arg(long, default_value = "10mbit", value_parser = opt_rate)]
    slow_down: OptRate,
    /// One-way delay in ms at every host's egress (needs sch_netem; when
    /// the kernel lacks it the run goes on and the report says so).
    #[arg(long, value_name = "MS")]
    delay: Option<f64>,
    /// Seconds between consecutive pupil starts (0: all together).
    #[arg(long, default_value_t = 0.0)]
    stagger: f64,
    /// Churn as FRACTION@SECS: that fraction of pupils stop at that time.
    #[arg(long, value_name = "FRACTION@SECS", value_parser = parse_churn)]
    churn: Option<Churn>,
    /// Do not give classe pupils tickets listing finished pupils.
    #[arg(long)]
    no_extend_ticket: bool,
    /// A run is cut at this many times max(N·F/u_s, T_min), plus 30 s.
    #[arg(long, default_value_t = 3.0)]
    timeout_factor: f64,
    /// And never later than this many seconds. Default: 3600 (smoke: 40).
    #[arg(long)]
    max_run_secs: Option<u64>,
    /// The classe binary. Default: `classe` next to this executable.
    #[arg(long, env = "CLASSE_BIN", value_name = "PATH")]
    classe: Option<PathBuf>,
    /// Output folder: results.jsonl, results.md, completion.svg, bytes.svg.
    #[arg(long, default_value = "lab-results")]
    out: PathBuf,
    /// Append to results.jsonl instead of starting it afresh (the table
    /// and plots then show every run in it).
    #[arg(long)]
    append: bool,
    /// Where temporary folders go. Default: the system temp folder.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Keep each run's folder (homes, outputs, logs) for inspection.
    #[arg(long)]
    keep: bool,
    /// Runs of each scenario at each class size, the scenarios taking
    /// turns; the table shows every run, the summary their medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Network details preset: `default` (the lab's own), or `strict`
    /// (issue 11's independent lab: 100 ms pfifo leaves, HTB r2q 1000 and
    /// quantum 1514, TSO/GSO/GRO off, IPv6 off). The flags below override.
    #[arg(long, default_value = "default", value_parser = ["default", "strict"])]
    net: String,
    /// An explicit pfifo leaf under each HTB class holding this many ms of
    /// its rate (default: HTB's own leaf, 1000 packets).
    #[arg(long, value_name = "MS")]
    leaf_queue_ms: Option<u32>,
    /// HTB r2q on every shaped interface.
    #[arg(long)]
    htb_r2q: Option<u32>,
    /// HTB quantum on every class, bytes.
    #[arg(long)]
    htb_quantum: Option<u32>,
    /// TSO/GSO/GRO on every veth: `on` (the kernel's default) or `off`.
    #[arg(long, value_parser = ["on", "off"])]
    offloads: Option<String>,
    /// IPv6 in every namespace: `on` or `off`.
    #[arg(long, value_parser = ["on", "off"])]
    ipv6: Option<String>,
    /// Niceness of the seed host's processes, for every scenario (e.g.
    /// -10 with hundreds of pupils: a real seed has its own CPU).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    seed_nice: i32,
}

/// The network details the flags ask for.
fn net_options(args: &RunArgs) -> net::NetOptions {
    let mut o = if args.net == "strict" {
        net::NetOptions::strict()
    } else {
        net::NetOptions::default()
    };
    if args.leaf_queue_ms.is_some() {
        o.leaf_queue_ms = args.leaf_queue_ms;
    }
    if args.htb_r2q.is_some() {
        o.htb_r2q = args.htb_r2q;
    }
    if args.htb_quantum.is_some() {
        o.htb_quantum = args.htb_quantum;
    }
    if let Some(v) = &args.offloads {
        o.offloads = v == "on";
    }
    if let Some(v) = &args.ipv6 {
        o.ipv6 = v == "on";
    }
    o
}

/// A rate or `none` (a newtype: clap reads a bare `Option` as "flag may
/// be absent").
#[derive(Debug, Clone, Copy)]
struct OptRate(Option<u64>);

fn opt_rate(s: &str) -> Result<OptRate, String> {
    parse_opt_rate(s).map(OptRate)
}

fn parse_churn(s: &str) -> Result<Churn, String> {
    let (f, t) = s
        .split_once('@')
        .ok_or_else(|| "churn is FRACTION@SECS, e.g. 0.2@30".to_string())?;
    let fraction: f64 = f
        .trim()
        .parse()
        .map_err(|_| format!("bad fraction {f:?}"))?;
    let at_secs: f64 = t.trim().parse().map_err(|_| format!("bad time {t:?}"))?;
    Ok(Churn { fraction, at_secs })
}

fn scenarios(args: &RunArgs) -> Result<Vec<Scenario>> {
    let mut from_files = Vec::new();
    for path in &args.scenario_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let s: Scenario = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a scenario", path.display()))?;
        from_files.push(s);
    }
    let extend = !args.no_extend_ticket;
    if args.scenarios.is_empty() {
        let mut v = vec![scenario::central(), scenario::classe(extend)];
        v.extend(from_files);
        return Ok(v);
    }
    args.scenarios
        .iter()
        .map(|name| {
            from_files
                .iter()
                .find(|s| &s.name == name)
                .cloned()
                .or_else(|| scenario::builtin(name, extend))
                .with_context(|| format!("unknown scenario {name:?}"))
        })
        .collect()
}

/// `classe` next to this binary (`target/debug/classe-lab`).
fn default_classe() -> Option<PathBuf> {
    classe_testkit::bin::next_to_exe("classe")
}

async fn run(args: RunArgs) -> Result<bool> {
    let probe = net::probe();
    if !probe.usable() {
        bail!(
            "this machine cannot run the lab: {}",
            probe.notes.join("; ")
        );
    }
    let removed = classe_lab::homenet::remove_stale(None);
    if !removed.is_empty() {
        eprintln!(
            "classe-lab: removed {} namespaces left by earlier labs",
            removed.len()
        );
    }
    let scenarios = scenarios(&args)?;
    for s in &scenarios {
        for prog in scenario::required_programs(s) {
            if !scenario::have_program(prog) {
                bail!(
                    "scenario {} needs {prog}: apt-get install {}",
                    s.name,
                    scenario::package_of(prog)
                );
            }
        }
    }
    let mut plan = if args.smoke {
        Plan::smoke(scenarios)
    } else {
        Plan::defaults(scenarios)
    };
    if !args.pupils.is_empty() {
        plan.pupils = args.pupils.clone();
    }
    if let Some(size) = args.size {
        plan.file_bytes = size;
    }
    plan.files = args.files;
    if let Some(seed) = args.data_seed {
        plan.data_seed = seed;
    }
    plan.seed_up = args.seed_up;
    plan.seed_down = args.seed_down.0;
    plan.rates.pupil_up = args.up;
    plan.rates.pupil_down = args.down.0;
    plan.rates.up_list = args.up_list.clone();
    plan.rates.down_list = args.down_list.iter().map(|d| d.0).collect();
    plan.rates.slow_fraction = args.slow_fraction;
    plan.rates.slow_up = args.slow_up;
    plan.rates.slow_down = args.slow_down.0;
    plan.delay_ms = args.delay;
    plan.stagger_secs = args.stagger;
    plan.churn = args.churn;
    plan.timeout_factor = args.timeout_factor;
    if let Some(secs) = args.max_run_secs {
        plan.max_timeout = Duration::from_secs(secs);
    }
    plan.min_timeout = plan.min_timeout.min(plan.max_timeout);
    plan.classe_bin = args.classe.clone().or_else(default_classe);
    if let Some(dir) = &args.work_dir {
        plan.work_root = dir.clone();
    }
    plan.keep = args.keep;
    plan.repeat = args.repeat;
    plan.seed_nice = args.seed_nice;
    plan.net = net_options(&args);
    if !plan.net.offloads && !scenario::have_program("ethtool") {
        bail!("--offloads off needs ethtool: apt-get install ethtool");
    }
    if let Some(bin) = &plan.classe_bin {
        if bin.components().any(|c| c.as_os_str() == "debug") {
            eprintln!("classe-lab: warning: {} looks like a debug build; its times mean little (build with --release)", bin.display());
        }
    }
    if args.delay.is_some() && !probe.netem {
        eprintln!("classe-lab: warning: sch_netem is not available in this kernel: delay will NOT be emulated (the results say so)");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let jsonl = args.out.join("results.jsonl");
    if !args.append && jsonl.exists() {
        std::fs::remove_file(&jsonl)?;
    }
    let mut write_errors = Vec::new();
    let (results, errors) = plan
        .run(&probe, |r| {
            if let Err(e) = report::append_jsonl(&jsonl, r) {
                write_errors.push(format!("{e:#}"));
            }
        })
        .await?;
    let all = report::read_jsonl(&jsonl).unwrap_or(results.clone());
    report::write_all(&args.out, &all)?;
    println!("{}", report::markdown(&results));
    eprintln!(
        "classe-lab: wrote {}, results.md, completion.svg, bytes.svg in {}",
        jsonl.display(),
        args.out.display()
    );
    for e in errors.iter().chain(&write_errors) {
        eprintln!("classe-lab: error: {e}");
    }
    Ok(errors.is_empty() && write_errors.is_empty() && results.iter().all(|r| r.ok))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("classe-lab: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Cmd::Run(args) => classe_lab::until_interrupted(run(*args)).await,
            Cmd::Report { results, out } => Some((|| -> Result<bool> {
                let all = report::read_jsonl(&results)?;
                report::write_all(&out, &all)?;
                println!("{}", report::markdown(&all));
                Ok(true)
            })()),
            Cmd::Homes(args) => classe_lab::until_interrupted(homes(*args)).await,
            Cmd::Probe => {
                let p = net::probe();
                println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
                Some(Ok(p.usable()))
            }
            Cmd::Adversary(args) => Some(adversary(*args).await),
            Cmd::Clean => {
                let removed = classe_lab::homenet::remove_stale(None);
                for ns in &removed {
                    println!("removed namespace {ns}");
                }
                Some(Ok(true))
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        None => ExitCode::from(130),
        Some(Ok(true)) => ExitCode::SUCCESS,
        Some(Ok(false)) => ExitCode::from(1),
        Some(Err(e)) => {
            eprintln!("classe-lab: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "classe-lab",
            "run",
            "--smoke",
            "--down",
            "none",
            "--down-list",
            "10mbit,none",
            "--churn",
            "0.2@30",
            "--pupils",
            "3,5",
        ])
        .unwrap();
        let Cmd::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.down.0, None);
        assert_eq!(args.seed_down.0, None);
        assert_eq!(args.slow_down.0, Some(10_000_000));
        assert_eq!(args.down_list.len(), 2);
        assert_eq!(args.pupils, vec![3, 5]);
        assert_eq!(args.churn.unwrap().at_secs, 30.0);
        assert!(net_options(&args).is_default());
        let cli = Cli::try_parse_from([
            "classe-lab",
            "run",
            "--net",
            "strict",
            "--ipv6",
            "on",
            "--leaf-queue-ms",
            "1000",
        ])
        .unwrap();
        let Cmd::Run(args) = cli.command else {
            panic!("not run")
        };
        let o = net_options(&args);
        assert!(o.ipv6 && !o.offloads);
        assert_eq!(o.leaf_queue_ms, Some(1000));
        assert_eq!(o.htb_r2q, Some(1000));
    }
}
