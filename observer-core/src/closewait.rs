//! CLOSE_WAIT: telling a leak from a healthy pool.
//!
//! CLOSE_WAIT means the peer closed and the application has not called close() yet. In a
//! keep-alive pool that is normal: urllib3, for one, only notices that the server closed an idle
//! pooled connection when it next takes it from the pool. So a small, flat number of CLOSE_WAIT
//! sockets per peer is healthy (`pooled-idle`), and the verdict `leak` comes from the trend:
//!
//! - the count is above a floor (a pool's worth of idle connections), and
//! - it rose in each of the last `rising_windows` sampling windows, or its oldest socket has been
//!   in CLOSE_WAIT for `max_age` or more.
//!
//! With the defaults (floor 10, windows of 10 s, 3 rising windows, max age 30 s), 30 sockets
//! leaked within 10 s are a leak once the oldest is 30 s old, and a steady leak faster than one
//! socket per 10 s is one within 30 s of passing the floor; a pool of up to 10 idle connections
//! closed by the server never is.

use std::collections::{BTreeMap, VecDeque};

const SECOND: u64 = 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloseWaitConfig {
    /// Counts at or below this are never a leak.
    pub floor: u64,
    /// Seconds in CLOSE_WAIT after which the oldest socket makes the count a leak.
    pub max_age_seconds: u64,
    /// Length of a sampling window, in seconds.
    pub window_seconds: u64,
    /// Consecutive windows of growth that make the count a leak.
    pub rising_windows: usize,
}

impl Default for CloseWaitConfig {
    fn default() -> Self {
        CloseWaitConfig { floor: 10, max_age_seconds: 30, window_seconds: 10, rising_windows: 3 }
    }
}

impl CloseWaitConfig {
    pub fn window_ns(&self) -> u64 {
        self.window_seconds.max(1) * SECOND
    }

    /// Samples worth keeping: enough for the rising rule and for a minute of growth.
    fn keep(&self) -> usize {
        self.rising_windows.max((60 / self.window_seconds.max(1)) as usize) + 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Verdict {
    #[serde(rename = "none")]
    None,
    #[serde(rename = "pooled-idle")]
    PooledIdle,
    #[serde(rename = "leak")]
    Leak,
}

/// CLOSE_WAIT of one peer now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Status {
    pub count: u64,
    /// Time the oldest socket has been in CLOSE_WAIT (0 when there is none).
    pub oldest_ns: u64,
    /// Change of the count per minute, over the last minute of samples.
    pub growth_per_minute: f64,
    pub verdict: Verdict,
}

/// The CLOSE_WAIT sockets of one peer, with when each entered CLOSE_WAIT, and the count
/// sampled at each window.
#[derive(Clone, Debug, Default)]
pub struct CloseWaitTracker {
    /// Entry time -> sockets that entered then.
    entered: BTreeMap<u64, u32>,
    count: u64,
    /// (time, count), oldest first.
    samples: VecDeque<(u64, u64)>,
}

impl CloseWaitTracker {
    pub fn enter(&mut self, ts_ns: u64) {
        *self.entered.entry(ts_ns).or_default() += 1;
        self.count += 1;
    }

