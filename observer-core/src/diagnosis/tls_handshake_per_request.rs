//! A full TLS handshake on nearly every connection, none resumed, one request per connection:
//! each request pays a handshake's round trips and CPU.

use serde_json::json;

use super::{Facts, Finding, Kind, Severity, Thresholds, evidence, round};
use crate::model::Direction;

pub(super) fn check(f: &Facts<'_>, t: &Thresholds) -> Option<Finding> {
    let tls = f.stats.tls.as_ref()?;
    let c = &tls.counts;
    let per_connection = f.requests_per_connection()?;
    if f.direction != Direction::Outbound
        || c.handshakes < t.tls_min_handshakes
        || f.stats.connections < t.min_connections
        || (c.resumed as f64) > t.tls_max_resumed_share * c.handshakes as f64
        || per_connection > t.max_requests_per_connection
        || f.new_connections_per_second < t.min_new_connections_per_second
    {
        return None;
    }
    let d = &tls.durations;
    let mean_s = if d.count > 0 { d.sum_ns as f64 / d.count as f64 / 1e9 } else { 0.0 };
    let per_minute = round(mean_s * f.new_connections_per_second * 60.0, 3);
    Some(Finding {
        kind: Kind::TlsHandshakePerRequest,
        severity: Severity::Warning,
        direction: f.direction,
        peer: f.peer,
        summary: format!(
            "{} makes a full TLS handshake with {} for nearly every request: {} handshakes, {} resumed, {} connections, {per_minute} s of handshakes per minute",
            f.comm, f.peer, c.handshakes, c.resumed, f.stats.connections
        ),
        evidence: evidence([
            ("handshakes", json!(c.handshakes)),
            ("resumed", json!(c.resumed)),
            ("connections", json!(f.stats.connections)),
            ("handshake_seconds_per_minute", json!(per_minute)),
        ]),
        advice: "Keep connections open and reuse them (a `requests.Session`, one HTTP client per destination): one handshake then serves many requests. Where connections must be new, enable TLS session resumption (session tickets) on client and server.".to_string(),
    })
}
