//! `observer pid` and `observer processes`: readable tables from a running daemon's API.

use std::fmt::Write as _;

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

/// GET a JSON document from the daemon, turning HTTP errors into the API's own message.
fn get(api: &str, path: &str) -> Result<Value> {
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
    let body: Value = resp.body_mut().read_json().with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let msg = body.get("error").and_then(Value::as_str).unwrap_or("unknown error");
        bail!("{msg} (HTTP {})", status.as_u16());
    }
    Ok(body)
}

const STATES: [(&str, &str); 10] = [
    ("ESTABLISHED", "ESTAB"),
    ("SYN_SENT", "SYN-S"),
    ("SYN_RECV", "SYN-R"),
    ("FIN_WAIT1", "FW1"),
    ("FIN_WAIT2", "FW2"),
    ("TIME_WAIT", "TW"),
    ("CLOSE_WAIT", "CW"),
    ("LAST_ACK", "LACK"),
    ("CLOSING", "CLOSING"),
    ("LISTEN", "LISTEN"),
];

fn n(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Non-zero states, "ESTAB=3 TW=50".
fn states(sockets: &Value) -> String {
    let parts: Vec<String> = STATES
        .iter()
        .filter_map(|(k, short)| {
            let c = n(sockets, k);
            (c > 0).then(|| format!("{short}={c}"))
        })
        .collect();
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}

/// " CLOSE_WAIT LEAK" after the sockets of a leaking peer.
fn leak_mark(v: &Value) -> String {
    if v["close_wait"]["verdict"] == "leak" { "  CLOSE_WAIT LEAK".into() } else { String::new() }
}

/// "  (inherited from pid P comm)" after the sockets an entry took over from an exited process.
fn inherited_mark(v: &Value) -> String {
    let i = &v["inherited_from"];
    if i.is_object() { format!("  (inherited from pid {} {})", n(i, "pid"), s(i, "comm")) } else { String::new() }
}

/// Requests per connection, "-" before the first connection.
fn ratio(v: &Value) -> String {
    v.get("reuse_ratio").and_then(Value::as_f64).map_or("-".into(), |r| format!("{r:.2}"))
}

/// New connections per second over the last minute.
fn rate(v: &Value) -> String {
    format!("{:.2}", v.get("new_connections_per_second").and_then(Value::as_f64).unwrap_or(0.0))
}

pub fn render_process(p: &Value) -> String {
    let mut out = String::new();
    let exited = if p.get("exited").and_then(Value::as_bool) == Some(true) { "  (exited)" } else { "" };
    let _ = writeln!(out, "pid {}  {}{exited}", n(p, "pid"), s(p, "comm"));
    if !s(p, "cmdline").is_empty() {
        let _ = writeln!(out, "cmdline  {}", s(p, "cmdline"));
    }
    if let Some(pod) = p.get("pod_uid").and_then(Value::as_str) {
        let _ = writeln!(out, "pod  {pod}");
    }
    if let Some(id) = p.get("container_id").and_then(Value::as_str) {
        let _ = writeln!(out, "container  {}", &id[..id.len().min(12)]);
    }
    let _ = writeln!(out, "sockets  {}", states(&p["sockets"]));
    let cw = &p["close_wait"];
    if n(cw, "count") > 0 {
        let _ = writeln!(
            out,
            "close_wait  {} {} (oldest {:.0} s, {:+.1}/min)",
            n(cw, "count"),
            s(cw, "verdict"),
            cw["oldest_seconds"].as_f64().unwrap_or(0.0),
            cw["growth_per_minute"].as_f64().unwrap_or(0.0)
        );
    }
    let _ = writeln!(out, "opened {}  accepted {}", n(p, "connections_opened"), n(p, "connections_accepted"));
    let outbound = p["outbound"].as_array().cloned().unwrap_or_default();
    if !outbound.is_empty() {
        let _ = writeln!(out, "\nOUTBOUND");
        let _ = writeln!(
            out,
            "{:<28} {:>6} {:>7} {:>6} {:>6}  {:<11} {:<12} {:<9}  SOCKETS",
            "REMOTE", "OPENED", "REQS", "REUSE", "NEW/S", "CLOSED L/P", "FAIL R/T/O", "RST TX/RX"
        );
        for o in &outbound {
            let f = &o["connect_failures"];
            let other = n(f, "unreachable") + n(f, "reset") + n(f, "other");
            let _ = writeln!(
                out,
                "{:<28} {:>6} {:>7} {:>6} {:>6}  {:<11} {:<12} {:<9}  {}",
                s(o, "remote"),
                n(o, "connections_opened"),
                n(o, "requests"),
                ratio(o),
                rate(o),
                format!("{}/{}", n(o, "closed_by_local"), n(o, "closed_by_peer")),
                format!("{}/{}/{}", n(f, "refused"), n(f, "timeout"), other),
                format!("{}/{}", n(o, "resets_sent"), n(o, "resets_received")),
                states(&o["sockets"]) + &leak_mark(o) + &inherited_mark(o),
            );
        }
    }
    let inbound = p["inbound"].as_array().cloned().unwrap_or_default();
    if !inbound.is_empty() {
        let _ = writeln!(out, "\nINBOUND");
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>7} {:>6} {:>6}  {:<11} {:<9}  SOCKETS",
            "LOCAL", "ACCEPTED", "REQS", "REUSE", "NEW/S", "CLOSED L/P", "RST TX/RX"
        );
        for i in &inbound {
            let _ = writeln!(
                out,
                "{:<28} {:>8} {:>7} {:>6} {:>6}  {:<11} {:<9}  {}",
                s(i, "local"),
                n(i, "connections_accepted"),
                n(i, "requests"),
                ratio(i),
                rate(i),
                format!("{}/{}", n(i, "closed_by_local"), n(i, "closed_by_peer")),
                format!("{}/{}", n(i, "resets_sent"), n(i, "resets_received")),
                states(&i["sockets"]) + &leak_mark(i) + &inherited_mark(i),
            );
        }
    }
    let tls: Vec<(&str, &Value)> = outbound
        .iter()
        .map(|o| (o, "remote"))
        .chain(inbound.iter().map(|i| (i, "local")))
        .filter(|(e, _)| e["tls"].is_object())
        .map(|(e, key)| (e[key].as_str().unwrap_or(""), &e["tls"]))
        .collect();
    if !tls.is_empty() {
        let _ = writeln!(out, "\nTLS");
        let _ = writeln!(
            out,
            "{:<28} {:>10} {:>7} {:>6} {:>8}  {:<10}  SERVER NAMES",
            "PEER", "HANDSHAKES", "RESUMED", "FAILED", "MEAN MS", "VERSIONS"
        );
        for (peer, t) in tls {
            let joined =
                |v: &Value| v.as_object().map_or(String::new(), |m| m.keys().cloned().collect::<Vec<_>>().join(","));
            let _ = writeln!(
                out,
                "{:<28} {:>10} {:>7} {:>6} {:>8.1}  {:<10}  {}",
                peer,
                n(t, "handshakes"),
                n(t, "resumed"),
                n(t, "failed"),
                t["handshake_ms"]["mean"].as_f64().unwrap_or(0.0),
                joined(&t["versions"]),
                joined(&t["server_names"]),
            );
        }
    }
    out
}

