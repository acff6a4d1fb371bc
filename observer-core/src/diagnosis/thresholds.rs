//! The thresholds of the findings: defaults, the `[diagnosis]` section of the configuration
//! file, and `--threshold KEY=VALUE` flags over it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// How long an event-based finding (pool_too_small, stale_reuse, connect_failures) stays
    /// after its last occurrence.
    pub hold_seconds: u64,
    /// session_not_reused, tls_handshake_per_request: new connections per second over the last
    /// minute, at least.
    pub min_new_connections_per_second: f64,
    /// session_not_reused, tls_handshake_per_request: requests per connection, at most.
    pub max_requests_per_connection: f64,
    /// session_not_reused, tls_handshake_per_request: connections opened, at least.
    pub min_connections: u64,
    /// pool_too_small: connections the process closed after at most two requests, at least.
    pub pool_min_discarded: u64,
    /// stale_reuse: resets received on connections the peer had closed, at least.
    pub stale_min_resets: u64,
    /// connect_failures: failed connects within `hold_seconds`, at least.
    pub connect_min_failures: u64,
    /// Failed connects less than this apart are one burst (one call and its retries).
    pub connect_burst_gap_seconds: f64,
    /// tls_handshake_per_request: share of resumed handshakes, at most.
    pub tls_max_resumed_share: f64,
    /// tls_handshake_per_request: handshakes, at least.
    pub tls_min_handshakes: u64,
    /// time_wait_exhaustion_risk: TIME_WAIT towards one destination over the ephemeral port
    /// range, at least.
    pub time_wait_max_share: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            hold_seconds: 600,
            min_new_connections_per_second: 1.0,
            max_requests_per_connection: 1.2,
            min_connections: 20,
            pool_min_discarded: 10,
            stale_min_resets: 1,
            connect_min_failures: 2,
            connect_burst_gap_seconds: 2.0,
            tls_max_resumed_share: 0.1,
            tls_min_handshakes: 20,
            time_wait_max_share: 0.5,
        }
    }
}

impl Thresholds {
    /// Values a check cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        let share = |name: &str, v: f64| {
            if v > 0.0 && v <= 1.0 { Ok(()) } else { Err(format!("{name} must be above 0 and at most 1, got {v}")) }
        };
        share("tls_max_resumed_share", self.tls_max_resumed_share)?;
        share("time_wait_max_share", self.time_wait_max_share)?;
        for (name, v) in [
            ("min_new_connections_per_second", self.min_new_connections_per_second),
            ("max_requests_per_connection", self.max_requests_per_connection),
            ("connect_burst_gap_seconds", self.connect_burst_gap_seconds),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number, got {v}"));
            }
        }
        if self.max_requests_per_connection < 1.0 {
            return Err(format!(
                "max_requests_per_connection must be at least 1 (a connection carries one request or more), got {}",
                self.max_requests_per_connection
            ));
        }
        for (name, v) in [
            ("hold_seconds", self.hold_seconds),
            ("pool_min_discarded", self.pool_min_discarded),
            ("stale_min_resets", self.stale_min_resets),
            ("connect_min_failures", self.connect_min_failures),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }

    pub(crate) fn hold_ns(&self) -> u64 {
        self.hold_seconds.saturating_mul(1_000_000_000)
    }

    /// Whether an event at `last_ns` is recent enough at `now_ns` to keep its finding.
    pub(crate) fn held(&self, last_ns: u64, now_ns: u64) -> bool {
        last_ns > 0 && now_ns.saturating_sub(last_ns) < self.hold_ns()
    }
}
