//! The peer's idle timeout: how long connections had sat idle (no send or receive by the
//! application) when the peer closed them. Keep-alive servers and load balancers close idle
//! connections at a fixed age; a pool that keeps them longer reuses closed connections.

use std::collections::VecDeque;

/// Samples kept for the median: the most recent ones, so that it follows a server whose
/// timeout changed.
const RECENT: usize = 256;

/// Idle times of connections the peer closed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdleCloses {
    pub samples: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    recent: VecDeque<u64>,
}

impl IdleCloses {
    pub fn observe(&mut self, idle_ns: u64) {
        if self.samples == 0 || idle_ns < self.min_ns {
            self.min_ns = idle_ns;
        }
        self.max_ns = self.max_ns.max(idle_ns);
        self.samples += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(idle_ns);
    }

    /// The median of the most recent samples (the lower middle of an even count); None
    /// without samples.
    pub fn p50_ns(&self) -> Option<u64> {
        let mut v: Vec<u64> = self.recent.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(v[(v.len() - 1) / 2])
    }

    pub fn merge(&mut self, other: &IdleCloses) {
        for &ns in &other.recent {
            self.observe(ns);
        }
        // Samples older than `other`'s recent ones still count, and so do its extremes.
        let older = other.samples - other.recent.len() as u64;
        self.samples += older;
        if other.samples > 0 {
            self.min_ns = self.min_ns.min(other.min_ns);
            self.max_ns = self.max_ns.max(other.max_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_median_max() {
        let mut c = IdleCloses::default();
        assert_eq!(c.p50_ns(), None);
        for s in [5, 1, 3, 2, 4] {
            c.observe(s * 1_000_000_000);
        }
        assert_eq!((c.samples, c.min_ns, c.max_ns), (5, 1_000_000_000, 5_000_000_000));
        assert_eq!(c.p50_ns(), Some(3_000_000_000));
        c.observe(6_000_000_000);
        assert_eq!(c.p50_ns(), Some(3_000_000_000), "lower middle of six");
    }

    #[test]
    fn the_median_follows_recent_samples() {
        let mut c = IdleCloses::default();
        for _ in 0..RECENT {
            c.observe(60);
        }
        for _ in 0..RECENT {
            c.observe(5);
        }
        assert_eq!(c.p50_ns(), Some(5));
        assert_eq!((c.samples, c.min_ns, c.max_ns), (2 * RECENT as u64, 5, 60));
    }

    #[test]
    fn merging_keeps_counts_and_extremes() {
        let mut a = IdleCloses::default();
        a.observe(10);
        let mut b = IdleCloses::default();
        for v in 0..(RECENT as u64 + 10) {
            b.observe(100 + v);
        }
        a.merge(&b);
        assert_eq!(a.samples, RECENT as u64 + 11);
        assert_eq!((a.min_ns, a.max_ns), (10, 100 + RECENT as u64 + 9));
    }
}
