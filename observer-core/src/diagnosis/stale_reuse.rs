//! Reusing a connection the server already closed: the pool kept it idle longer than the
//! server's keep-alive timeout, the next request on it is answered with a reset ("Connection
//! reset by peer", "Broken pipe", `RemoteDisconnected`).

use serde_json::{Value, json};

use super::{Facts, Finding, Kind, Severity, Thresholds, evidence, round, secs};

pub(super) fn check(f: &Facts<'_>, t: &Thresholds) -> Option<Finding> {
    let st = f.stats;
    if st.resets_after_peer_close < t.stale_min_resets || !t.held(st.last_reset_after_peer_close_ns, f.now_ns) {
        return None;
    }
    let idle = &st.idle_closes;
    let p50 = idle.p50_ns().map(|ns| round(secs(ns), 1));
    let (summary_timeout, advice) = match p50 {
        Some(p50) => (
            format!("; it closes idle connections after {p50:.1} s"),
            format!(
                "The server closes idle connections after {p50:.1} s ({} closes measured); keep your pool's idle time below it (an idle timeout or max idle time on the pool, e.g. {:.1} s), or retry idempotent requests once on a reset.",
                idle.samples,
                (p50 * 0.8).max(0.1)
            ),
        ),
        None => (
            String::new(),
            "Keep your pool's idle time below the server's keep-alive timeout (an idle timeout or max idle time on the pool), or retry idempotent requests once on a reset.".to_string(),
        ),
    };
    Some(Finding {
        kind: Kind::StaleReuse,
        severity: Severity::Warning,
        direction: f.direction,
        peer: f.peer,
        summary: format!(
            "{} sent on connections {} had already closed and got {} resets{summary_timeout}",
            f.comm, f.peer, st.resets_after_peer_close
        ),
        evidence: evidence([
            ("resets_after_peer_close", json!(st.resets_after_peer_close)),
            ("idle_close_seconds_p50", p50.map_or(Value::Null, |v| json!(v))),
            ("idle_close_samples", json!(idle.samples)),
        ]),
        advice,
    })
}
