//! Output: JSON lines, a Markdown table and two SVG plots, written by hand
//! (no plotting dependency).

use std::{fmt::Write as _, io::Write as _, path::Path};

use anyhow::{Context, Result};

use crate::{
    metrics,
    run::RunResult,
    units::{fmt_rate, fmt_size},
};

/// Appends one result as a JSON line.
pub fn append_jsonl(path: &Path, r: &RunResult) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(r)?)?;
    Ok(())
}

/// Reads a results file (lines that do not parse are reported).
pub fn read_jsonl(path: &Path) -> Result<Vec<RunResult>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a result", path.display(), i + 1))
        })
        .collect()
}

fn opt_secs(v: f64) -> String {
    if v > 0.0 {
        format!("{v:.1}")
    } else {
        "–".into()
    }
}

/// The parameters every run in `results` shares, in words.
pub fn describe_params(r: &RunResult) -> String {
    let p = &r.params;
    let ups: std::collections::BTreeSet<u64> = p.pupil_up_bps.iter().copied().collect();
    let downs: std::collections::BTreeSet<Option<u64>> = p.pupil_down_bps.iter().copied().collect();
    let list = |v: Vec<String>| v.join(", ");
    let mut s = format!(
        "F = {} in {} file(s); u_s = {}; pupils' u = {}; d = {}; seed download {}",
        fmt_size(p.file_bytes),
        p.files,
        fmt_rate(p.seed_up_bps),
        list(ups.into_iter().map(fmt_rate).collect()),
        list(
            downs
                .into_iter()
                .map(|d| d.map_or("unshaped".to_string(), fmt_rate))
                .collect()
        ),
        p.seed_down_bps.map_or("unshaped".to_string(), fmt_rate),
    );
    match (p.delay_ms, p.delay_emulated) {
        (Some(d), true) => {
            let _ = write!(s, "; one-way delay {d} ms per host (netem)");
        }
        (Some(d), false) => {
            let _ = write!(
                s,
                "; delay {d} ms requested but NOT emulated (no sch_netem)"
            );
        }
        (None, _) => s.push_str("; no delay emulated"),
    }
    if p.stagger_secs > 0.0 {
        let _ = write!(s, "; pupils start {} s apart", p.stagger_secs);
    } else {
        s.push_str("; pupils start together");
    }
    if let Some(c) = p.churn {
        let _ = write!(
            s,
            "; {:.0} % of pupils leave at {} s",
            c.fraction * 100.0,
            c.at_secs
        );
    }
    s
}

/// A Markdown table of `results`, one row per run, with failures below.
pub fn markdown(results: &[RunResult]) -> String {
    let mut s = String::new();
    s.push_str("| scenario | N | done | makespan s | mean s | median s | T_min s | F/u_s | F/d_min | N·F/(u_s+Σu) | N·F/u_s | makespan / T_min | seed bytes / F | pupils bytes / F | CPU machine mean / max % | CPU lab / other % | CPU-bound |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    for r in results {
        let b = &r.bounds;
        let done = if r.churned > 0 {
            format!("{}/{} ({} left)", r.completed, r.params.n, r.churned)
        } else {
            format!("{}/{}", r.completed, r.params.n)
        };
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2}{} | {:.2}{} | {:.0} / {:.0} | {:.0} / {:.0} | {} |",
            r.scenario,
            if r.ok { "" } else { " **FAILED**" },
            r.params.n,
            done,
            opt_secs(r.makespan_secs),
            opt_secs(r.mean_secs),
            opt_secs(r.median_secs),
            b.t_min,
            b.seed_term,
            b.download_term,
            b.swarm_term,
            b.central,
            r.ratio_t_min,
            r.seed_copies,
            if r.seed_sent_source == "interface" {
                " (if)"
            } else {
                ""
            },
            r.pupils_copies,
            if r.pupils_sent_source == "interface" {
                " (if)"
            } else {
                ""
            },
            r.cpu.machine_mean_pct,
            r.cpu.machine_max_pct,
            r.cpu.lab_pct,
            r.cpu.other_pct,
            if r.cpu.cpu_bound { "**yes**" } else { "no" },
        );
    }
    s.push('\n');
    s.push_str(&cpu_table(results));
    let quic = quic_table(results);
    if !quic.is_empty() {
        s.push('\n');
        s.push_str(&quic);
    }
    let summary = summary_table(results);
    if !summary.is_empty() {
        s.push('\n');
        s.push_str(&summary);
    }
    let remarks: Vec<String> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| {
            format!(
                "- {} N = {} failed: {}",
                r.scenario,
                r.params.n,
                r.failures.join("; ")
            )
        })
        .chain(results.iter().flat_map(|r| {
            r.notes
                .iter()
                .map(move |n| format!("- {} N = {}: {n}", r.scenario, r.params.n))
        }))
        .chain(results.iter().filter_map(|r| {
            r.received_excess.map(|x| {
                format!(
                    "- {} N = {}: pupils received {:.1} % more payload than one copy each (bytes fetched twice)",
                    r.scenario,
                    r.params.n,
                    x * 100.0
                )
            })
        }))
        .collect();
    if !remarks.is_empty() {
        s.push('\n');
        s.push_str(&remarks.join("\n"));
        s.push('\n');
    }
    s
}

