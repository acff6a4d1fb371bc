//! The statistics of the rounds: medians, paired ratios, spreads.

use std::collections::HashMap;

use super::cost::Cost;
use super::{Setup, Workload};

/// Everything measured for one workload.
pub(super) struct WorkloadResult {
    pub workload: Workload,
    pub rounds: usize,
    /// Requests per second per setup, one per round.
    pub rps: HashMap<Setup, Vec<f64>>,
    /// Observer's cost, from a round with kernel.bpf_stats_enabled.
    pub cost: Cost,
    /// The same with `--no-tls`, when that setup was measured.
    pub cost_no_tls: Option<Cost>,
    /// Events the daemon lost over its rounds.
    pub events_lost: u64,
}

impl WorkloadResult {
    /// Median over rounds of the setup's throughput divided by the no-tracer throughput of the
    /// same round.
    pub fn ratio(&self, setup: Setup) -> Option<f64> {
        let pairs = self.pairs(setup)?;
        (!pairs.is_empty()).then(|| median(&pairs))
    }

    /// The lowest and highest of the paired per-round ratios: how far one round can be off.
    pub fn ratio_range(&self, setup: Setup) -> Option<(f64, f64)> {
        let pairs = self.pairs(setup)?;
        (!pairs.is_empty()).then(|| pairs.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x))))
    }

    /// The median throughput of `setup` over its rounds.
    pub fn median_rps(&self, setup: Setup) -> f64 {
        self.rps.get(&setup).map_or(0.0, |v| median(v))
    }

    fn pairs(&self, setup: Setup) -> Option<Vec<f64>> {
        let base = self.rps.get(&Setup::None)?;
        let runs = self.rps.get(&setup)?;
        Some(runs.iter().zip(base).map(|(r, b)| r / b).collect())
    }

    /// Round-to-round spread of the no-tracer throughput, in percent of its median.
    pub fn spread(&self) -> f64 {
        let base = &self.rps[&Setup::None];
        let (lo, hi) = base.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        100.0 * (hi - lo) / median(base)
    }
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// The `p`th percentile of `sorted` (nearest rank).
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
    }
}
