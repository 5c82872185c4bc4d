//! `loopback`: throughput of one large file over loopback, fetched with the
//! real `classe` binary, against iroh-blobs' own get of the same blob in the
//! same run.
//!
//! Each round runs, one after the other, on a fresh set of stores:
//!
//! - **baseline**, in this process: two iroh-blobs file stores, two iroh
//!   endpoints on 127.0.0.1, the provider serving with `BlobsProtocol`, the
//!   getter running `remote().fetch(conn, raw(hash))`. Timed from `connect`
//!   to completion.
//! - **classe**: `classe share FILE` in a fresh teacher home, then
//!   `classe fetch TICKET --json --no-seed` in a fresh pupil home. Timed two
//!   ways: the `seconds` the fetch reports (measured inside the process,
//!   from the start of the fetch to the verified end, without process start
//!   and without writing the output folder), and the wall time of the whole
//!   fetch process (start, fetch, export to the output folder, exit).
//!
//! Optional diagnostics, to find where a gap comes from:
//!
//! - `--two-process`: iroh-blobs with its provider in a child process (this
//!   binary, re-run as a provider): the process layout of classe, nothing
//!   else of classe;
//! - `--get-from-share`: iroh-blobs' own get of the whole bundle from the
//!   running `classe share`: classe's provider, iroh-blobs' getter;
//! - `--pieces-kib N`: iroh-blobs in process, fetching the blob as N KiB
//!   byte-range requests, several in flight: the request pattern of
//!   classe's swarm download, nothing else of classe.
//!
//! The human table goes to stderr; one JSON line with the figures goes to
//! stdout. Debug builds are refused: their figures mean nothing. Ctrl-C
//! stops the `classe` processes and removes the temporary folder.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use classe_testkit::Rng;
use iroh::{endpoint::presets, protocol::Router, Endpoint, EndpointAddr, RelayMode, TransportAddr};
use iroh_blobs::{
    api::proto::BlobStatus,
    protocol::{ChunkRanges, ChunkRangesExt, GetRequest},
    store::fs::FsStore,
    BlobFormat, BlobsProtocol, HashAndFormat,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

/// Throughput unit: decimal megabytes.
const MB: f64 = 1_000_000.0;
/// How long `classe share` may take to import the file and print a ticket.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one transfer (either side) may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a short command (`classe id`) or a stopping sharer may take.
const SHORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most rounds: a typo must not run for hours.
const MAX_ROUNDS: usize = 50;
/// Largest file: about five copies of it are on disk at once.
const MAX_SIZE_MB: u64 = 4_000;
/// CPU seconds used by other processes during one transfer above which the
/// run is flagged as noisy.
const NOISE_CPU_SECS: f64 = 0.2;

/// Loopback throughput of `classe fetch` against iroh-blobs' own get of the
/// same blob, in the same run.
#[derive(Debug, Parser)]
#[command(name = "loopback")]
struct Args {
    /// Size of the test file in MB (10^6 bytes).
    #[arg(long, default_value_t = 200)]
    size_mb: u64,
    /// Rounds; each runs the baseline, then classe, on fresh stores.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The `classe` binary. Default: `classe` next to this executable.
    #[arg(long, value_name = "PATH")]
    classe: Option<PathBuf>,
    /// Where to put the temporary folder (test file, stores, homes).
    /// Default: the system temp folder.
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
    /// Copy the stderr of every `classe` process into DIR, one file each.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Set CLASSE_LOG for the `classe` processes (e.g. `debug`). Logging
    /// costs time: figures taken with it are not comparable.
    #[arg(long, value_name = "FILTER")]
    classe_log: Option<String>,
    /// Before each timed transfer, wait up to this many seconds for the
    /// machine to be quiet (other processes using under 5% of one CPU over
    /// half a second). 0: do not wait.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    quiet_wait: u64,
    /// Also measure iroh-blobs with the provider in a separate process (the
    /// same process layout as classe), to tell the cost of two processes
    /// from the cost of what classe adds.
    #[arg(long)]
    two_process: bool,
    /// Also fetch the whole bundle from the same `classe share` process with
    /// iroh-blobs' own get (no classe on the fetching side), to tell the
    /// cost of classe's provider from the cost of classe's fetch.
    #[arg(long)]
    get_from_share: bool,
    /// Also measure iroh-blobs (in process) fetching the blob as byte-range
    /// requests of this many KiB each, the request pattern of classe's
    /// swarm download (which uses 256 KiB pieces). 0: off.
    #[arg(long, default_value_t = 0, value_name = "KIB")]
    pieces_kib: u64,
    /// With --pieces-kib: requests in flight at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pieces_in_flight: usize,
    /// With --pieces-kib: request pieces in file order instead of random
    /// order.
    #[arg(long)]
    pieces_in_order: bool,
    /// Internal: run as the provider of the two-process baseline, with its
    /// store in DIR.
    #[arg(long, value_name = "DIR", hide = true, requires = "serve_file")]
    serve_provider: Option<PathBuf>,
    /// Internal: the file the provider serves.
    #[arg(long, value_name = "FILE", hide = true)]
    serve_file: Option<PathBuf>,
    /// Run even in a debug build (the figures are then meaningless).
    #[arg(long)]
    allow_debug: bool,
}

/// One timed transfer.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds of the transfer.
    secs: f64,
    /// Payload bytes received.
    bytes: u64,
    /// CPU seconds (user + system) of both sides during the transfer.
    cpu_secs: f64,
    /// CPU seconds used by everything else on the machine meanwhile: a
    /// noise indicator (another build running makes the figures worthless).
    other_cpu_secs: f64,
}