/// Bytes of lesson delivered: completed pupils × F.
fn delivered_bytes(r: &RunResult) -> f64 {
    r.completed as f64 * r.params.file_bytes as f64
}

/// What each run cost: CPU per delivered GB, per process, wake-ups, memory.
pub fn cpu_table(results: &[RunResult]) -> String {
    let mut s = String::new();
    s.push_str("| scenario | N | network | lab CPU-s | CPU-s per delivered GB: processes / whole machine | seed CPU-s | pupil CPU-s median / max | context switches per delivered MB, voluntary / involuntary | packets per delivered MB, all hosts | bytes per packet | seed interface bytes / F | seed peak RSS MB | pupil peak RSS MB, median |\n");
    s.push_str("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in results {
        let procs: Vec<_> = r.pupils.iter().filter_map(|p| p.proc).collect();
        let pupil_cpu: Vec<f64> = procs.iter().map(|p| p.cpu_secs).collect();
        let pupil_rss: Vec<f64> = procs
            .iter()
            .map(|p| p.peak_rss_kib as f64 / 1024.0)
            .collect();
        let seed = r.cpu.seed_proc.unwrap_or_default();
        let mb = (delivered_bytes(r) / 1e6).max(1e-9);
        let vol: u64 =
            procs.iter().map(|p| p.voluntary_switches).sum::<u64>() + seed.voluntary_switches;
        let invol: u64 =
            procs.iter().map(|p| p.involuntary_switches).sum::<u64>() + seed.involuntary_switches;
        // Every packet crosses a host's interface once on the way out.
        let packets = r.seed_if_packets.0 + r.pupils.iter().map(|p| p.tx_if_packets).sum::<u64>();
        let bytes = r.seed_tx_if_bytes + r.pupils_tx_if_bytes;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.1} / {:.1} | {:.1} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
            r.scenario,
            r.params.n,
            r.params.net.label(),
            r.cpu.lab_cpu_secs,
            r.cpu.cpu_secs_per_gb,
            r.cpu.machine_cpu_secs_per_gb,
            seed.cpu_secs,
            metrics::median(&pupil_cpu),
            pupil_cpu.iter().copied().fold(0.0, f64::max),
            vol as f64 / mb,
            invol as f64 / mb,
            packets as f64 / mb,
            bytes as f64 / (packets.max(1)) as f64,
            r.seed_tx_if_bytes as f64 / r.params.file_bytes.max(1) as f64,
            seed.peak_rss_kib as f64 / 1024.0,
            metrics::median(&pupil_rss),
        );
    }
    s
}

