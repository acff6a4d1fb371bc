//! `observer pid`, `observer processes` and `observer explain`: readable answers from a
//! running daemon's API.
//!
//! The answers are read into the API's own document types (`observer_core::views`), so a
//! document this observer does not understand is an error that says so, not a table of zeros.

use std::fmt::Write as _;

mod explain;

pub use explain::explain;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;

use observer_core::closewait::Verdict;
use observer_core::model::TcpState;
use observer_core::views::{
    ApiError, CloseWait, Inbound, InheritedFrom, Outbound, ProcessDetail, ProcessSummary, Reuse, Sockets, Tls,
};

/// GET a document from the daemon: its body if it answered with success, the API's own error
/// message otherwise.
fn get(api: &str, path: &str) -> Result<String> {
    let url = format!("{}{path}", api.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent.get(&url).call().map_err(|e| {
        anyhow!("cannot reach the observer daemon at {api}: {e} (is `observer daemon` running? see --api)")
    })?;
    let status = resp.status();
    let body = resp.body_mut().read_to_string().with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let msg = serde_json::from_str::<ApiError>(&body).map_or_else(|_| "unknown error".to_owned(), |e| e.error);
        bail!("{msg} (HTTP {})", status.as_u16());
    }
    Ok(body)
}

/// Reads an answer of the daemon into its document type.
fn read<T: DeserializeOwned>(body: &str) -> Result<T> {
    serde_json::from_str(body)
        .map_err(|e| anyhow!("the daemon's API answered with a document this observer does not read: {e}"))
}

/// The document as the daemon sent it, pretty-printed (`--json`): passed through, not read into
/// the document types, so it shows whatever the daemon serves.
fn print_json(body: &str) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&read::<Value>(body)?)?);
    Ok(())
}

/// The short name of a state in the SOCKETS column.
fn short(state: TcpState) -> &'static str {
    match state {
        TcpState::Established => "ESTAB",
        TcpState::SynSent => "SYN-S",
        TcpState::SynRecv => "SYN-R",
        TcpState::FinWait1 => "FW1",
        TcpState::FinWait2 => "FW2",
        TcpState::TimeWait => "TW",
        TcpState::CloseWait => "CW",
        TcpState::LastAck => "LACK",
        TcpState::Closing => "CLOSING",
        TcpState::Listen => "LISTEN",
        // Never reported for live sockets.
        TcpState::Close | TcpState::NewSynRecv => state.name(),
    }
}

/// Non-zero states, "ESTAB=3 TW=50".
fn states(sockets: &Sockets) -> String {
    let parts: Vec<String> =
        sockets.0.iter().filter(|(_, c)| *c > 0).map(|(state, c)| format!("{}={c}", short(state))).collect();
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}

/// The verdict as the API spells it ("pooled-idle").
fn verdict_name(v: Verdict) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(name)) => name,
        _ => String::new(),
    }
}

/// "  CLOSE_WAIT LEAK" after the sockets of a leaking peer.
fn leak_mark(cw: &CloseWait) -> &'static str {
    if cw.verdict == Verdict::Leak { "  CLOSE_WAIT LEAK" } else { "" }
}

/// "  (inherited from pid P comm)" after the sockets an entry took over from an exited process.
fn inherited_mark(from: Option<&InheritedFrom>) -> String {
    from.map_or(String::new(), |i| format!("  (inherited from pid {} {})", i.pid, i.comm))
}

/// Requests per connection, "-" before the first connection.
fn ratio(r: &Reuse) -> String {
    r.reuse_ratio.map_or("-".into(), |r| format!("{r:.2}"))
}

/// New connections per second over the last minute.
fn rate(r: &Reuse) -> String {
    format!("{:.2}", r.new_connections_per_second)
}

