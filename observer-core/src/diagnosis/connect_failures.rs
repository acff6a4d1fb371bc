//! Connects failing, in the bursts one call's retries make: urllib3's `Retry(total=3)` is four
//! refused connects within a second, then "Max retries exceeded". Critical while nothing has
//! connected since the last burst began: the destination is down for this process.

use serde_json::json;

use super::{Facts, Finding, Kind, Severity, Thresholds, evidence, round, secs};
use crate::model::{Direction, FAILURE_REASONS, FailureReason};

pub(super) fn check(f: &Facts<'_>, t: &Thresholds) -> Option<Finding> {
    let log = f.stats.failure_log.as_ref()?;
    if f.direction != Direction::Outbound {
        return None;
    }
    let since = f.now_ns.saturating_sub(t.hold_ns());
    let gap_ns = (t.connect_burst_gap_seconds * 1e9) as u64;
    let (b, reasons) = log.bursts(since, gap_ns);
    if b.failures < t.connect_min_failures {
        return None;
    }
    let down = f.stats.last_connected_ns < b.last_burst_start_ns;
    let by_reason: serde_json::Map<String, serde_json::Value> = FAILURE_REASONS
        .iter()
        .map(|r| (r.name().to_string(), json!(reasons.iter().filter(|x| *x == r).count())))
        .collect();
    let main = FAILURE_REASONS.iter().copied().max_by_key(|r| reasons.iter().filter(|x| **x == *r).count());
    let per_burst = round(b.attempts_per_burst(), 2);
    let ago = round(secs(f.now_ns.saturating_sub(b.last_failure_ns)), 1);
    Some(Finding {
        kind: Kind::ConnectFailures,
        severity: if down { Severity::Critical } else { Severity::Warning },
        direction: f.direction,
        peer: f.peer,
        summary: format!(
            "{}'s connects to {} failed {} times ({}) in {} burst{} of {per_burst} attempts, the last {ago} s ago{}",
            f.comm,
            f.peer,
            b.failures,
            reason_list(&by_reason),
            b.bursts,
            if b.bursts == 1 { "" } else { "s" },
            if down { "; none has succeeded since" } else { "" }
        ),
        evidence: evidence([
            ("failures", serde_json::Value::Object(by_reason)),
            ("bursts", json!(b.bursts)),
            ("attempts_per_burst", json!(per_burst)),
            ("last_burst_attempts", json!(b.last_burst_attempts)),
            ("seconds_since_last_failure", json!(ago)),
        ]),
        advice: advice(main.unwrap_or(FailureReason::Other)).to_string(),
    })
}

/// "8 refused, 1 timeout": the reasons that occurred.
fn reason_list(by_reason: &serde_json::Map<String, serde_json::Value>) -> String {
    let parts: Vec<String> =
        by_reason.iter().filter(|(_, n)| n.as_u64().unwrap_or(0) > 0).map(|(r, n)| format!("{n} {r}")).collect();
    parts.join(", ")
}

fn advice(main: FailureReason) -> &'static str {
    match main {
        FailureReason::Refused => {
            "Nothing listens on that address (refused): check the destination's host and port, whether the service is up and its readiness; retries only repeat the failure, so back off between them (urllib3 `Retry(backoff_factor=...)`)."
        }
        FailureReason::Timeout => {
            "The connects time out: the destination is overloaded, or a firewall drops the SYNs; check the route and security groups, and use a connect timeout shorter than the read timeout with retries that back off."
        }
        FailureReason::Unreachable => {
            "The destination is unreachable (no route, ICMP errors): check the address, DNS answers and routing from this node."
        }
        FailureReason::Reset => {
            "The connects are reset during the handshake: the destination's accept queue overflows, or a middlebox rejects them; check the server's backlog and load."
        }
        FailureReason::Other => {
            "The connects fail locally (e.g. no ephemeral port left, or a firewall): see time_wait_exhaustion_risk, and check local firewall rules."
        }
    }
}
