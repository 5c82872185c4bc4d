//! A plan: which scenarios at which class sizes, with which rates, and the
//! presets (the default measurement and the CI smoke test).

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};

use crate::{
    contender::Pinned,
    lesson::Lesson,
    metrics,
    net::{Probe, MAX_PUPILS},
    run::{self, Churn, RunConfig, RunResult},
    scenario::Scenario,
};

/// Pupil rates: uniform, a per-pupil list, or a fraction of slow pupils.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    /// Upload of an ordinary pupil, bits/s.
    pub pupil_up: u64,
    /// Download of an ordinary pupil (`None`: unshaped).
    pub pupil_down: Option<u64>,
    /// If not empty, pupil i's upload is `up_list[i % len]` (overrides the
    /// rest for uploads).
    pub up_list: Vec<u64>,
    /// If not empty, pupil i's download is `down_list[i % len]`.
    pub down_list: Vec<Option<u64>>,
    /// Fraction of slow pupils, spread evenly over the class.
    pub slow_fraction: f64,
    /// Upload of a slow pupil.
    pub slow_up: u64,
    /// Download of a slow pupil.
    pub slow_down: Option<u64>,
}

impl Rates {
    /// Each pupil's (upload, download).
    pub fn per_pupil(&self, n: usize) -> (Vec<u64>, Vec<Option<u64>>) {
        let slow = metrics::spread_subset(n, self.slow_fraction);
        let up = (0..n)
            .map(|i| {
                if !self.up_list.is_empty() {
                    self.up_list[i % self.up_list.len()]
                } else if slow[i] {
                    self.slow_up
                } else {
                    self.pupil_up
                }
            })
            .collect();
        let down = (0..n)
            .map(|i| {
                if !self.down_list.is_empty() {
                    self.down_list[i % self.down_list.len()]
                } else if slow[i] && self.up_list.is_empty() {
                    self.slow_down
                } else {
                    self.pupil_down
                }
            })
            .collect();
        (up, down)
    }
}

/// Everything `classe-lab run` does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Contenders, in order.
    pub scenarios: Vec<Scenario>,
    /// Class sizes, in order.
    pub pupils: Vec<usize>,
    /// Lesson size F, bytes.
    pub file_bytes: u64,
    /// Files the lesson is split into.
    pub files: usize,
    /// Seed for the lesson's bytes.
    pub data_seed: u64,
    /// Seed upload u_s, bits/s.
    pub seed_up: u64,
    /// Seed download (`None`: unshaped).
    pub seed_down: Option<u64>,
    /// Pupil rates.
    pub rates: Rates,
    /// One-way delay at each host, where netem exists.
    pub delay_ms: Option<f64>,
    /// Seconds between pupil starts.
    pub stagger_secs: f64,
    /// Early leavers.
    pub churn: Option<Churn>,
    /// A run is cut at `timeout_factor × max(N·F/u_s, T_min)` plus the
    /// stagger and 30 s, within `[min_timeout, max_timeout]`.
    pub timeout_factor: f64,
    /// Shortest run limit.
    pub min_timeout: Duration,
    /// Longest run limit.
    pub max_timeout: Duration,
    /// The classe binary.
    pub classe_bin: Option<PathBuf>,
    /// Where temporary folders go.
    pub work_root: PathBuf,
    /// Keep each run's folder.
    pub keep: bool,
    /// Details of the emulated network.
    pub net: crate::net::NetOptions,
    /// Runs of each scenario at each class size. Scenarios take turns
    /// (A B A B ...), so a slow spell of the machine hits every contender.
    pub repeat: usize,
    /// Niceness of the seed's processes (see [`RunConfig::seed_nice`]).
    pub seed_nice: i32,
}

impl Plan {
    /// The measurement: N = 10 and 30, F = 50 MB, u_s = 20 Mbit/s,
    /// u = 10 Mbit/s, d = 100 Mbit/s, central and classe.
    pub fn defaults(scenarios: Vec<Scenario>) -> Self {
        Plan {
            scenarios,
            pupils: vec![10, 30],
            file_bytes: 50_000_000,
            files: 1,
            data_seed: 20_200_316,
            seed_up: 20_000_000,
            seed_down: None,
            rates: Rates {
                pupil_up: 10_000_000,
                pupil_down: Some(100_000_000),
                up_list: Vec::new(),
                down_list: Vec::new(),
                slow_fraction: 0.0,
                slow_up: 1_000_000,
                slow_down: Some(10_000_000),
            },
            delay_ms: None,
            stagger_secs: 0.0,
            churn: None,
            timeout_factor: 3.0,
            min_timeout: Duration::from_secs(60),
            max_timeout: Duration::from_secs(3600),
            classe_bin: None,
            work_root: std::env::temp_dir(),
            keep: false,
            net: crate::net::NetOptions::default(),
            repeat: 1,
            seed_nice: 0,
        }
    }

    /// The CI smoke configuration: N = 3, F = 5 MB, default rates.
    pub fn smoke(scenarios: Vec<Scenario>) -> Self {
        Plan {
            pupils: vec![3],
            file_bytes: 5_000_000,
            min_timeout: Duration::from_secs(40),
            max_timeout: Duration::from_secs(40),
            ..Plan::defaults(scenarios)
        }
    }