impl Sample {
    fn mb_s(&self, size: u64) -> f64 {
        size as f64 / MB / self.secs
    }
}

/// One classe round.
#[derive(Debug, Clone, Copy)]
struct ClasseSample {
    /// Time from spawning `share` to its ticket (import of the file).
    import_secs: f64,
    /// The fetch's own `seconds`.
    fetch: Sample,
    /// Wall time of the fetch process, start to exit.
    wall_secs: f64,
    /// With `--get-from-share`: iroh-blobs' own get of the whole bundle
    /// from the same `classe share` process.
    iroh_get_from_share: Option<Sample>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    if let (Some(dir), Some(file)) = (&args.serve_provider, &args.serve_file) {
        let result = runtime.block_on(serve_provider(dir, file));
        runtime.shutdown_timeout(Duration::from_secs(5));
        return result;
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "!!! This is a DEBUG build: its throughput figures are meaningless (about 6x slower)."
        );
        eprintln!("!!! Build with: cargo build --release -p classe-bench -p classe");
        if !args.allow_debug {
            bail!("refusing to benchmark a debug build (pass --allow-debug to run anyway)");
        }
    }
    ensure!(
        (1..=MAX_ROUNDS).contains(&args.rounds),
        "--rounds must be 1..={MAX_ROUNDS}"
    );
    ensure!(
        (1..=MAX_SIZE_MB).contains(&args.size_mb),
        "--size-mb must be 1..={MAX_SIZE_MB}"
    );
    ensure!(args.quiet_wait <= 600, "--quiet-wait must be at most 600");
    ensure!(
        args.pieces_kib == 0 || args.pieces_kib >= 16,
        "--pieces-kib must be 0 (off) or at least 16"
    );
    ensure!(
        (1..=1024).contains(&args.pieces_in_flight),
        "--pieces-in-flight must be 1..=1024"
    );
    // On Ctrl-C, dropping `run` drops the temporary folder (removing it)
    // and the child handles (killing the children).
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run(args: Args) -> Result<()> {
    let classe = args
        .classe
        .clone()
        .or_else(|| classe_testkit::bin::next_to_exe("classe"))
        .unwrap_or_else(|| PathBuf::from("<this binary's folder>/classe"));
    ensure!(
        classe.is_file(),
        "no classe binary at {}: build it in the same target dir (cargo build --release -p classe) or pass --classe PATH",
        classe.display()
    );
    if let Some(dir) = &args.log_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = match &args.tmp_dir {
        Some(dir) => tempfile::Builder::new()
            .prefix("classe-bench-")
            .tempdir_in(dir)?,
        None => tempfile::Builder::new().prefix("classe-bench-").tempdir()?,
    };
    let size = args.size_mb * 1_000_000;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());

    eprintln!(
        "loopback benchmark: {} MB file, {} round(s), {cpus} CPU(s)",
        args.size_mb, args.rounds
    );
    eprintln!("classe binary: {}", classe.display());
    eprintln!("temp folder: {}", tmp.path().display());
    if args.classe_log.is_some() {
        eprintln!(
            "warning: CLASSE_LOG is set for the classe processes; figures are not comparable"
        );
    }

    let file = tmp.path().join("payload.bin");
    let started = Instant::now();
    write_random_file(&file, size, 0x5eed_c1a5_5e00_0001)?;
    eprintln!(
        "wrote {} in {:.2}s",
        file.display(),
        started.elapsed().as_secs_f64()
    );

    let mut baseline = Vec::new();
    let mut classe_samples = Vec::new();
    let mut two_process = Vec::new();
    let mut pieces = Vec::new();
    for round in 1..=args.rounds {
        let dir = tempfile::Builder::new()
            .prefix(&format!("round{round}-baseline-"))
            .tempdir_in(tmp.path())?;
        let b = run_baseline(
            &file,
            dir.path(),
            size,
            Duration::from_secs(args.quiet_wait),
            None,
        )
        .await
        .with_context(|| format!("round {round}: baseline"))?;
        drop(dir);
        eprintln!(
            "round {round}: baseline {:8.1} MB/s  ({:.3}s, {} bytes received, cpu {:.2}s, other processes' cpu {:.2}s)",
            b.mb_s(size),
            b.secs,
            b.bytes,
            b.cpu_secs,
            b.other_cpu_secs
        );
        baseline.push(b);

        let dir = tempfile::Builder::new()
            .prefix(&format!("round{round}-classe-"))
            .tempdir_in(tmp.path())?;
        let c = run_classe(&classe, &file, dir.path(), size, round, &args)
            .await
            .with_context(|| format!("round {round}: classe"))?;
        drop(dir);
        eprintln!(
            "round {round}: classe   {:8.1} MB/s  ({:.3}s in-process, {:.3}s wall, {} bytes received, cpu {:.2}s, other processes' cpu {:.2}s; share import {:.2}s)",
            c.fetch.mb_s(size),
            c.fetch.secs,
            c.wall_secs,
            c.fetch.bytes,
            c.fetch.cpu_secs,
            c.fetch.other_cpu_secs,
            c.import_secs
        );
        if let Some(g) = &c.iroh_get_from_share {
            eprintln!(
                "round {round}: share->iroh-get {:8.1} MB/s  ({:.3}s, {} bytes received, cpu {:.2}s, other processes' cpu {:.2}s)",
                g.mb_s(size),
                g.secs,
                g.bytes,
                g.cpu_secs,
                g.other_cpu_secs
            );
        }
        classe_samples.push(c);

        if args.two_process {
            let dir = tempfile::Builder::new()
                .prefix(&format!("round{round}-2proc-"))
                .tempdir_in(tmp.path())?;
            let t = run_baseline_two_process(
                &file,
                dir.path(),
                size,
                Duration::from_secs(args.quiet_wait),
            )
            .await
            .with_context(|| format!("round {round}: two-process baseline"))?;
            drop(dir);
            eprintln!(
                "round {round}: 2-proc   {:8.1} MB/s  ({:.3}s, {} bytes received, cpu {:.2}s, other processes' cpu {:.2}s)",
                t.mb_s(size),
                t.secs,
                t.bytes,
                t.cpu_secs,
                t.other_cpu_secs
            );
            two_process.push(t);
        }

        if args.pieces_kib > 0 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("round{round}-pieces-"))
                .tempdir_in(tmp.path())?;
            let t = run_baseline(
                &file,
                dir.path(),
                size,
                Duration::from_secs(args.quiet_wait),
                Some((
                    args.pieces_kib * 1024,
                    args.pieces_in_flight,
                    !args.pieces_in_order,
                )),
            )
            .await
            .with_context(|| format!("round {round}: iroh-blobs in pieces"))?;
            drop(dir);
            eprintln!(
                "round {round}: pieces   {:8.1} MB/s  ({:.3}s, {} bytes received, cpu {:.2}s, other processes' cpu {:.2}s)",
                t.mb_s(size),
                t.secs,
                t.bytes,
                t.cpu_secs,
                t.other_cpu_secs
            );
            pieces.push(t);
        }
    }
    drop(tmp);

    let baseline_mb_s: Vec<f64> = baseline.iter().map(|s| s.mb_s(size)).collect();
    let classe_mb_s: Vec<f64> = classe_samples.iter().map(|c| c.fetch.mb_s(size)).collect();
    let classe_wall_mb_s: Vec<f64> = classe_samples
        .iter()
        .map(|c| size as f64 / MB / c.wall_secs)
        .collect();
    let base_med = median(&baseline_mb_s);
    let classe_med = median(&classe_mb_s);
    let wall_med = median(&classe_wall_mb_s);
    let ratio = classe_med / base_med;
    let ratio_wall = wall_med / base_med;

    let mut err = std::io::stderr().lock();
    writeln!(err)?;
    writeln!(
        err,
        "{} MB over loopback, {cpus} CPU(s), release build",
        args.size_mb
    )?;
    writeln!(
        err,
        "round | baseline MB/s | classe MB/s | classe wall MB/s | ratio | baseline cpu s | classe cpu s | other cpu s (b/c) | share import s"
    )?;
    writeln!(
        err,
        "------|---------------|-------------|------------------|-------|----------------|--------------|-------------------|---------------"
    )?;
    let mut noisy = false;
    for (i, (b, c)) in baseline.iter().zip(&classe_samples).enumerate() {
        noisy |= b.other_cpu_secs > NOISE_CPU_SECS || c.fetch.other_cpu_secs > NOISE_CPU_SECS;
        writeln!(
            err,
            "{:5} | {:13.1} | {:11.1} | {:16.1} | {:5.3} | {:14.2} | {:12.2} | {:8.2}/{:<8.2} | {:14.2}",
            i + 1,
            baseline_mb_s[i],
            classe_mb_s[i],
            classe_wall_mb_s[i],
            classe_mb_s[i] / baseline_mb_s[i],
            b.cpu_secs,
            c.fetch.cpu_secs,
            b.other_cpu_secs,
            c.fetch.other_cpu_secs,
            c.import_secs
        )?;
    }
    writeln!(
        err,
        "median| {base_med:13.1} | {classe_med:11.1} | {wall_med:16.1} |"
    )?;
    writeln!(err)?;
    writeln!(
        err,
        "ratio classe/baseline (medians, classe's in-process seconds): {ratio:.3}"
    )?;
    writeln!(
        err,
        "ratio classe/baseline (medians, classe fetch process wall time incl. start and export): {ratio_wall:.3}"
    )?;
    writeln!(
        err,
        "cpu s: user+system CPU of both sides (baseline: this process during the transfer; classe: the whole fetch process, start and export included, plus the share process meanwhile)"
    )?;
    writeln!(
        err,
        "other cpu s: CPU used by other processes on the machine meanwhile (baseline/classe)"
    )?;
    let two_mb_s: Vec<f64> = two_process.iter().map(|s| s.mb_s(size)).collect();
    let two_med = median(&two_mb_s);
    if !two_process.is_empty() {
        writeln!(err)?;
        writeln!(
            err,
            "iroh-blobs with the provider in a child process (same layout as classe):"
        )?;
        writeln!(
            err,
            "round | 2-proc MB/s | cpu s | other cpu s | classe / 2-proc | 2-proc / in-process baseline"
        )?;
        for (i, t) in two_process.iter().enumerate() {
            noisy |= t.other_cpu_secs > NOISE_CPU_SECS;
            writeln!(
                err,
                "{:5} | {:11.1} | {:5.2} | {:11.2} | {:15.3} | {:.3}",
                i + 1,
                two_mb_s[i],
                t.cpu_secs,
                t.other_cpu_secs,
                classe_mb_s[i] / two_mb_s[i],
                two_mb_s[i] / baseline_mb_s[i]
            )?;
        }
        writeln!(
            err,
            "median| {two_med:11.1} |       |             | {:15.3} | {:.3}",
            classe_med / two_med,
            two_med / base_med
        )?;
    }
    let from_share: Vec<Sample> = classe_samples
        .iter()
        .filter_map(|c| c.iroh_get_from_share)
        .collect();
    let from_share_mb_s: Vec<f64> = from_share.iter().map(|s| s.mb_s(size)).collect();
    let from_share_med = median(&from_share_mb_s);
    if !from_share.is_empty() {
        writeln!(err)?;
        writeln!(
            err,
            "iroh-blobs' own get (whole bundle) from the same `classe share` process:"
        )?;
        writeln!(
            err,
            "round | share->iroh-get MB/s | cpu s | other cpu s | classe fetch / this | this / in-process baseline"
        )?;
        for (i, t) in from_share.iter().enumerate() {
            noisy |= t.other_cpu_secs > NOISE_CPU_SECS;
            writeln!(
                err,
                "{:5} | {:20.1} | {:5.2} | {:11.2} | {:19.3} | {:.3}",
                i + 1,
                from_share_mb_s[i],
                t.cpu_secs,
                t.other_cpu_secs,
                classe_mb_s[i] / from_share_mb_s[i],
                from_share_mb_s[i] / baseline_mb_s[i]
            )?;
        }
        writeln!(
            err,
            "median| {from_share_med:20.1} |       |             | {:19.3} | {:.3}",
            classe_med / from_share_med,
            from_share_med / base_med
        )?;
    }
    let pieces_mb_s: Vec<f64> = pieces.iter().map(|s| s.mb_s(size)).collect();
    let pieces_med = median(&pieces_mb_s);
    if !pieces.is_empty() {
        writeln!(err)?;
        writeln!(
            err,
            "iroh-blobs in process, {} KiB range requests, {} in flight, {} order:",
            args.pieces_kib,
            args.pieces_in_flight,
            if args.pieces_in_order {
                "file"
            } else {
                "random"
            }
        )?;
        writeln!(
            err,
            "round | pieces MB/s | cpu s | other cpu s | classe / pieces | pieces / in-process baseline"
        )?;
        for (i, t) in pieces.iter().enumerate() {
            noisy |= t.other_cpu_secs > NOISE_CPU_SECS;
            writeln!(
                err,
                "{:5} | {:11.1} | {:5.2} | {:11.2} | {:15.3} | {:.3}",
                i + 1,
                pieces_mb_s[i],
                t.cpu_secs,
                t.other_cpu_secs,
                classe_mb_s[i] / pieces_mb_s[i],
                pieces_mb_s[i] / baseline_mb_s[i]
            )?;
        }
        writeln!(
            err,
            "median| {pieces_med:11.1} |       |             | {:15.3} | {:.3}",
            classe_med / pieces_med,
            pieces_med / base_med
        )?;
    }
    if noisy {
        writeln!(
            err,
            "WARNING: other processes used more than {NOISE_CPU_SECS} CPU s during some transfers: the machine was busy, the figures are noisy"
        )?;
    }
    drop(err);

    let mut summary = serde_json::json!({
        "size_bytes": size,
        "rounds": args.rounds,
        "cpus": cpus,
        "baseline_mb_s": baseline_mb_s,
        "classe_mb_s": classe_mb_s,
        "classe_wall_mb_s": classe_wall_mb_s,
        "ratio_median": ratio,
        "ratio_wall_median": ratio_wall,
        "baseline_other_cpu_s": baseline.iter().map(|s| s.other_cpu_secs).collect::<Vec<_>>(),
        "classe_other_cpu_s": classe_samples.iter().map(|c| c.fetch.other_cpu_secs).collect::<Vec<_>>(),
    });
    if !pieces.is_empty() {
        summary["pieces_mb_s"] = serde_json::json!(pieces_mb_s);
        summary["pieces_kib"] = serde_json::json!(args.pieces_kib);
    }
    if !from_share.is_empty() {
        summary["share_iroh_get_mb_s"] = serde_json::json!(from_share_mb_s);
    }
    if !two_process.is_empty() {
        summary["baseline_2proc_mb_s"] = serde_json::json!(two_mb_s);
        summary["ratio_2proc_median"] = serde_json::json!(classe_med / two_med);
    }
    println!("{summary}");
    Ok(())
}

