//! Failed connects in time, grouped into bursts: one call and its retries fail within moments
//! (urllib3's `Retry(total=3)` makes four refused connects within a second, then "Max retries
//! exceeded"), and bursts tell how many calls failed and how hard each one tried.

use std::collections::VecDeque;

use crate::model::FailureReason;

/// Failures kept per peer, the most recent ones.
const KEPT: usize = 256;

/// The recent failed connects of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailureLog {
    recent: VecDeque<(u64, FailureReason)>,
}

/// Bursts of the failures within a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bursts {
    pub failures: u64,
    pub bursts: u64,
    /// Failures in the most recent burst.
    pub last_burst_attempts: u64,
    /// When the most recent burst began and when its last failure was.
    pub last_burst_start_ns: u64,
    pub last_failure_ns: u64,
}

impl Bursts {
    pub fn attempts_per_burst(&self) -> f64 {
        if self.bursts == 0 { 0.0 } else { self.failures as f64 / self.bursts as f64 }
    }
}

impl FailureLog {
    pub fn add(&mut self, ts_ns: u64, reason: FailureReason) {
        if self.recent.len() == KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back((ts_ns, reason));
    }

    /// The failures since `since_ns` with their reasons, grouped into bursts: failures less
    /// than `gap_ns` apart are one burst.
    pub fn bursts(&self, since_ns: u64, gap_ns: u64) -> (Bursts, Vec<FailureReason>) {
        let mut b = Bursts::default();
        let mut reasons = Vec::new();
        let mut prev: Option<u64> = None;
        for &(ts, reason) in self.recent.iter().filter(|(ts, _)| *ts >= since_ns) {
            reasons.push(reason);
            b.failures += 1;
            if prev.is_none_or(|p| ts.saturating_sub(p) >= gap_ns) {
                b.bursts += 1;
                b.last_burst_attempts = 0;
                b.last_burst_start_ns = ts;
            }
            b.last_burst_attempts += 1;
            b.last_failure_ns = ts;
            prev = Some(ts);
        }
        (b, reasons)
    }

    pub fn merge(&mut self, other: &FailureLog) {
        for &(ts, r) in &other.recent {
            self.add(ts, r);
        }
        self.recent.make_contiguous().sort_by_key(|(ts, _)| *ts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn retries_of_one_call_are_one_burst() {
        let mut log = FailureLog::default();
        for t in [0, S / 10, 2 * S / 10, 3 * S / 10] {
            log.add(100 * S + t, FailureReason::Refused);
        }
        for t in [0, S / 10, 2 * S / 10, 3 * S / 10] {
            log.add(105 * S + t, FailureReason::Refused);
        }
        let (b, reasons) = log.bursts(0, 2 * S);
        assert_eq!((b.failures, b.bursts, b.last_burst_attempts), (8, 2, 4));
        assert_eq!(b.attempts_per_burst(), 4.0);
        assert_eq!(b.last_burst_start_ns, 105 * S);
        assert_eq!(b.last_failure_ns, 105 * S + 3 * S / 10);
        assert_eq!(reasons.len(), 8);
    }

    #[test]
    fn only_failures_in_the_window_count() {
        let mut log = FailureLog::default();
        log.add(10 * S, FailureReason::Timeout);
        log.add(50 * S, FailureReason::Refused);
        let (b, reasons) = log.bursts(20 * S, 2 * S);
        assert_eq!((b.failures, b.bursts), (1, 1));
        assert_eq!(reasons, vec![FailureReason::Refused]);
        assert_eq!(log.bursts(60 * S, 2 * S).0, Bursts::default());
    }

    #[test]
    fn a_retry_loop_with_backoff_below_the_gap_is_one_burst() {
        let mut log = FailureLog::default();
        let mut t = 0;
        for i in 0..5 {
            t += i * S / 2; // 0, 0.5, 1.0, 1.5, 2.0 s apart: the last gap ends the burst
            log.add(t, FailureReason::Refused);
        }
        let (b, _) = log.bursts(0, 2 * S);
        assert_eq!((b.bursts, b.last_burst_attempts), (2, 1));
    }
}
