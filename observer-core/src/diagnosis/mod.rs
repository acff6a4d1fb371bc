//! Diagnosis: the connection-pool failure patterns a process shows towards each of its peers,
//! each as a [`Finding`] with the figures that triggered it and the change that fixes it.
//!
//! Findings are evaluated when asked for, from the aggregation's current figures ([`Facts`]):
//! nothing is stored. One module per kind; each reads the facts of one peer and the
//! [`Thresholds`], and returns its finding or none.

mod close_wait_leak;
mod connect_failures;
mod facts;
mod pool_too_small;
mod session_not_reused;
mod stale_reuse;
mod thresholds;
mod time_wait_exhaustion_risk;
mod tls_handshake_per_request;

#[cfg(test)]
mod tests;

pub use facts::{Facts, facts_of};
pub use thresholds::Thresholds;

use serde_json::{Map, Value};

use crate::aggregate::{Aggregator, Process};
use crate::model::{Direction, Endpoint};

/// The failure patterns, in the order of their checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    SessionNotReused,
    PoolTooSmall,
    CloseWaitLeak,
    StaleReuse,
    ConnectFailures,
    TlsHandshakePerRequest,
    TimeWaitExhaustionRisk,
}

pub const KINDS: [Kind; 7] = [
    Kind::SessionNotReused,
    Kind::PoolTooSmall,
    Kind::CloseWaitLeak,
    Kind::StaleReuse,
    Kind::ConnectFailures,
    Kind::TlsHandshakePerRequest,
    Kind::TimeWaitExhaustionRisk,
];

impl Kind {
    /// The name in the API, the metrics and the docs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::SessionNotReused => "session_not_reused",
            Kind::PoolTooSmall => "pool_too_small",
            Kind::CloseWaitLeak => "close_wait_leak",
            Kind::StaleReuse => "stale_reuse",
            Kind::ConnectFailures => "connect_failures",
            Kind::TlsHandshakePerRequest => "tls_handshake_per_request",
            Kind::TimeWaitExhaustionRisk => "time_wait_exhaustion_risk",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One failure pattern of one process towards one peer.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub kind: Kind,
    pub severity: Severity,
    pub direction: Direction,
    pub peer: Endpoint,
    /// One sentence, with the numbers.
    pub summary: String,
    /// The figures that triggered it, by name.
    pub evidence: Map<String, Value>,
    /// The change that fixes it.
    pub advice: String,
}

/// A finding's figures, in the order given.
pub(crate) fn evidence<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Every check, for one peer.
const CHECKS: [fn(&Facts<'_>, &Thresholds) -> Option<Finding>; 7] = [
    session_not_reused::check,
    pool_too_small::check,
    close_wait_leak::check,
    stale_reuse::check,
    connect_failures::check,
    tls_handshake_per_request::check,
    time_wait_exhaustion_risk::check,
];

/// The findings of one peer's facts.
pub fn diagnose_peer(facts: &Facts<'_>, t: &Thresholds) -> Vec<Finding> {
    CHECKS.iter().filter_map(|check| check(facts, t)).collect()
}

/// The findings of `process` at `now_ns`, most severe first, then by kind and peer.
pub fn diagnose(agg: &Aggregator, process: &Process, t: &Thresholds, now_ns: u64) -> Vec<Finding> {
    let mut v = Vec::new();
    for (direction, peers) in [(Direction::Outbound, &process.outbound), (Direction::Inbound, &process.inbound)] {
        for (peer, stats) in peers {
            let facts = facts_of(agg, process, direction, *peer, stats, now_ns);
            v.extend(diagnose_peer(&facts, t));
        }
    }
    sort(&mut v);
    v
}

/// Most severe first, then by kind, direction and peer.
pub fn sort(v: &mut [Finding]) {
    v.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.kind.cmp(&b.kind))
            .then(a.direction.cmp(&b.direction))
            .then(a.peer.cmp(&b.peer))
    });
}

/// Seconds, for evidence and summaries.
pub(crate) fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A figure rounded to `digits` decimals, so that evidence reads as the summary does.
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}