/// Writes `size` bytes from a seeded generator: incompressible,
/// reproducible, and much faster than the disk.
fn write_random_file(path: &Path, size: u64, seed: u64) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    Rng::new(seed).write(&mut out, size)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// User + system CPU seconds of a `getrusage` target.
fn rusage_cpu(who: nix::sys::resource::UsageWho) -> Result<f64> {
    let u = nix::sys::resource::getrusage(who)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(u.user_time()) + secs(u.system_time()))
}

/// Busy CPU seconds of the whole machine since boot (all CPUs), from
/// /proc/stat: everything but idle and iowait.
fn machine_busy_cpu() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    // /proc reports in USER_HZ, which is 100 on Linux.
    Ok(total.saturating_sub(idle) as f64 / 100.0)
}

/// Waits, at most `max`, until the machine has been quiet for half a
/// second: all processes together used under 5% of one CPU. Returns whether
/// it became quiet.
async fn wait_for_quiet(max: Duration) -> Result<bool> {
    const WINDOW: Duration = Duration::from_millis(500);
    let tries = (max.as_millis() / WINDOW.as_millis()) as usize;
    for _ in 0..tries {
        let before = machine_busy_cpu()?;
        tokio::time::sleep(WINDOW).await;
        if machine_busy_cpu()? - before < 0.05 * WINDOW.as_secs_f64() {
            return Ok(true);
        }
    }
    Ok(tries == 0)
}

