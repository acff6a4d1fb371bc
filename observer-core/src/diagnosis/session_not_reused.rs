//! A connection per request to one destination: `requests.get()` without a `Session`, a client
//! built per call. Every request pays a connect (and a TLS handshake), and every connection
//! leaves a TIME_WAIT behind.

use serde_json::json;

use super::{Facts, Finding, Kind, Severity, Thresholds, evidence, round};
use crate::model::Direction;

pub(super) fn check(f: &Facts<'_>, t: &Thresholds) -> Option<Finding> {
    let st = f.stats;
    let per_connection = f.requests_per_connection()?;
    let reused_elsewhere = st.reused_connections > 0;
    if f.direction != Direction::Outbound
        || st.connections < t.min_connections
        || f.new_connections_per_second < t.min_new_connections_per_second
        || per_connection > t.max_requests_per_connection
        || reused_elsewhere
    {
        return None;
    }
    let rate = round(f.new_connections_per_second, 2);
    let rpc = round(per_connection, 2);
    Some(Finding {
        kind: Kind::SessionNotReused,
        severity: Severity::Warning,
        direction: f.direction,
        peer: f.peer,
        summary: format!(
            "{} opens a new connection to {} for every request: {rpc:.2} requests per connection, {rate:.2} new connections per second, {} in TIME_WAIT",
            f.comm,
            f.peer,
            f.time_wait()
        ),
        evidence: evidence([
            ("new_connections_per_second", json!(rate)),
            ("requests_per_connection", json!(rpc)),
            ("connections", json!(st.connections)),
            ("time_wait", json!(f.time_wait())),
        ]),
        advice: "Reuse one HTTP client per destination, whose pool keeps connections open: a `requests.Session` (not `requests.get()`), one urllib3 `PoolManager`, one `http.Client`/`HttpClient` shared by all calls, and HTTP keep-alive on the server.".to_string(),
    })
}