/// classe's QUIC work per delivered MB: what the CPU-seconds bought.
pub fn quic_table(results: &[RunResult]) -> String {
    let mut s = String::new();
    for r in results {
        let Some(q) = r.quic else { continue };
        if s.is_empty() {
            s.push_str("| scenario | N | network | processes | datagrams sent per delivered MB | ACK frames sent per MB | STREAM frames per MB | flow-control updates per MB | PINGs per MB | lost packets per MB | congestion events | max MTU |\n");
            s.push_str("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        }
        let mb = (delivered_bytes(r) / 1e6).max(1e-9);
        let per = |v: u64| v as f64 / mb;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} | {} | {} |",
            r.scenario,
            r.params.n,
            r.params.net.label(),
            q.processes,
            per(q.datagrams_sent),
            per(q.acks_sent),
            per(q.stream_frames_sent),
            per(q.flow_updates_sent),
            per(q.pings_sent),
            per(q.packets_lost),
            q.congestion_events,
            q.max_mtu,
        );
    }
    s
}

/// Medians over repeated runs, per class size and network, with classe's
/// figures as ratios to BitTorrent's when both ran.
pub fn summary_table(results: &[RunResult]) -> String {
    use std::collections::BTreeMap;
    type Key = (usize, String);
    let mut groups: BTreeMap<Key, BTreeMap<String, Vec<&RunResult>>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.ok) {
        groups
            .entry((r.params.n, r.params.net.label()))
            .or_default()
            .entry(r.scenario.clone())
            .or_default()
            .push(r);
    }
    let med = |v: &[&RunResult], f: &dyn Fn(&RunResult) -> f64| {
        metrics::median(&v.iter().map(|r| f(r)).collect::<Vec<_>>())
    };
    let mut s = String::new();
    s.push_str("| N | network | scenario | runs | makespan / T_min, median | CPU-s per delivered GB (processes / machine), median | seed interface bytes / F, median | vs bittorrent: makespan, CPU per GB (processes / machine) |\n");
    s.push_str("| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |\n");
    let mut any = false;
    for ((n, net), by) in &groups {
        let ratio = |r: &RunResult| r.ratio_t_min;
        let cpu = |r: &RunResult| r.cpu.cpu_secs_per_gb;
        let mcpu = |r: &RunResult| r.cpu.machine_cpu_secs_per_gb;
        let seed_if = |r: &RunResult| r.seed_tx_if_bytes as f64 / r.params.file_bytes.max(1) as f64;
        let bt = by.get("bittorrent");
        for (name, runs) in by {
            any = true;
            let vs = match bt {
                Some(bt) if name != "bittorrent" => format!(
                    "{:.2}, {:.2} / {:.2}",
                    med(runs, &ratio) / med(bt, &ratio).max(1e-9),
                    med(runs, &cpu) / med(bt, &cpu).max(1e-9),
                    med(runs, &mcpu) / med(bt, &mcpu).max(1e-9)
                ),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {n} | {net} | {name} | {} | {:.2} | {:.1} / {:.1} | {:.2} | {vs} |",
                runs.len(),
                med(runs, &ratio),
                med(runs, &cpu),
                med(runs, &mcpu),
                med(runs, &seed_if),
            );
        }
    }
    if any {
        s
    } else {
        String::new()
    }
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round axis maximum and tick step for values up to `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

const PALETTE: [&str; 6] = [
    "#8c8c8c", "#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e",
];

fn color_of(names: &[String], name: &str) -> &'static str {
    let i = names.iter().position(|n| n == name).unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

fn scenario_names(results: &[RunResult]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in results {
        if !v.contains(&r.scenario) {
            v.push(r.scenario.clone());
        }
    }
    v
}

/// Each pupil's completion time: one panel per class size, the scenarios
/// side by side in it, each pupil a bar (sorted), with `T_min` and the
/// central bound as lines.
pub fn completion_svg(results: &[RunResult]) -> String {
    let names = scenario_names(results);
    let mut groups: Vec<(usize, u64)> = Vec::new();
    for r in results {
        let key = (r.params.n, r.params.file_bytes);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    let (ph, ml, mr, mt, mb) = (330.0, 58.0, 96.0, 58.0, 46.0);
    let width = (520.0 * groups.len().max(1) as f64).max(780.0);
    let pw = width / groups.len().max(1) as f64;
    let height = ph + 48.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="10" y="20" font-size="15" font-weight="bold">Completion time of each pupil (sorted), per scenario</text>"##
    );
    // Legend: scenarios on one row, the lines on the next.
    let mut lx = 10.0;
    for name in &names {
        let _ = writeln!(
            s,
            r##"<rect x="{lx}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"##,
            height - 40.0,
            color_of(&names, name),
            lx + 16.0,
            height - 30.0,
            esc(name)
        );
        lx += 30.0 + 8.0 * name.len() as f64;
    }
    let lx = 10.0;
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" x2="{}" y1="{y}" y2="{y}" stroke="#2ca02c" stroke-width="2" stroke-dasharray="6,3"/><text x="{}" y="{}">T_min (Kumar–Ross lower bound)</text>"##,
        lx + 24.0,
        lx + 28.0,
        height - 10.0,
        y = height - 14.0
    );
    let lx = lx + 250.0;
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" x2="{}" y1="{y}" y2="{y}" stroke="#d62728" stroke-width="1.5" stroke-dasharray="2,3"/><text x="{}" y="{}">N·F/u_s (central bound)</text><text x="{}" y="{}" fill="#d62728">× not completed</text>"##,
        lx + 24.0,
        lx + 28.0,
        height - 10.0,
        lx + 220.0,
        height - 10.0,
        y = height - 14.0
    );
    for (g, (n, f)) in groups.iter().enumerate() {
        let runs: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.params.n == *n && r.params.file_bytes == *f)
            .collect();
        let x0 = g as f64 * pw;
        let (px, py, w, h) = (x0 + ml, mt, pw - ml - mr, ph - mt - mb + 20.0);
        let ymax_data = runs
            .iter()
            .flat_map(|r| r.pupils.iter().filter_map(|p| p.done_secs))
            .fold(0.0, f64::max);
        let central = runs.iter().map(|r| r.bounds.central).fold(0.0, f64::max);
        let t_min = runs.iter().map(|r| r.bounds.t_min).fold(0.0, f64::max);
        let (ymax, step) = nice_axis(ymax_data.max(central).max(t_min) * 1.05);
        let y_of = |v: f64| py + h - (v / ymax).min(1.0) * h;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-size="13" font-weight="bold">N = {n}, F = {}</text>"##,
            px,
            py - 16.0,
            fmt_size(*f)
        );
        // Axes and grid.
        let mut t = 0.0;
        let mut guard = 0;
        while t <= ymax + 1e-9 && guard < 50 {
            let y = y_of(t);
            let _ = writeln!(
                s,
                r##"<line x1="{px}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                px + w,
                px - 6.0,
                y + 4.0,
                t
            );
            t += step;
            guard += 1;
        }
        let _ = writeln!(
            s,
            r##"<line x1="{px}" x2="{px}" y1="{py}" y2="{}" stroke="black"/><line x1="{px}" x2="{}" y1="{}" y2="{}" stroke="black"/>"##,
            py + h,
            px + w,
            py + h,
            py + h
        );
        let _ = writeln!(
            s,
            r##"<text transform="translate({},{}) rotate(-90)" text-anchor="middle">seconds after start</text>"##,
            x0 + 14.0,
            py + h / 2.0
        );
        // Bars.
        let k = runs.len().max(1) as f64;
        let slot = w / k;
        for (j, r) in runs.iter().enumerate() {
            let sx = px + j as f64 * slot;
            let mut times: Vec<Option<f64>> = r.pupils.iter().map(|p| p.done_secs).collect();
            times.sort_by(|a, b| match (a, b) {
                (Some(a), Some(b)) => a.total_cmp(b),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
            let inner = slot * 0.86;
            let bw = inner / times.len().max(1) as f64;
            let bx0 = sx + slot * 0.07;
            for (i, t) in times.iter().enumerate() {
                let bx = bx0 + i as f64 * bw;
                match t {
                    Some(t) => {
                        let y = y_of(*t);
                        let _ = writeln!(
                            s,
                            r##"<rect x="{bx:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{:.1} s</title></rect>"##,
                            (bw * 0.9).max(0.5),
                            (py + h - y).max(0.0),
                            color_of(&names, &r.scenario),
                            t
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            r##"<text x="{:.1}" y="{:.1}" fill="#d62728" text-anchor="middle">×</text>"##,
                            bx + bw / 2.0,
                            py + 12.0
                        );
                    }
                }
            }
            let label = format!("{} ({:.2}×T_min)", r.scenario, r.ratio_t_min);
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                sx + slot / 2.0,
                py + h + 16.0,
                esc(&label)
            );
        }
        // Reference lines, labelled in the right margin and pushed apart
        // when they are close.
        let (yt, yc) = (y_of(t_min), y_of(central));
        let label_c = yc + 4.0;
        let label_t = (yt + 4.0).max(label_c + 14.0);
        let _ = writeln!(
            s,
            r##"<line x1="{px}" x2="{}" y1="{yt:.1}" y2="{yt:.1}" stroke="#2ca02c" stroke-width="2" stroke-dasharray="6,3"/><text x="{}" y="{label_t:.1}" fill="#2ca02c" font-size="11">T_min {:.1} s</text>"##,
            px + w,
            px + w + 4.0,
            t_min
        );
        let _ = writeln!(
            s,
            r##"<line x1="{px}" x2="{}" y1="{yc:.1}" y2="{yc:.1}" stroke="#d62728" stroke-width="1.5" stroke-dasharray="2,3"/><text x="{}" y="{label_c:.1}" fill="#d62728" font-size="11">N·F/u_s {:.0} s</text>"##,
            px + w,
            px + w + 4.0,
            central
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Bytes sent by the seed and by all pupils, in copies of the lesson, per
/// run.
pub fn bytes_svg(results: &[RunResult]) -> String {
    let names = scenario_names(results);
    let (ml, mr, mt, mb) = (58.0, 14.0, 48.0, 86.0);
    let group_w = 110.0;
    let w = (group_w * results.len().max(1) as f64).max(600.0);
    let group_w = w / results.len().max(1) as f64;
    let h = 260.0;
    let width = ml + w + mr;
    let height = mt + h + mb;
    let ymax_data = results
        .iter()
        .map(|r| r.seed_copies.max(r.pupils_copies))
        .fold(1.0, f64::max);
    let (ymax, step) = nice_axis(ymax_data * 1.1);
    let y_of = |v: f64| mt + h - (v / ymax).min(1.0) * h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="10" y="20" font-size="15" font-weight="bold">Bytes sent, in copies of the lesson (bytes / F)</text>"##
    );
    let mut t = 0.0;
    let mut guard = 0;
    while t <= ymax + 1e-9 && guard < 50 {
        let y = y_of(t);
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            ml + w,
            ml - 6.0,
            y + 4.0,
            t
        );
        t += step;
        guard += 1;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{}" stroke="black"/><line x1="{ml}" x2="{}" y1="{}" y2="{}" stroke="black"/>"##,
        mt + h,
        ml + w,
        mt + h,
        mt + h
    );
    let _ = writeln!(
        s,
        r##"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">copies of F</text>"##,
        mt + h / 2.0
    );
    for (i, r) in results.iter().enumerate() {
        let gx = ml + i as f64 * group_w;
        let bw = 34.0;
        for (k, (v, fill, opacity)) in [
            (r.seed_copies, color_of(&names, &r.scenario), "1"),
            (r.pupils_copies, color_of(&names, &r.scenario), "0.4"),
        ]
        .iter()
        .enumerate()
        {
            let x = gx + group_w / 2.0 - bw - 2.0 + k as f64 * (bw + 4.0);
            let y = y_of(*v);
            let _ = writeln!(
                s,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{bw}" height="{:.1}" fill="{fill}" fill-opacity="{opacity}" stroke="{fill}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{:.2}</text>"##,
                (mt + h - y).max(0.0),
                x + bw / 2.0,
                y - 4.0,
                v
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"##,
                x + bw / 2.0,
                mt + h + 14.0,
                if k == 0 { "seed" } else { "pupils" }
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{} N={}</text>"##,
            gx + group_w / 2.0,
            mt + h + 32.0,
            esc(&r.scenario),
            r.params.n
        );
        let source_note = match (r.seed_sent_source.as_str(), r.pupils_sent_source.as_str()) {
            ("interface", _) => Some("(interface bytes)"),
            (_, "interface") => Some("(pupils: interface bytes)"),
            _ => None,
        };
        if let Some(note) = source_note {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="#555">{note}</text>"##,
                gx + group_w / 2.0,
                mt + h + 46.0
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{ml}" y="{:.1}" font-size="11" fill="#555">Solid: the seed; light: all pupils together. classe: its own payload accounting;</text><text x="{ml}" y="{:.1}" font-size="11" fill="#555">central: interface counters (headers and TCP ACKs included).</text>"##,
        height - 20.0,
        height - 6.0
    );
    s.push_str("</svg>\n");
    s
}

/// Writes `results.md`, `completion.svg` and `bytes.svg` into `dir`.
pub fn write_all(dir: &Path, results: &[RunResult]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut md = String::new();
    if let Some(r) = results.first() {
        let _ = writeln!(
            md,
            "Runs of {} on {} ({} cores, {} GiB, kernel {}).\n\nParameters: {}.\n",
            r.date.get(..10).unwrap_or(&r.date),
            if r.machine.cpu.is_empty() {
                "an unknown CPU"
            } else {
                &r.machine.cpu
            },
            r.machine.cores,
            r.machine.mem_gib,
            r.machine.kernel,
            describe_params(r)
        );
    }
    let mut seen = Vec::new();
    for r in results {
        if let Some(c) = &r.params.classe {
            if !seen.contains(&c) {
                seen.push(c);
                let _ = writeln!(
                    md,
                    "classe binary: {} ({}), built {}, sha256 {}, tree {}.\n",
                    c.path,
                    c.version.as_deref().unwrap_or("version unknown"),
                    c.built.as_deref().unwrap_or("?"),
                    c.sha256.as_deref().map_or("?", |h| &h[..h.len().min(16)]),
                    c.tree.as_deref().unwrap_or("?")
                );
            }
        }
    }
    md.push_str(&markdown(results));
    std::fs::write(dir.join("results.md"), md)?;
    std::fs::write(dir.join("completion.svg"), completion_svg(results))?;
    std::fs::write(dir.join("bytes.svg"), bytes_svg(results))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round() {
        assert_eq!(nice_axis(33.0), (40.0, 10.0));
        assert_eq!(nice_axis(630.0), (800.0, 200.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(nice_axis(7.0), (8.0, 2.0));
    }

    fn sample(scenario: &str, n: usize) -> RunResult {
        use crate::run::{CpuUse, Machine, Params, PupilResult};
        let b = crate::metrics::bounds(
            50_000_000,
            20_000_000,
            &vec![10_000_000; n],
            &vec![Some(100_000_000); n],
        );
        let pupils: Vec<PupilResult> = (1..=n)
            .map(|i| PupilResult {
                index: i,
                done_secs: if i == n { None } else { Some(10.0 * i as f64) },
                completed: i != n,
                ..PupilResult::default()
            })
            .collect();
        RunResult {
            schema: crate::run::SCHEMA.into(),
            date: "2026-11-30T10:00:00Z".into(),
            scenario: scenario.into(),
            ok: false,
            failures: vec!["pupil 3: <timed out>".into()],
            machine: Machine::default(),
            params: Params {
                n,
                file_bytes: 50_000_000,
                files: 1,
                seed_up_bps: 20_000_000,
                seed_down_bps: None,
                pupil_up_bps: vec![10_000_000; n],
                pupil_down_bps: vec![Some(100_000_000); n],
                delay_ms: Some(20.0),
                delay_emulated: false,
                stagger_secs: 0.0,
                churn: None,
                timeout_secs: 100.0,
                extend_ticket: true,
                classe: None,
                net: crate::net::NetOptions::default(),
                seed_nice: 0,
            },
            bounds: b,
            completed: n - 1,
            churned: 0,
            makespan_secs: 10.0 * (n - 1) as f64,
            mean_secs: 5.0,
            median_secs: 5.0,
            ratio_t_min: 1.5,
            seed_ready_secs: 0.1,
            seed_sent_bytes: 50_000_000,
            seed_sent_source: "interface".into(),
            seed_copies: 1.0,
            seed_tx_if_bytes: 50_000_000,
            seed_if_packets: (0, 0),
            pupils_sent_bytes: 0,
            pupils_sent_source: "interface".into(),
            received_excess: Some(0.05),
            notes: vec!["pupil 2 did not exit".into()],
            pupils_copies: 0.0,
            pupils_tx_if_bytes: 0,
            cpu: CpuUse::default(),
            quic: None,
            wall_secs: 1.0,
            pupils,
        }
    }

    #[test]
    fn the_table_has_as_many_cells_as_columns() {
        let rs = vec![sample("central", 3), sample("classe", 3)];
        let md = markdown(&rs);
        // Tables are separated by blank lines: the runs, then their cost.
        let tables: Vec<Vec<&str>> = md
            .split("\n\n")
            .map(|t| t.lines().filter(|l| l.starts_with('|')).collect::<Vec<_>>())
            .filter(|t| !t.is_empty())
            .collect();
        assert_eq!(tables.len(), 2, "{md}");
        let cells = |l: &str| l.matches('|').count();
        for t in &tables {
            assert_eq!(t.len(), 4, "{md}");
            assert!(t.iter().all(|r| cells(r) == cells(t[0])), "{md}");
        }
        assert!(md.contains("**FAILED**") && md.contains("timed out"));
        assert!(describe_params(&rs[0]).contains("NOT emulated"));
    }

    #[test]
    fn the_summary_compares_with_bittorrent_in_the_same_runs() {
        let mut bt = sample("bittorrent", 3);
        let mut cl = sample("classe", 3);
        for (r, ratio, cpu) in [(&mut bt, 1.5, 20.0), (&mut cl, 1.2, 60.0)] {
            r.ok = true;
            r.ratio_t_min = ratio;
            r.cpu.cpu_secs_per_gb = cpu;
            r.cpu.machine_cpu_secs_per_gb = cpu * 2.0;
        }
        let s = summary_table(&[bt, cl]);
        let classe_row = s.lines().find(|l| l.contains("| classe |")).unwrap();
        // 1.2 / 1.5 and 60 / 20, 120 / 40.
        assert!(classe_row.ends_with("| 0.80, 3.00 / 3.00 |"), "{s}");
        // A failed run is left out of the medians.
        assert!(summary_table(&[sample("classe", 3)]).is_empty());
    }

    #[test]
    fn plots_are_svg_with_every_run() {
        let rs = vec![
            sample("central", 3),
            sample("classe", 3),
            sample("classe", 5),
        ];
        for svg in [completion_svg(&rs), bytes_svg(&rs)] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("classe"));
            assert_eq!(svg.matches("<svg").count(), 1);
        }
        // One panel per class size; failed pupils drawn as crosses.
        let c = completion_svg(&rs);
        assert!(c.contains("N = 3") && c.contains("N = 5"));
        assert!(c.contains("×</text>"));
    }

    #[test]
    fn svg_text_is_escaped() {
        assert_eq!(esc("a<b&\"c\">"), "a&lt;b&amp;&quot;c&quot;&gt;");
    }
}
