//! `GET /api/v1/alerts`: the active findings.

use serde::{Deserialize, Serialize};

use crate::aggregate::LeakAlert;

/// An active finding, as `GET /api/v1/alerts` lists it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: String,
    pub pid: u32,
    pub comm: String,
    pub direction: String,
    /// The remote endpoint (outbound) or the listening endpoint (inbound).
    pub peer: String,
    pub count: u64,
    pub oldest_seconds: f64,
    pub growth_per_minute: f64,
    /// When the finding started, RFC 3339 (UTC).
    pub since: String,
}

/// The active alerts; `now_ns` (CLOCK_MONOTONIC) and `now` (wall clock) are the same instant.
pub fn alerts(findings: &[LeakAlert], now_ns: u64, now: std::time::SystemTime) -> Vec<Alert> {
    findings
        .iter()
        .map(|f| {
            let since = now - std::time::Duration::from_nanos(now_ns.saturating_sub(f.since_ns));
            Alert {
                kind: "close_wait_leak".into(),
                pid: f.process.pid,
                comm: f.comm.clone(),
                direction: f.direction.name().into(),
                peer: f.peer.to_string(),
                count: f.status.count,
                oldest_seconds: f.status.oldest_ns as f64 / 1e9,
                growth_per_minute: f.status.growth_per_minute,
                since: humantime::format_rfc3339_seconds(since).to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closewait::{Status as CloseWaitStatus, Verdict};
    use crate::model::{Direction, Endpoint, ProcessKey};

    #[test]
    fn alerts_carry_wall_clock_start_times() {
        let f = LeakAlert {
            process: ProcessKey { pid: 42, start_ns: 0 },
            comm: "python3".into(),
            direction: Direction::Outbound,
            peer: Endpoint("10.0.0.1:80".parse().unwrap()),
            status: CloseWaitStatus {
                count: 30,
                oldest_ns: 35_000_000_000,
                growth_per_minute: 0.0,
                verdict: Verdict::Leak,
            },
            since_ns: 100_000_000_000,
        };
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let a = alerts(&[f], 130_000_000_000, now);
        assert_eq!(a[0].since, "2026-11-18T11:06:10Z", "30 s before now (1795000000 s)");
        assert_eq!(a[0].kind, "close_wait_leak");
        assert_eq!(a[0].oldest_seconds, 35.0);
    }
}