/// User + system CPU seconds of a running process, from /proc.
fn proc_cpu(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields.get(i).context("short /proc stat")?.parse::<u64>()? as f64)
    };
    // /proc reports in USER_HZ, which is 100 on Linux.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

async fn bind_endpoint() -> Result<Endpoint> {
    Ok(Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .bind_addr("127.0.0.1:0")?
        .bind()
        .await?)
}

/// The provider's bound loopback socket, dialled directly as a classe
/// ticket does.
fn dial_addr(endpoint: &Endpoint) -> EndpointAddr {
    EndpointAddr::from_parts(
        endpoint.id(),
        endpoint.bound_sockets().into_iter().map(TransportAddr::Ip),
    )
}

/// iroh-blobs alone: provider and getter in this process.
async fn run_baseline(
    file: &Path,
    dir: &Path,
    size: u64,
    quiet_wait: Duration,
    pieces: Option<(u64, usize, bool)>,
) -> Result<Sample> {
    let provider_store = FsStore::load(dir.join("provider")).await?;
    let provider_ep = bind_endpoint().await?;
    let tag = provider_store
        .blobs()
        .add_path(std::path::absolute(file)?)
        .await?;
    let router = Router::builder(provider_ep.clone())
        .accept(iroh_blobs::ALPN, BlobsProtocol::new(&provider_store, None))
        .spawn();
    let want = match pieces {
        None => Want::Whole(HashAndFormat::raw(tag.hash)),
        Some((piece, in_flight, random)) => Want::Pieces {
            hash: tag.hash,
            piece,
            in_flight,
            random,
        },
    };
    let sample = timed_get(dir, dial_addr(&provider_ep), want, size, quiet_wait, None).await;
    router.shutdown().await?;
    // The store actor exits as part of shutting down, so its reply can be
    // lost: not a failure.
    provider_store.shutdown().await.ok();
    sample
}

