//! TIME_WAIT towards one destination filling the ephemeral port range: each connection the
//! process closes first holds its local port for 60 s, and a connect to the same destination
//! needs a free one (EADDRNOTAVAIL, "Cannot assign requested address", once none is left).

use serde_json::{Value, json};

use super::{Facts, Finding, Kind, Severity, Thresholds, evidence, round};
use crate::model::Direction;

/// How long the kernel keeps a connection in TIME_WAIT (TCP_TIMEWAIT_LEN).
const TIME_WAIT_SECONDS: f64 = 60.0;

pub(super) fn check(f: &Facts<'_>, t: &Thresholds) -> Option<Finding> {
    let range = f.port_range?;
    if f.direction != Direction::Outbound {
        return None;
    }
    let size = range.size();
    let tw = f.time_wait();
    let share = tw as f64 / size as f64;
    let rate = f.new_connections_per_second;
    // At this rate, TIME_WAIT alone holds rate x 60 s ports: more than the range fills it.
    let fills = rate > 0.0 && rate * TIME_WAIT_SECONDS >= size as f64;
    let seconds_to_exhaustion = fills.then(|| round(size.saturating_sub(tw) as f64 / rate, 1));
    if tw == 0 || (share < t.time_wait_max_share && !fills) {
        return None;
    }
    let share = round(share, 3);
    let rate = round(rate, 2);
    let when = match seconds_to_exhaustion {
        Some(s) => format!("; at {rate} new connections per second the range is full in {s} s"),
        None => String::new(),
    };
    Some(Finding {
        kind: Kind::TimeWaitExhaustionRisk,
        severity: if fills { Severity::Critical } else { Severity::Warning },
        direction: f.direction,
        peer: f.peer,
        summary: format!(
            "{} holds {tw} sockets in TIME_WAIT towards {}, {:.0}% of its {size} ephemeral ports ({}-{}){when}",
            f.comm,
            f.peer,
            share * 100.0,
            range.low,
            range.high
        ),
        evidence: evidence([
            ("time_wait", json!(tw)),
            ("port_range_size", json!(size)),
            ("share", json!(share)),
            ("new_connections_per_second", json!(rate)),
            ("seconds_to_exhaustion", seconds_to_exhaustion.map_or(Value::Null, |s| json!(s))),
        ]),
        advice: "Reuse connections instead of opening one per request (a `requests.Session`, one pooled HTTP client per destination): each connection the process closes holds a port for 60 s. Widening `net.ipv4.ip_local_port_range` or enabling `net.ipv4.tcp_tw_reuse` only buys time.".to_string(),
    })
}