    /// Checks the limits that keep a typo from running for hours.
    pub fn validate(&self) -> Result<()> {
        if self.scenarios.is_empty() || self.pupils.is_empty() {
            bail!("nothing to run: no scenario or no class size");
        }
        if let Some(&n) = self.pupils.iter().find(|&&n| n == 0 || n > MAX_PUPILS) {
            bail!("class size {n} is outside 1..={MAX_PUPILS}");
        }
        if self.file_bytes > 10_000_000_000 {
            bail!("a lesson of more than 10 GB is not a lesson");
        }
        if !(0.0..=3600.0).contains(&self.stagger_secs) {
            bail!("--stagger must be within 0..=3600 s");
        }
        if let Some(c) = self.churn {
            if !(0.0..=1.0).contains(&c.fraction) || c.at_secs < 0.0 {
                bail!("churn needs a fraction in 0..=1 and a time ≥ 0");
            }
        }
        if !(1..=20).contains(&self.repeat) {
            bail!("--repeat must be within 1..=20");
        }
        if self.timeout_factor <= 0.0 || self.max_timeout > Duration::from_secs(4 * 3600) {
            bail!("the run limit must be positive and at most 4 h");
        }
        Ok(())
    }

    /// The configuration of one run.
    pub fn run_config(&self, scenario: &Scenario, n: usize) -> RunConfig {
        let (pupil_up, pupil_down) = self.rates.per_pupil(n);
        let b = metrics::bounds(self.file_bytes, self.seed_up, &pupil_up, &pupil_down);
        let secs = self.timeout_factor * b.central.max(b.t_min)
            + self.stagger_secs * (n.saturating_sub(1)) as f64
            + 30.0;
        let timeout = Duration::from_secs_f64(secs).clamp(self.min_timeout, self.max_timeout);
        RunConfig {
            scenario: scenario.clone(),
            seed_up: self.seed_up,
            seed_down: self.seed_down,
            pupil_up,
            pupil_down,
            delay_ms: self.delay_ms,
            stagger_secs: self.stagger_secs,
            churn: self.churn,
            timeout,
            classe_bin: self.classe_bin.clone(),
            classe_info: None,
            work_root: self.work_root.clone(),
            keep: self.keep,
            net: self.net.clone(),
            seed_nice: self.seed_nice,
        }
    }

    /// Runs every class size with every scenario, in that order, on one
    /// lesson. `each` sees every result as it comes (to append it to a
    /// file). A run that cannot start is recorded as an error and the
    /// others go on.
    pub async fn run(
        &self,
        probe: &Probe,
        mut each: impl FnMut(&RunResult),
    ) -> Result<(Vec<RunResult>, Vec<String>)> {
        self.validate()?;
        let lesson = Lesson::create(&self.work_root, self.file_bytes, self.files, self.data_seed)?;
        // One private copy of the binary for every run of the plan.
        let pinned = match &self.classe_bin {
            Some(bin) if self.scenarios.iter().any(run::uses_classe) && bin.is_file() => {
                Some(Pinned::take(bin, &self.work_root)?)
            }
            _ => None,
        };
        let mut results = Vec::new();
        let mut errors = Vec::new();
        let turns = self.pupils.iter().flat_map(|&n| {
            (0..self.repeat).flat_map(move |_| self.scenarios.iter().map(move |s| (n, s)))
        });
        for (n, s) in turns {
            {
                let mut cfg = self.run_config(s, n);
                if let Some(p) = &pinned {
                    cfg.classe_bin = Some(p.path().to_path_buf());
                    cfg.classe_info = Some(p.info.clone());
                }
                eprintln!(
                    "classe-lab: {} with N = {n}, F = {} (limit {:.0} s)...",
                    s.name,
                    crate::units::fmt_size(self.file_bytes),
                    cfg.timeout.as_secs_f64()
                );
                match run::run_scenario(&cfg, &lesson, probe).await {
                    Ok(r) => {
                        eprintln!(
                            "classe-lab: {} N = {n}: {}/{} completed, makespan {:.1} s (T_min {:.1} s, ratio {:.2}), seed sent {:.2} copies{}",
                            s.name,
                            r.completed,
                            n,
                            r.makespan_secs,
                            r.bounds.t_min,
                            r.ratio_t_min,
                            r.seed_copies,
                            if r.ok { String::new() } else { format!(" — FAILED: {}", r.failures.join("; ")) }
                        );
                        each(&r);
                        results.push(r);
                    }
                    Err(e) => {
                        let msg = format!("{} N = {n}: could not run: {e:#}", s.name);
                        eprintln!("classe-lab: {msg}");
                        errors.push(msg);
                    }
                }
            }
        }
        Ok((results, errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario;

    #[test]
    fn slow_pupils_and_lists() {
        let mut r = Plan::defaults(vec![]).rates;
        let (up, down) = r.per_pupil(4);
        assert_eq!(up, vec![10_000_000; 4]);
        assert_eq!(down, vec![Some(100_000_000); 4]);
        r.slow_fraction = 0.5;
        let (up, down) = r.per_pupil(4);
        assert_eq!(up.iter().filter(|&&u| u == 1_000_000).count(), 2);
        assert_eq!(down.iter().filter(|&&d| d == Some(10_000_000)).count(), 2);
        r.up_list = vec![1, 2];
        let (up, _) = r.per_pupil(3);
        assert_eq!(up, vec![1, 2, 1]);
    }

    #[test]
    fn run_limits_follow_the_central_bound() {
        let p = Plan::defaults(vec![scenario::central()]);
        let c = p.run_config(&p.scenarios[0], 30);
        // 3 × 600 s + 30 s.
        assert_eq!(c.timeout, Duration::from_secs(1830));
        let s = Plan::smoke(vec![scenario::central()]);
        assert_eq!(
            s.run_config(&s.scenarios[0], 3).timeout,
            Duration::from_secs(40)
        );
        assert!(s.validate().is_ok());
    }
}