/// iroh-blobs alone, with the provider in a child process (this binary run
/// with `--serve-provider`): the same process layout as `classe share` and
/// `classe fetch`, without anything classe adds.
async fn run_baseline_two_process(
    file: &Path,
    dir: &Path,
    size: u64,
    quiet_wait: Duration,
) -> Result<Sample> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--serve-provider")
        .arg(dir.join("provider"))
        .arg("--serve-file")
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the provider process")?;
    let pid = child.id().context("the provider process exited at once")?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let result = async {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(IMPORT_TIMEOUT, lines.next_line())
            .await
            .context("the provider process printed no address in time")??
            .context("the provider process exited without an address")?;
        let mut parts = line.split_whitespace();
        let mut next = || parts.next().context("short provider address line");
        let id: iroh::EndpointId = next()?.parse()?;
        let socket: std::net::SocketAddr = next()?.parse()?;
        let hash: iroh_blobs::Hash = next()?.parse()?;
        let addr = EndpointAddr::from_parts(id, [TransportAddr::Ip(socket)]);
        timed_get(
            dir,
            addr,
            Want::Whole(HashAndFormat::raw(hash)),
            size,
            quiet_wait,
            Some(pid),
        )
        .await
    }
    .await;
    // Closing its stdin tells the provider to stop.
    drop(child.stdin.take());
    if tokio::time::timeout(SHORT_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        eprintln!("warning: the provider process ({pid}) did not stop; killing it");
        child.start_kill()?;
        tokio::time::timeout(SHORT_TIMEOUT, child.wait())
            .await
            .context("the provider process did not die")??;
    }
    result
}

