//! The CLOSE_WAIT leak verdict (see `closewait`) as a finding: the peer closed, the process
//! never did, and the sockets pile up.

use serde_json::json;

use super::{Facts, Finding, Kind, Severity, Thresholds, evidence, round, secs};
use crate::closewait::Verdict;

pub(super) fn check(f: &Facts<'_>, _t: &Thresholds) -> Option<Finding> {
    let cw = &f.close_wait;
    if cw.verdict != Verdict::Leak {
        return None;
    }
    let oldest = round(secs(cw.oldest_ns), 1);
    let growth = round(cw.growth_per_minute, 1);
    Some(Finding {
        kind: Kind::CloseWaitLeak,
        severity: Severity::Critical,
        direction: f.direction,
        peer: f.peer,
        summary: format!(
            "{} leaks connections to {}: {} sockets in CLOSE_WAIT, the oldest for {oldest} s, {growth:+} per minute",
            f.comm, f.peer, cw.count
        ),
        evidence: evidence([
            ("count", json!(cw.count)),
            ("oldest_seconds", json!(oldest)),
            ("growth_per_minute", json!(growth)),
        ]),
        advice: "The peer closed these connections and the process never called close(): close every response and connection on all paths (`with requests.get(...) as r`, `response.close()`, `try`/`finally`, `defer resp.Body.Close()`), including errors and early returns.".to_string(),
    })
}
