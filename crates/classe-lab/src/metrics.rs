//! The yardsticks: the Kumar–Ross lower bound, the central server's time,
//! and summary statistics of completion times.

use serde::{Deserialize, Serialize};

/// Lower bounds for distributing `F` bytes from one seed to `N` pupils, in
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// `F / u_s`: the seed must send at least one copy.
    pub seed_term: f64,
    /// `F / d_min`: the slowest downlink must receive a copy (0 when no
    /// downlink is shaped).
    pub download_term: f64,
    /// `N·F / (u_s + Σ u_i)`: all copies must cross some uplink.
    pub swarm_term: f64,
    /// `T_min`, the largest of the three.
    pub t_min: f64,
    /// `N·F / u_s`: a central server sending every copy itself.
    pub central: f64,
}

/// Computes the bounds. Rates in bits per second; `None` downlinks are
/// unshaped (infinite).
pub fn bounds(
    file_bytes: u64,
    seed_up: u64,
    pupil_up: &[u64],
    pupil_down: &[Option<u64>],
) -> Bounds {
    let f_bits = file_bytes as f64 * 8.0;
    let n = pupil_up.len() as f64;
    let seed_term = f_bits / seed_up as f64;
    let d_min = pupil_down.iter().flatten().copied().min();
    let download_term = d_min.map_or(0.0, |d| f_bits / d as f64);
    let sum_up: f64 = seed_up as f64 + pupil_up.iter().map(|&u| u as f64).sum::<f64>();
    let swarm_term = n * f_bits / sum_up;
    Bounds {
        seed_term,
        download_term,
        swarm_term,
        t_min: seed_term.max(download_term).max(swarm_term),
        central: n * seed_term,
    }
}

/// Mean of `v` (0 when empty).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Which of `n` items belong to an evenly spread subset of `fraction`
/// of them (rounded to the nearest count): item `i` is in when
/// `floor((i+1)·k/n) > floor(i·k/n)` with `k` the count.
pub fn spread_subset(n: usize, fraction: f64) -> Vec<bool> {
    let k = ((fraction.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
    (0..n).map(|i| (i + 1) * k / n > i * k / n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_defaults_give_the_expected_bounds() {
        // F = 50 MB, u_s = 20 Mbit/s, u = 10 Mbit/s, d = 100 Mbit/s.
        let b = bounds(
            50_000_000,
            20_000_000,
            &[10_000_000; 10],
            &[Some(100_000_000); 10],
        );
        assert!((b.seed_term - 20.0).abs() < 1e-9);
        assert!((b.download_term - 4.0).abs() < 1e-9);
        assert!((b.swarm_term - 400.0 / 12.0).abs() < 1e-9);
        assert!((b.t_min - b.swarm_term).abs() < 1e-12);
        assert!((b.central - 200.0).abs() < 1e-9);
        let b = bounds(
            50_000_000,
            20_000_000,
            &[10_000_000; 30],
            &[Some(100_000_000); 30],
        );
        assert!((b.t_min - 37.5).abs() < 1e-9);
        assert!((b.central - 600.0).abs() < 1e-9);
    }

    #[test]
    fn the_slowest_downlink_and_a_slow_seed_can_dominate() {
        let b = bounds(
            1_000_000,
            1_000_000,
            &[100_000_000; 2],
            &[Some(1_000_000), None],
        );
        assert!((b.seed_term - 8.0).abs() < 1e-9);
        assert!((b.t_min - 8.0).abs() < 1e-9);
        let b = bounds(
            1_000_000,
            100_000_000,
            &[100_000_000; 2],
            &[Some(1_000_000), None],
        );
        assert!((b.t_min - 8.0).abs() < 1e-9);
        assert!((b.download_term - 8.0).abs() < 1e-9);
        let b = bounds(1_000_000, 100_000_000, &[100_000_000; 2], &[None, None]);
        assert_eq!(b.download_term, 0.0);
    }

    #[test]
    fn statistics() {
        assert_eq!(mean(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(mean(&[1.0, 2.0, 3.0]), 2.0);
    }

    #[test]
    fn spread_subsets_have_the_right_size() {
        assert_eq!(spread_subset(10, 0.0).iter().filter(|b| **b).count(), 0);
        assert_eq!(spread_subset(10, 0.3).iter().filter(|b| **b).count(), 3);
        assert_eq!(spread_subset(30, 0.2).iter().filter(|b| **b).count(), 6);
        assert_eq!(spread_subset(3, 1.0), vec![true; 3]);
        // Spread, not bunched at one end.
        let s = spread_subset(10, 0.5);
        assert_eq!(s.iter().filter(|b| **b).count(), 5);
        assert!(s[..5].iter().any(|b| *b) && s[5..].iter().any(|b| *b));
    }
}