/// `--serve-provider`: import the file, print `ID SOCKET HASH`, serve until
/// stdin closes.
async fn serve_provider(store_dir: &Path, file: &Path) -> Result<()> {
    let store = FsStore::load(store_dir).await?;
    let endpoint = bind_endpoint().await?;
    let tag = store.blobs().add_path(std::path::absolute(file)?).await?;
    let router = Router::builder(endpoint.clone())
        .accept(iroh_blobs::ALPN, BlobsProtocol::new(&store, None))
        .spawn();
    let socket = endpoint
        .bound_sockets()
        .into_iter()
        .next()
        .context("the endpoint has no bound socket")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{} {socket} {}", endpoint.id(), tag.hash)?;
        out.flush()?;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    // Bounded: the parent closes stdin after one transfer.
    let _ = tokio::time::timeout(TRANSFER_TIMEOUT + IMPORT_TIMEOUT, async {
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    router.shutdown().await?;
    store.shutdown().await.ok();
    Ok(())
}

/// What the getter asks for.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// One request for the whole blob or hash sequence.
    Whole(HashAndFormat),
    /// The raw blob as byte-range requests of `piece` bytes, `in_flight` at
    /// once over one connection, in random or file order: the request
    /// pattern of classe's swarm download, with nothing else of classe.
    Pieces {
        hash: iroh_blobs::Hash,
        piece: u64,
        in_flight: usize,
        random: bool,
    },
}

impl Want {
    fn content(&self) -> HashAndFormat {
        match self {
            Want::Whole(content) => *content,
            Want::Pieces { hash, .. } => HashAndFormat::raw(*hash),
        }
    }
}

/// Fetches `want` over `conn`; returns the payload bytes read.
async fn get(
    store: &FsStore,
    conn: iroh::endpoint::Connection,
    want: Want,
    size: u64,
) -> Result<u64> {
    let (hash, piece, in_flight, random) = match want {
        Want::Whole(content) => {
            let stats = store.remote().fetch(conn, content).complete().await?;
            return Ok(stats.payload_bytes_read);
        }
        Want::Pieces {
            hash,
            piece,
            in_flight,
            random,
        } => (hash, piece.max(1), in_flight.max(1), random),
    };
    let count = size.div_ceil(piece);
    let mut order: Vec<u64> = (0..count).collect();
    if random {
        // A fixed seed: the same order each run.
        Rng::new(0x9e37_79b9_7f4a_7c15).shuffle(&mut order);
    }
    let mut pending = order.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut bytes = 0u64;
    loop {
        while running.len() < in_flight {
            let Some(i) = pending.next() else { break };
            let start = i * piece;
            let end = (start + piece).min(size);
            let request = GetRequest::blob_ranges(hash, ChunkRanges::bytes(start..end));
            let store = store.clone();
            let conn = conn.clone();
            running.spawn(async move {
                store
                    .remote()
                    .execute_get(conn, request)
                    .complete()
                    .await
                    .map(|stats| stats.payload_bytes_read)
            });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        bytes += done??;
    }
    Ok(bytes)
}

/// The getter side of both baselines: a fresh store and endpoint, then one
/// timed `connect` + `fetch` of the raw blob. `provider_pid`: a provider in
/// another process, whose CPU time is added.
async fn timed_get(
    dir: &Path,
    addr: EndpointAddr,
    want: Want,
    size: u64,
    quiet_wait: Duration,
    provider_pid: Option<u32>,
) -> Result<Sample> {
    let getter_store = FsStore::load(dir.join("getter")).await?;
    let getter_ep = bind_endpoint().await?;

    if !wait_for_quiet(quiet_wait).await? {
        eprintln!("warning: the machine did not become quiet; measuring anyway");
    }
    let provider_cpu = || provider_pid.map_or(Ok(0.0), proc_cpu);
    let cpu_before = rusage_cpu(nix::sys::resource::UsageWho::RUSAGE_SELF)? + provider_cpu()?;
    let busy_before = machine_busy_cpu()?;
    let started = Instant::now();
    let transfer = async {
        let conn = getter_ep.connect(addr, iroh_blobs::ALPN).await?;
        let bytes = get(&getter_store, conn.clone(), want, size).await?;
        anyhow::Ok((conn, bytes))
    };
    let (conn, bytes) = tokio::time::timeout(TRANSFER_TIMEOUT, transfer)
        .await
        .context("baseline transfer timed out")??;
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs =
        rusage_cpu(nix::sys::resource::UsageWho::RUSAGE_SELF)? + provider_cpu()? - cpu_before;
    let other_cpu_secs = (machine_busy_cpu()? - busy_before - cpu_secs).max(0.0);

    let content = want.content();
    if content.format == BlobFormat::Raw {
        let status = getter_store.blobs().status(content.hash).await?;
        ensure!(
            matches!(status, BlobStatus::Complete { size: s } if s == size),
            "the getter's blob is not complete: {status:?}"
        );
    }
    ensure!(
        getter_store.remote().local(content).await?.is_complete(),
        "the getter's copy is not complete"
    );
    conn.close(0u32.into(), b"done");
    getter_ep.close().await;
    getter_store.shutdown().await.ok();
    ensure!(
        bytes >= size,
        "baseline received {bytes} bytes, expected {size}"
    );
    Ok(Sample {
        secs,
        bytes,
        cpu_secs,
        other_cpu_secs,
    })
}

/// A `classe` command with a clean environment: no CLASSE_* settings from
/// the caller leak into the benchmark.
fn classe_command(classe: &Path, home: &Path, args: &Args) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(classe);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CLASSE_") {
            cmd.env_remove(&key);
        }
    }
    if let Some(filter) = &args.classe_log {
        cmd.env("CLASSE_LOG", filter);
    }
    cmd.arg("--home")
        .arg(home)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Where a classe process's stderr goes: a file in the log folder, or