    /// A socket that entered CLOSE_WAIT at `entered_ns` left it.
    pub fn leave(&mut self, entered_ns: u64) {
        if let Some(n) = self.entered.get_mut(&entered_ns) {
            *n -= 1;
            if *n == 0 {
                self.entered.remove(&entered_ns);
            }
            self.count -= 1;
        }
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether there is anything to sample or report.
    pub fn is_idle(&self) -> bool {
        self.count == 0 && self.samples.iter().all(|(_, c)| *c == 0)
    }

    /// Take a sample at `now_ns` if a window has passed since the last one.
    pub fn sample(&mut self, now_ns: u64, cfg: &CloseWaitConfig) {
        if self.samples.back().is_some_and(|(t, _)| now_ns < t + cfg.window_ns()) {
            return;
        }
        self.samples.push_back((now_ns, self.count));
        while self.samples.len() > cfg.keep() {
            self.samples.pop_front();
        }
    }

    pub fn status(&self, now_ns: u64, cfg: &CloseWaitConfig) -> Status {
        let oldest_ns = self.entered.keys().next().map_or(0, |t| now_ns.saturating_sub(*t));
        let rising = self.samples.len() > cfg.rising_windows
            && self
                .samples
                .iter()
                .rev()
                .take(cfg.rising_windows + 1)
                .collect::<Vec<_>>()
                .windows(2)
                .all(|w| w[0].1 > w[1].1)
            && self.samples.back().is_some_and(|(_, c)| self.count >= *c);
        let aged = oldest_ns >= cfg.max_age_seconds * SECOND;
        let verdict = if self.count == 0 {
            Verdict::None
        } else if self.count > cfg.floor && (rising || aged) {
            Verdict::Leak
        } else {
            Verdict::PooledIdle
        };
        // Growth over the last minute (or what the samples cover of it).
        let since = now_ns.saturating_sub(60 * SECOND);
        let growth_per_minute = match self.samples.iter().find(|(t, _)| *t >= since) {
            Some((t, c)) if now_ns > *t => (self.count as f64 - *c as f64) * 60.0 * SECOND as f64 / (now_ns - t) as f64,
            _ => 0.0,
        };
        Status { count: self.count, oldest_ns, growth_per_minute, verdict }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CloseWaitConfig {
        CloseWaitConfig::default()
    }

    /// Sample every second from `from` to `to` (the daemon ticks every second).
    fn run(t: &mut CloseWaitTracker, from: u64, to: u64) {
        for s in from..=to {
            t.sample(s * SECOND, &cfg());
        }
    }

    #[test]
    fn thirty_sockets_leaked_at_once_are_a_leak_once_the_oldest_is_thirty_seconds_old() {
        let mut t = CloseWaitTracker::default();
        run(&mut t, 0, 5);
        for i in 0..30 {
            t.enter((5 * SECOND) + i * 300_000_000); // 30 sockets within 10 s
        }
        run(&mut t, 5, 34);
        assert_eq!(t.status(34 * SECOND, &cfg()).verdict, Verdict::PooledIdle, "29 s old");
        run(&mut t, 35, 35);
        let s = t.status(35 * SECOND, &cfg());
        assert_eq!(s.verdict, Verdict::Leak);
        assert_eq!(s.count, 30);
        assert_eq!(s.oldest_ns, 30 * SECOND);
        // Closing them clears it.
        for i in 0..30 {
            t.leave((5 * SECOND) + i * 300_000_000);
        }
        assert_eq!(t.status(36 * SECOND, &cfg()).verdict, Verdict::None);
    }

    #[test]
    fn a_steady_leak_is_a_leak_from_its_rising_trend_alone() {
        // No age rule here (max age far away): the trend must do it.
        let cfg = CloseWaitConfig { max_age_seconds: 3600, ..CloseWaitConfig::default() };
        let mut t = CloseWaitTracker::default();
        for s in 0..=29 {
            // One new CLOSE_WAIT socket every second.
            t.enter(s * SECOND);
            t.sample(s * SECOND, &cfg);
        }
        // Samples at 0, 10, 20: counts 1, 11, 21: two rising windows.
        assert_eq!(t.status(29 * SECOND, &cfg).verdict, Verdict::PooledIdle);
        t.enter(30 * SECOND);
        t.sample(30 * SECOND, &cfg);
        // Samples 1, 11, 21, 31: three consecutive rises.
        let s = t.status(30 * SECOND, &cfg);
        assert_eq!(s.verdict, Verdict::Leak);
        assert!((s.growth_per_minute - 60.0).abs() < 1.0, "{}", s.growth_per_minute);
        // It stops growing and stays: the trend no longer says leak, and age does not apply.
        for s in 31..=70 {
            t.sample(s * SECOND, &cfg);
        }
        assert_eq!(t.status(70 * SECOND, &cfg).verdict, Verdict::PooledIdle);
    }

    #[test]
    fn a_pool_of_idle_connections_closed_by_the_server_is_never_a_leak() {
        let mut t = CloseWaitTracker::default();
        // The server closes the pool's 10 idle connections one by one, and they stay.
        for i in 0..10 {
            t.enter(i * 7 * SECOND);
        }
        run(&mut t, 0, 3600);
        let s = t.status(3600 * SECOND, &cfg());
        assert_eq!(s.verdict, Verdict::PooledIdle);
        assert_eq!(s.count, 10);
        assert_eq!(s.growth_per_minute, 0.0);
        // The pool takes one: it notices the EOF and closes it.
        t.leave(0);
        assert_eq!(t.status(3601 * SECOND, &cfg()).count, 9);
    }

    #[test]
    fn a_flat_count_above_the_floor_is_only_a_leak_by_age() {
        let mut t = CloseWaitTracker::default();
        run(&mut t, 0, 100);
        // 15 sockets that keep being replaced: none stays 30 s.
        let mut live: VecDeque<u64> = VecDeque::new();
        for s in 100..400 {
            if live.len() == 15 {
                t.leave(live.pop_front().unwrap());
            }
            t.enter(s * SECOND);
            live.push_back(s * SECOND);
            t.sample(s * SECOND, &cfg());
            assert_ne!(t.status(s * SECOND, &cfg()).verdict, Verdict::Leak, "at {s}");
        }
    }

    #[test]
    fn a_dropping_count_is_not_rising() {
        let mut t = CloseWaitTracker::default();
        for s in 0..=30 {
            t.enter(s * SECOND);
            t.sample(s * SECOND, &cfg());
        }
        // 31 sockets: samples at 0, 10, 20, 30 (1, 11, 21, 31). Now 25 of them close.
        for s in 0..25 {
            t.leave(s * SECOND);
        }
        assert_eq!(t.status(31 * SECOND, &cfg()).verdict, Verdict::PooledIdle, "6 left, below the floor");
    }
}
