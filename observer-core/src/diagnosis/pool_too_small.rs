//! A pool smaller than the number of threads using it: its connections are reused, but every
//! request beyond the pool's size opens a connection that is closed as soon as it is returned
//! (urllib3: "Connection pool is full, discarding connection").

use serde_json::json;

use super::{Facts, Finding, Kind, Severity, Thresholds, evidence, round};
use crate::model::Direction;

pub(super) fn check(f: &Facts<'_>, t: &Thresholds) -> Option<Finding> {
    let st = f.stats;
    let per_connection = f.requests_per_connection()?;
    if f.direction != Direction::Outbound
        || st.discarded < t.pool_min_discarded
        || st.reused_connections == 0
        || per_connection <= t.max_requests_per_connection
        || !t.held(st.last_discard_ns, f.now_ns)
    {
        return None;
    }
    let rpc = round(per_connection, 2);
    Some(Finding {
        kind: Kind::PoolTooSmall,
        severity: Severity::Warning,
        direction: f.direction,
        peer: f.peer,
        summary: format!(
            "{}'s connection pool to {} is too small: {} connections were closed after one or two requests while {} were reused, with up to {} open at once",
            f.comm, f.peer, st.discarded, st.reused_connections, st.peak_established
        ),
        evidence: evidence([
            ("discarded_connections", json!(st.discarded)),
            ("reused_connections", json!(st.reused_connections)),
            ("peak_concurrent_connections", json!(st.peak_established)),
            ("requests_per_connection", json!(rpc)),
        ]),
        advice: format!(
            "Size the pool to the number of threads or tasks that use it at once (up to {} here): urllib3 `PoolManager(maxsize=...)`, requests `HTTPAdapter(pool_maxsize=...)`, or the max-connections-per-route of your HTTP client.",
            st.peak_established
        ),
    })
}
