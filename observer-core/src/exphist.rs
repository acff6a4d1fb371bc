//! Requests per connection: an exponential histogram whose buckets are those of a Prometheus
//! native histogram of schema 0 (bucket i holds values in (2^(i-1), 2^i]), so the same counts
//! give the native sparse encoding, the classic `le` buckets and the API's buckets.

/// Buckets 0..=32 cover values up to 2^32.
const BUCKETS: usize = 33;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpHistogram {
    /// Observations of 0 (a connection that carried no request).
    pub zero: u64,
    buckets: [u64; BUCKETS],
    pub count: u64,
    pub sum: u64,
    pub max: u64,
}

impl Default for ExpHistogram {
    fn default() -> Self {
        ExpHistogram { zero: 0, buckets: [0; BUCKETS], count: 0, sum: 0, max: 0 }
    }
}

/// Index of the bucket for `v >= 1`: the smallest i with v <= 2^i.
fn index(v: u64) -> usize {
    let i = (64 - (v - 1).leading_zeros()) as usize;
    i.min(BUCKETS - 1)
}

/// Upper bound of bucket `i`.
pub fn upper_bound(i: usize) -> u64 {
    1u64 << i
}

impl ExpHistogram {
    pub fn observe(&mut self, v: u64) {
        self.count += 1;
        self.sum += v;
        self.max = self.max.max(v);
        if v == 0 {
            self.zero += 1;
        } else {
            self.buckets[index(v)] += 1;
        }
    }

    pub fn merge(&mut self, other: &ExpHistogram) {
        self.zero += other.zero;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// Non-empty buckets as (upper bound, count), the zero bucket (upper bound 0) first.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let zero = (self.zero > 0).then_some((0, self.zero));
        zero.into_iter()
            .chain(self.buckets.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| (upper_bound(i), *n)))
    }

    /// Classic buckets up to the highest non-empty one: (upper bound, count in that bucket),
    /// the zero bucket folded into the first (le="1"). The caller adds +Inf.
    pub fn classic(&self) -> Vec<(f64, u64)> {
        let last = self.buckets.iter().rposition(|n| *n > 0).unwrap_or(0);
        (0..=last).map(|i| (upper_bound(i) as f64, self.buckets[i] + if i == 0 { self.zero } else { 0 })).collect()
    }

    /// Native histogram positive buckets: spans (offset, length) over runs of non-empty buckets
    /// and the deltas between consecutive bucket counts (the first is absolute).
    ///
    /// With schema 0 the native bucket index of (2^(i-1), 2^i] is i.
    pub fn native_spans(&self) -> (Vec<(i32, u32)>, Vec<i64>) {
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::new();
        let mut prev_count = 0i64;
        let mut next_index: Option<i32> = None;
        for (i, n) in self.buckets.iter().enumerate().filter(|(_, n)| **n > 0) {
            let i = i as i32;
            match (next_index, spans.last_mut()) {
                (Some(expected), Some(last)) if expected == i => last.1 += 1,
                (Some(expected), _) => spans.push((i - expected, 1)),
                (None, _) => spans.push((i, 1)),
            }
            next_index = Some(i + 1);
            deltas.push(*n as i64 - prev_count);
            prev_count = *n as i64;
        }
        (spans, deltas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(index(1), 0);
        assert_eq!(index(2), 1);
        assert_eq!(index(3), 2);
        assert_eq!(index(4), 2);
        assert_eq!(index(5), 3);
        assert_eq!(index(100), 7);
        assert_eq!(index(128), 7);
        assert_eq!(index(129), 8);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn one_hundred_single_request_connections() {
        let mut h = ExpHistogram::default();
        for _ in 0..100 {
            h.observe(1);
        }
        assert_eq!(h.buckets().collect::<Vec<_>>(), vec![(1, 100)]);
        assert_eq!(h.classic(), vec![(1.0, 100)]);
        assert_eq!(h.native_spans(), (vec![(0, 1)], vec![100]));
        assert_eq!((h.count, h.sum, h.max), (100, 100, 1));
    }

    #[test]
    fn native_spans_skip_empty_buckets_and_delta_encode() {
        let mut h = ExpHistogram::default();
        for v in [1, 1, 2, 100, 100, 100, 0] {
            h.observe(v);
        }
        // buckets: 0 -> 2 (v=1), 1 -> 1 (v=2), 7 -> 3 (v=100)
        let (spans, deltas) = h.native_spans();
        assert_eq!(spans, vec![(0, 2), (5, 1)]);
        assert_eq!(deltas, vec![2, -1, 2]);
        assert_eq!(h.zero, 1);
        assert_eq!(h.buckets().collect::<Vec<_>>(), vec![(0, 1), (1, 2), (2, 1), (128, 3)]);
        let classic = h.classic();
        assert_eq!(classic.len(), 8);
        assert_eq!(classic[0], (1.0, 3), "zero folded into le=1");
        assert_eq!(classic[7], (128.0, 3));
        assert_eq!(classic.iter().map(|(_, n)| n).sum::<u64>(), 7);
        let mut m = ExpHistogram::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!((m.count, m.sum, m.max, m.zero), (14, 608, 100, 2));
        assert_eq!(m.native_spans(), (vec![(0, 2), (5, 1)], vec![4, -2, 4]));
    }
}
