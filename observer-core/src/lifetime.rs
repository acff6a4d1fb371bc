//! Connection lifetimes: exact count, sum, min and max, plus buckets for the Prometheus
//! histogram.

/// Upper bounds of a [`Durations`] histogram's buckets, in seconds.
pub trait Bounds {
    const SECONDS: &'static [f64];
}

/// Connection lifetimes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LifetimeBounds;

impl Bounds for LifetimeBounds {
    const SECONDS: &'static [f64] =
        &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
}

/// TLS handshakes: 0.5 ms to 10 s.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HandshakeBounds;

impl Bounds for HandshakeBounds {
    const SECONDS: &'static [f64] =
        &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
}

/// Most buckets a [`Bounds`] may have.
const MAX_BUCKETS: usize = 16;

pub type Lifetimes = Durations<LifetimeBounds>;

/// Durations: exact count, sum, min and max, plus non-cumulative counts per bucket of `B`
/// (values above the last bound are only in `count`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Durations<B> {
    pub count: u64,
    pub sum_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    buckets: [u64; MAX_BUCKETS],
    bounds: std::marker::PhantomData<B>,
}

impl<B: Bounds> Durations<B> {
    pub fn observe_ns(&mut self, ns: u64) {
        if self.count == 0 || ns < self.min_ns {
            self.min_ns = ns;
        }
        self.max_ns = self.max_ns.max(ns);
        self.count += 1;
        self.sum_ns += ns;
        let secs = ns as f64 / 1e9;
        if let Some(i) = B::SECONDS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
    }

    pub fn merge(&mut self, other: &Self) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 || other.min_ns < self.min_ns {
            self.min_ns = other.min_ns;
        }
        self.max_ns = self.max_ns.max(other.max_ns);
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
    }

    /// (upper bound in seconds, count in that bucket) for each bucket.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        B::SECONDS.iter().copied().zip(self.buckets.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observes_exact_extremes_and_cumulative_buckets() {
        let mut l = Lifetimes::default();
        l.observe_ns(2_000_000); // 2 ms
        l.observe_ns(700_000_000); // 0.7 s
        l.observe_ns(7_200_000_000_000); // 2 h: above every bucket
        assert_eq!(l.count, 3);
        assert_eq!(l.min_ns, 2_000_000);
        assert_eq!(l.max_ns, 7_200_000_000_000);
        let b: Vec<(f64, u64)> = l.buckets().collect();
        assert_eq!(b[0], (0.001, 0));
        assert_eq!(b[1], (0.005, 1));
        assert_eq!(b[6], (1.0, 1));
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 2, "the 2 h one is above every bucket");
        let mut m = Lifetimes::default();
        m.merge(&l);
        m.merge(&l);
        assert_eq!((m.count, m.min_ns, m.max_ns), (6, 2_000_000, 7_200_000_000_000));
        assert_eq!(m.buckets().map(|(_, n)| n).sum::<u64>(), 4);
    }
}
