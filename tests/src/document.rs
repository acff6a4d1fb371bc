//! Reading the daemon's process documents (`/api/v1/processes/{pid}`).

use serde_json::Value;

/// Number at a JSON path like "outbound/0/connect_failures/refused".
pub fn num(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for part in path.split('/') {
        cur = match part.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[part],
        };
    }
    cur.as_u64().unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// Sockets in `state` of an outbound or inbound entry (or of a whole process document).
pub fn sockets(entry: &Value, state: &str) -> u64 {
    num(entry, &format!("sockets/{state}"))
}

/// The outbound entry of a process document for `remote`.
pub fn outbound<'a>(doc: &'a Value, remote: &str) -> Option<&'a Value> {
    doc["outbound"].as_array()?.iter().find(|o| o["remote"] == remote)
}

/// The inbound entry of a process document for `local`.
pub fn inbound<'a>(doc: &'a Value, local: &str) -> Option<&'a Value> {
    doc["inbound"].as_array()?.iter().find(|o| o["local"] == local)
}