/// nowhere.
fn stderr_sink(args: &Args, name: &str) -> Result<Stdio> {
    Ok(match &args.log_dir {
        Some(dir) => Stdio::from(std::fs::File::create(dir.join(name))?),
        None => Stdio::null(),
    })
}

async fn run_classe(
    classe: &Path,
    file: &Path,
    dir: &Path,
    size: u64,
    round: usize,
    args: &Args,
) -> Result<ClasseSample> {
    let teacher = dir.join("teacher");
    let pupil = dir.join("pupil");
    let out = dir.join("out");

    // The teacher's author key, which the pupil trusts.
    let id = tokio::time::timeout(
        SHORT_TIMEOUT,
        classe_command(classe, &teacher, args)
            .arg("id")
            .stderr(Stdio::inherit())
            .output(),
    )
    .await
    .context("classe id timed out")??;
    ensure!(id.status.success(), "classe id failed: {}", id.status);
    let key = String::from_utf8(id.stdout)?
        .lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .context("classe id printed no key")?;

    let import_started = Instant::now();
    let mut share = classe_command(classe, &teacher, args)
        .arg("share")
        .arg(file)
        .args(["--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(stderr_sink(args, &format!("round{round}-share.log"))?)
        .spawn()
        .context("cannot start classe share")?;
    let share_pid = share.id().context("classe share exited at once")?;

    // From here on the sharer must be stopped whatever happens.
    let result = async {
        let stdout = share.stdout.take().context("no stdout pipe")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ticket = tokio::time::timeout(IMPORT_TIMEOUT, lines.next_line())
            .await
            .context("classe share printed no ticket within 120 s")??
            .context("classe share exited without a ticket")?;
        let import_secs = import_started.elapsed().as_secs_f64();
        let ticket = ticket.trim().to_string();

        if !wait_for_quiet(Duration::from_secs(args.quiet_wait)).await? {
            eprintln!("warning: the machine did not become quiet; measuring anyway");
        }
        let share_cpu_before = proc_cpu(share_pid)?;
        let children_cpu_before = rusage_cpu(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
        let busy_before = machine_busy_cpu()?;
        let fetch_started = Instant::now();
        let fetch = tokio::time::timeout(
            TRANSFER_TIMEOUT,
            classe_command(classe, &pupil, args)
                .arg("fetch")
                .arg(&ticket)
                .args(["--trust", &key, "--no-seed", "--json", "--out"])
                .arg(&out)
                .args(["--bind", "127.0.0.1:0"])
                .stdout(Stdio::piped())
                .stderr(stderr_sink(args, &format!("round{round}-fetch.log"))?)
                .output(),
        )
        .await
        .context("classe fetch timed out")??;
        let wall_secs = fetch_started.elapsed().as_secs_f64();
        let cpu_secs = rusage_cpu(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?
            - children_cpu_before
            + proc_cpu(share_pid)?
            - share_cpu_before;
        let other_cpu_secs = (machine_busy_cpu()? - busy_before - cpu_secs).max(0.0);
        ensure!(
            fetch.status.success(),
            "classe fetch failed: {}",
            fetch.status
        );

        let stdout = String::from_utf8(fetch.stdout)?;
        let line = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .context("classe fetch printed no JSON")?;
        let json: serde_json::Value =
            serde_json::from_str(line).context("classe fetch's JSON does not parse")?;
        let secs = json["seconds"]
            .as_f64()
            .context("no `seconds` in classe fetch's JSON")?;
        let received = json["received_bytes"]
            .as_u64()
            .context("no `received_bytes` in classe fetch's JSON")?;
        let total = json["total_bytes"]
            .as_u64()
            .context("no `total_bytes` in classe fetch's JSON")?;
        ensure!(
            total == size,
            "classe fetch reports {total} bytes, expected {size}"
        );
        ensure!(
            received >= size,
            "classe fetch received {received} bytes, expected at least {size}"
        );
        let written: u64 = std::fs::read_dir(&out)?
            .map(|e| Ok(e?.metadata()?.len()))
            .sum::<std::io::Result<u64>>()?;
        ensure!(
            written == size,
            "classe fetch wrote {written} bytes, expected {size}"
        );
        let iroh_get_from_share = if args.get_from_share {
            let ticket: classe_bundle::Ticket = ticket
                .parse()
                .map_err(|e| anyhow::anyhow!("cannot parse the ticket: {e}"))?;
            let provider = ticket
                .providers
                .first()
                .context("ticket without provider")?;
            let addr = EndpointAddr::from_parts(
                iroh::EndpointId::from_bytes(&provider.node_id)?,
                provider.addrs.iter().copied().map(TransportAddr::Ip),
            );
            let get_dir = dir.join("iroh-get");
            Some(
                timed_get(
                    &get_dir,
                    addr,
                    Want::Whole(HashAndFormat::hash_seq(iroh_blobs::Hash::from_bytes(
                        ticket.root,
                    ))),
                    size,
                    Duration::from_secs(args.quiet_wait),
                    Some(share_pid),
                )
                .await
                .context("iroh-blobs get from classe share")?,
            )
        } else {
            None
        };
        anyhow::Ok(ClasseSample {
            import_secs,
            fetch: Sample {
                secs,
                bytes: received,
                cpu_secs,
                other_cpu_secs,
            },
            wall_secs,
            iroh_get_from_share,
        })
    }
    .await;

    stop(&mut share, share_pid).await?;
    result
}

/// SIGTERM, then wait; SIGKILL if it does not stop in time.
async fn stop(child: &mut tokio::process::Child, pid: u32) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
        eprintln!("warning: cannot signal classe share ({pid}): {e}");
    }
    match tokio::time::timeout(SHORT_TIMEOUT, child.wait()).await {
        Ok(status) => {
            let status = status?;
            if !status.success() {
                eprintln!("warning: classe share exited with {status}");
            }
        }
        Err(_) => {
            eprintln!("warning: classe share ({pid}) ignored SIGTERM; killing it");
            child.start_kill()?;
            tokio::time::timeout(SHORT_TIMEOUT, child.wait())
                .await
                .context("classe share did not die")??;
        }
    }
    Ok(())
}