pub fn render_processes(list: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>8} {:<16} {:>8} {:>8}  SOCKETS", "PID", "COMM", "OPENED", "ACCEPTED");
    for p in list.as_array().into_iter().flatten() {
        let exited = if p.get("exited").and_then(Value::as_bool) == Some(true) { " (exited)" } else { "" };
        let _ = writeln!(
            out,
            "{:>8} {:<16} {:>8} {:>8}  {}{exited}",
            n(p, "pid"),
            s(p, "comm"),
            n(p, "connections_opened"),
            n(p, "connections_accepted"),
            states(&p["sockets"])
        );
    }
    out
}

pub fn pid(api: &str, pid: u32, json: bool) -> Result<()> {
    let doc = get(api, &format!("/api/v1/processes/{pid}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render_process(&doc));
    }
    Ok(())
}

pub fn processes(api: &str, json: bool) -> Result<()> {
    let doc = get(api, "/api/v1/processes")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render_processes(&doc));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_a_process_table() {
        let doc = json!({
            "pid": 42, "comm": "python3", "cmdline": "python3 client.py", "exited": false,
            "container_id": "3f4c0a3c8a0f5e2b9d1c7e6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c",
            "pod_uid": "5f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8",
            "sockets": {"ESTABLISHED": 1, "TIME_WAIT": 50, "LISTEN": 0},
            "close_wait": {"count": 0, "oldest_seconds": 0.0, "growth_per_minute": 0.0, "verdict": "none"},
            "connections_opened": 51, "connections_accepted": 0,
            "outbound": [{"remote": "127.0.0.1:8080", "sockets": {"ESTABLISHED": 1, "TIME_WAIT": 50},
                "connections_opened": 51, "closed_by_local": 50, "closed_by_peer": 0,
                "connect_failures": {"refused": 4, "timeout": 1, "unreachable": 0, "reset": 0, "other": 2},
                "resets_sent": 0, "resets_received": 3, "requests": 150, "reuse_ratio": 2.9411,
                "new_connections_per_second": 0.85,
                "tls": {"handshakes": 51, "resumed": 3, "failed": 1, "versions": {"TLS1.3": 51},
                    "server_names": {"api.example.com": {"handshakes": 51, "resumed": 3, "failed": 1}},
                    "handshake_ms": {"count": 50, "sum": 100.0, "mean": 2.0, "buckets": []}}}],
            "inbound": [{"local": "0.0.0.0:9000", "sockets": {"LISTEN": 1}, "connections_accepted": 0,
                "closed_by_local": 0, "closed_by_peer": 0, "resets_sent": 0, "resets_received": 0,
                "requests": 0, "reuse_ratio": null, "new_connections_per_second": 0.0},
                {"local": "0.0.0.0:9001", "sockets": {"CLOSE_WAIT": 25}, "connections_accepted": 25,
                "closed_by_local": 0, "closed_by_peer": 25, "resets_sent": 0, "resets_received": 0,
                "requests": 25, "reuse_ratio": 1.0, "new_connections_per_second": 0.42,
                "close_wait": {"count": 25, "oldest_seconds": 31.5, "growth_per_minute": 0.0, "verdict": "leak"}},
                {"local": "0.0.0.0:80", "sockets": {"LISTEN": 1}, "connections_accepted": 0,
                "closed_by_local": 0, "closed_by_peer": 0, "resets_sent": 0, "resets_received": 0,
                "requests": 0, "reuse_ratio": null, "new_connections_per_second": 0.0,
                "inherited_from": {"pid": 7, "comm": "nginx", "sockets": 1}}]
        });
        let t = render_process(&doc);
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
}
