//! The Prometheus metrics carry the same figures as the process documents, every state listed.

use std::time::Duration;

use observer_e2e::daemon::shared_daemon;
use observer_e2e::document::{outbound, sockets};
use observer_e2e::scenarios::{client, http_server};

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn metrics_carry_the_same_figures() {
    let d = shared_daemon();
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(None, &["requests_no_session", &format!("http://{remote}/"), "7"]);
    let pid = result["pid"].as_u64().unwrap();
    d.wait_process(pid as u32, WAIT, "7 TIME_WAIT", |doc| {
        outbound(doc, &remote).is_some_and(|o| sockets(o, "TIME_WAIT") == 7)
    });
    let text = d.metrics();
    // The value of the first series of `prefix` for this pid and peer whose labels also contain
    // `label` ("" for any).
    let line = |prefix: &str, label: &str| -> f64 {
        text.lines()
            .find(|l| {
                l.starts_with(prefix)
                    && l.contains(&format!("pid=\"{pid}\""))
                    && l.contains(&format!("peer=\"{remote}\""))
                    && l.contains(label)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} {label} for pid {pid} peer {remote} in:\n{text}"))
    };
    assert_eq!(line("observer_connections_opened_total{", ""), 7.0);
    // Every state is listed, zeros included: all of them closed.
    for state in ["ESTABLISHED", "SYN_SENT", "FIN_WAIT1", "CLOSE_WAIT"] {
        assert_eq!(line("observer_sockets{", &format!("state=\"{state}\"")), 0.0, "{state}");
    }
    assert_eq!(line("observer_sockets{", "state=\"TIME_WAIT\""), 7.0);
    assert_eq!(line("observer_connection_lifetime_seconds_count{", ""), 7.0);
    assert!(text.contains("\nobserver_events_lost_total 0\n"), "lost events");
    assert!(text.contains("observer_map_evictions_total{map=\"listeners\"} 0"));
    assert!(text.contains("\nobserver_socket_storage_failures_total 0\n"));
    drop(c);
}