/// What the process is and where it runs, its sockets, CLOSE_WAIT and connection counts.
fn render_header(p: &ProcessDetail, out: &mut String) {
    let exited = if p.exited { "  (exited)" } else { "" };
    let _ = writeln!(out, "pid {}  {}{exited}", p.pid, p.comm);
    if !p.cmdline.is_empty() {
        let _ = writeln!(out, "cmdline  {}", p.cmdline);
    }
    if let Some(pod) = &p.pod_uid {
        let _ = writeln!(out, "pod  {pod}");
    }
    if let Some(id) = &p.container_id {
        let _ = writeln!(out, "container  {}", id.get(..12).unwrap_or(id));
    }
    let _ = writeln!(out, "sockets  {}", states(&p.sockets));
    let cw = &p.close_wait;
    if cw.count > 0 {
        let _ = writeln!(
            out,
            "close_wait  {} {} (oldest {:.0} s, {:+.1}/min)",
            cw.count,
            verdict_name(cw.verdict),
            cw.oldest_seconds,
            cw.growth_per_minute
        );
    }
    let _ = writeln!(out, "opened {}  accepted {}", p.connections_opened, p.connections_accepted);
}

fn render_outbound(outbound: &[Outbound], out: &mut String) {
    if outbound.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nOUTBOUND");
    let _ = writeln!(
        out,
        "{:<28} {:>6} {:>7} {:>6} {:>6}  {:<11} {:<12} {:<9}  SOCKETS",
        "REMOTE", "OPENED", "REQS", "REUSE", "NEW/S", "CLOSED L/P", "FAIL R/T/O", "RST TX/RX"
    );
    for o in outbound {
        let f = &o.connect_failures;
        let other = f.unreachable + f.reset + f.other;
        let _ = writeln!(
            out,
            "{:<28} {:>6} {:>7} {:>6} {:>6}  {:<11} {:<12} {:<9}  {}",
            o.remote,
            o.connections_opened,
            o.reuse.requests,
            ratio(&o.reuse),
            rate(&o.reuse),
            format!("{}/{}", o.closed_by_local, o.closed_by_peer),
            format!("{}/{}/{}", f.refused, f.timeout, other),
            format!("{}/{}", o.resets_sent, o.resets_received),
            states(&o.sockets) + leak_mark(&o.close_wait) + &inherited_mark(o.inherited_from.as_ref()),
        );
    }
}

fn render_inbound(inbound: &[Inbound], out: &mut String) {
    if inbound.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nINBOUND");
    let _ = writeln!(
        out,
        "{:<28} {:>8} {:>7} {:>6} {:>6}  {:<11} {:<9}  SOCKETS",
        "LOCAL", "ACCEPTED", "REQS", "REUSE", "NEW/S", "CLOSED L/P", "RST TX/RX"
    );
    for i in inbound {
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>7} {:>6} {:>6}  {:<11} {:<9}  {}",
            i.local,
            i.connections_accepted,
            i.reuse.requests,
            ratio(&i.reuse),
            rate(&i.reuse),
            format!("{}/{}", i.closed_by_local, i.closed_by_peer),
            format!("{}/{}", i.resets_sent, i.resets_received),
            states(&i.sockets) + leak_mark(&i.close_wait) + &inherited_mark(i.inherited_from.as_ref()),
        );
    }
}

/// One row per peer with TLS handshakes, outbound then inbound.
fn render_tls(p: &ProcessDetail, out: &mut String) {
    let tls: Vec<(&str, &Tls)> = p
        .outbound
        .iter()
        .filter_map(|o| Some((o.remote.as_str(), o.tls.as_ref()?)))
        .chain(p.inbound.iter().filter_map(|i| Some((i.local.as_str(), i.tls.as_ref()?))))
        .collect();
    if tls.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nTLS");
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>7} {:>6} {:>8}  {:<10}  SERVER NAMES",
        "PEER", "HANDSHAKES", "RESUMED", "FAILED", "MEAN MS", "VERSIONS"
    );
    for (peer, t) in tls {
        let versions: Vec<&str> = t.versions.keys().map(String::as_str).collect();
        let names: Vec<&str> = t.server_names.keys().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "{:<28} {:>10} {:>7} {:>6} {:>8.1}  {:<10}  {}",
            peer,
            t.handshakes,
            t.resumed,
            t.failed,
            t.handshake_ms.mean,
            versions.join(","),
            names.join(","),
        );
    }
}

pub fn render_process(p: &ProcessDetail) -> String {
    let mut out = String::new();
    render_header(p, &mut out);
    render_outbound(&p.outbound, &mut out);
    render_inbound(&p.inbound, &mut out);
    render_tls(p, &mut out);
    out
}

pub fn render_processes(list: &[ProcessSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>8} {:<16} {:>8} {:>8}  SOCKETS", "PID", "COMM", "OPENED", "ACCEPTED");
    for p in list {
        let exited = if p.exited { " (exited)" } else { "" };
        let _ = writeln!(
            out,
            "{:>8} {:<16} {:>8} {:>8}  {}{exited}",
            p.pid,
            p.comm,
            p.connections_opened,
            p.connections_accepted,
            states(&p.sockets)
        );
    }
    out
}

pub fn pid(api: &str, pid: u32, json: bool) -> Result<()> {
    let body = get(api, &format!("/api/v1/processes/{pid}"))?;
    if json {
        print_json(&body)
    } else {
        print!("{}", render_process(&read(&body)?));
        Ok(())
    }
}

pub fn processes(api: &str, json: bool) -> Result<()> {
    let body = get(api, "/api/v1/processes")?;
    if json {
        print_json(&body)
    } else {
        print!("{}", render_processes(&read::<Vec<ProcessSummary>>(&body)?));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `base` with the fields of `patch` set.
    fn with(mut base: Value, patch: Value) -> Value {
        for (k, v) in patch.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    fn sockets(counts: Value) -> Value {
        let zero = json!({"ESTABLISHED": 0, "SYN_SENT": 0, "SYN_RECV": 0, "FIN_WAIT1": 0, "FIN_WAIT2": 0,
            "TIME_WAIT": 0, "CLOSE_WAIT": 0, "LAST_ACK": 0, "CLOSING": 0, "LISTEN": 0});
        with(zero, counts)
    }

    fn close_wait(count: u64, verdict: &str) -> Value {
        json!({"count": count, "oldest_seconds": 31.5, "growth_per_minute": 0.0, "verdict": verdict})
    }

    /// A peer of either direction: all fields, zero, then `patch`.
    fn peer(patch: Value) -> Value {
        let base = json!({
            "sockets": sockets(json!({})), "closed_by_local": 0, "closed_by_peer": 0, "resets_sent": 0,
            "resets_received": 0, "socket_errors": {},
            "connection_lifetime_seconds": {"count": 0, "mean": 0.0, "min": 0.0, "max": 0.0},
            "requests": 0, "bytes_sent": 0, "bytes_received": 0, "reuse_ratio": null,
            "new_connections_per_second": 0.0,
            "requests_per_connection": {"count": 0, "sum": 0, "max": 0, "buckets": []},
            "close_wait": close_wait(0, "none"), "tls": null, "inherited_from": null
        });
        with(base, patch)
    }

    fn outbound(remote: &str, patch: Value) -> Value {
        let failures = json!({"refused": 0, "timeout": 0, "unreachable": 0, "reset": 0, "other": 0});
        let idle = json!({"min": null, "p50": null, "max": null, "samples": 0});
        let base = json!({"remote": remote, "connections_opened": 0, "connect_failures": failures, "idle_close_seconds": idle});
        peer(with(base, patch))
    }

    fn inbound(local: &str, patch: Value) -> Value {
        peer(with(json!({"local": local, "connections_accepted": 0}), patch))
    }

    fn tls() -> Value {
        json!({"handshakes": 51, "resumed": 3, "failed": 1, "versions": {"TLS1.3": 51},
            "server_names": {"api.example.com": {"handshakes": 51, "resumed": 3, "failed": 1}},
            "handshake_ms": {"count": 50, "sum": 100.0, "mean": 2.0, "buckets": []}})
    }

    fn document() -> Value {
        json!({
            "pid": 42, "comm": "python3", "cmdline": "python3 client.py", "exited": false,
            "container_id": "3f4c0a3c8a0f5e2b9d1c7e6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c",
            "pod_uid": "5f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8",
            "sockets": sockets(json!({"ESTABLISHED": 1, "TIME_WAIT": 50})),
            "close_wait": close_wait(0, "none"),
            "connections_opened": 51, "connections_accepted": 0,
            "outbound": [outbound("127.0.0.1:8080", json!({
                "sockets": sockets(json!({"ESTABLISHED": 1, "TIME_WAIT": 50})),
                "connections_opened": 51, "closed_by_local": 50, "closed_by_peer": 0,
                "connect_failures": {"refused": 4, "timeout": 1, "unreachable": 0, "reset": 0, "other": 2},
                "resets_sent": 0, "resets_received": 3, "requests": 150, "reuse_ratio": 2.9411,
                "new_connections_per_second": 0.85, "tls": tls()}))],
            "inbound": [
                inbound("0.0.0.0:9000", json!({"sockets": sockets(json!({"LISTEN": 1}))})),
                inbound("0.0.0.0:9001", json!({"sockets": sockets(json!({"CLOSE_WAIT": 25})),
                    "connections_accepted": 25, "closed_by_peer": 25, "requests": 25, "reuse_ratio": 1.0,
                    "new_connections_per_second": 0.42, "close_wait": close_wait(25, "leak")})),
                inbound("0.0.0.0:80", json!({"sockets": sockets(json!({"LISTEN": 1})),
                    "inherited_from": {"pid": 7, "comm": "nginx", "sockets": 1}}))]
        })
    }

    #[test]
    fn renders_a_process_table() {
        let t = render_process(&read(&document().to_string()).unwrap());
        assert!(t.starts_with("pid 42  python3\n"), "{t}");
        assert!(t.contains("sockets  ESTAB=1 TW=50\n"), "{t}");
        let row = t.lines().find(|l| l.starts_with("127.0.0.1:8080")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols[..8], &["127.0.0.1:8080", "51", "150", "2.94", "0.85", "50/0", "4/1/2", "0/3"]);
        assert!(row.ends_with("ESTAB=1 TW=50"));
        let row = t.lines().find(|l| l.starts_with("0.0.0.0:9000")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols, &["0.0.0.0:9000", "0", "0", "-", "0.00", "0/0", "0/0", "LISTEN=1"]);
        let row = t.lines().find(|l| l.starts_with("0.0.0.0:9001")).unwrap();
        assert!(row.ends_with("CW=25  CLOSE_WAIT LEAK"), "{row}");
        let row = t.lines().find(|l| l.starts_with("0.0.0.0:80 ")).unwrap();
        assert!(row.ends_with("LISTEN=1  (inherited from pid 7 nginx)"), "{row}");
        assert!(!t.contains("close_wait  "), "no process-level line when the count is 0");
        assert!(t.contains("pod  5f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8\ncontainer  3f4c0a3c8a0f\n"), "{t}");
        let row = t.lines().skip_while(|l| *l != "TLS").nth(2).expect("a TLS row");
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols, &["127.0.0.1:8080", "51", "3", "1", "2.0", "TLS1.3", "api.example.com"]);
        assert_eq!(t.lines().skip_while(|l| *l != "TLS").count(), 3, "peers without TLS have no row");
    }

    #[test]
    fn renders_the_process_list() {
        let summary = |pid, exited, counts| {
            json!({"pid": pid, "comm": "curl", "container_id": null, "pod_uid": null, "exited": exited,
                "sockets": sockets(counts), "connections_opened": 1, "connections_accepted": 0})
        };
        let list = json!([summary(7, false, json!({"TIME_WAIT": 1})), summary(8, true, json!({}))]);
        let t = render_processes(&read::<Vec<ProcessSummary>>(&list.to_string()).unwrap());
        assert_eq!(
            t,
            "     PID COMM               OPENED ACCEPTED  SOCKETS\n\
             \x20      7 curl                    1        0  TW=1\n\
             \x20      8 curl                    1        0  - (exited)\n"
        );
    }

    /// A renamed or missing field is an error naming it, never a column of zeros.
    #[test]
    fn a_document_missing_a_field_is_an_error() {
        let mut doc = document();
        doc["outbound"][0].as_object_mut().unwrap().remove("requests");
        let e = read::<ProcessDetail>(&doc.to_string()).unwrap_err().to_string();
        assert!(e.starts_with("the daemon's API answered with a document this observer does not read: "), "{e}");
        assert!(e.contains("missing field `requests`"), "{e}");
        let mut list = json!([{"pid": 7, "comm": "curl", "container_id": null, "pod_uid": null, "exited": false,
            "sockets": sockets(json!({})), "connections_opened": 1, "connections_accepted": 0}]);
        list[0]["sockets"].as_object_mut().unwrap().remove("TIME_WAIT");
        let e = read::<Vec<ProcessSummary>>(&list.to_string()).unwrap_err().to_string();
        assert!(e.contains("missing field `TIME_WAIT`"), "{e}");
    }
}
