//! Failed connects, by reason: refused (IPv4 and IPv6, every retry of a client library) and
//! timed out (SYNs dropped by a firewall).

use std::time::Duration;

use observer_e2e::daemon::shared_daemon;
use observer_e2e::document::{num, outbound, sockets};
use observer_e2e::namespaces::Netns;
use observer_e2e::net::free_port;
use observer_e2e::scenarios::client;

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn urllib3_retries_against_a_closed_port_are_four_refused() {
    let d = shared_daemon();
    let port = free_port(); // nothing listens there
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(None, &["retry_refused", &format!("http://{remote}/"), "3"]);
    assert!(result["error"].as_str().unwrap().contains("Max retries exceeded"), "{result}");
    let pid = result["pid"].as_u64().unwrap() as u32;
    let doc = d.wait_process(pid, WAIT, "4 refused", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "connect_failures/refused") == 4)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(num(o, "connect_failures/refused"), 4);
    for r in ["timeout", "unreachable", "reset", "other"] {
        assert_eq!(num(o, &format!("connect_failures/{r}")), 0, "{r}");
    }
    assert_eq!(num(o, "connections_opened"), 0);
    assert_eq!(o["socket_errors"]["ECONNREFUSED"], 4);
    drop(c);
}

#[test]
fn ipv6_refused_connects_are_counted_too() {
    let d = shared_daemon();
    let port = free_port();
    let remote = format!("[::1]:{port}");
    let (c, result) = client(None, &["retry_refused", &format!("http://{remote}/"), "1"]);
    let pid = result["pid"].as_u64().unwrap() as u32;
    let doc = d.wait_process(pid, WAIT, "2 refused", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "connect_failures/refused") == 2)
    });
    assert_eq!(num(outbound(&doc, &remote).unwrap(), "connect_failures/refused"), 2);
    drop(c);
}

/// A port whose SYNs are dropped (a firewall rule inside a namespace of our own): the client's
/// own connect timeout fires while the socket is in SYN_SENT.
#[test]
fn client_connect_timeout_against_dropped_syns_is_a_timeout() {
    let d = shared_daemon();
    let ns = Netns::new("drop");
    ns.exec(&["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9", "--syn", "-j", "DROP"]);
    let remote = "127.0.0.1:9";
    let (c, result) = client(Some(&ns.name), &["connect_timeout", "http://127.0.0.1:9/", "0.5", "2"]);
    assert!(result["error"].as_str().unwrap().starts_with("ConnectTimeout"), "{result}");
    let pid = result["pid"].as_u64().unwrap() as u32;
    let doc = d.wait_process(pid, WAIT, "2 timeouts", |doc| {
        outbound(doc, remote).is_some_and(|o| num(o, "connect_failures/timeout") == 2)
    });
    let o = outbound(&doc, remote).unwrap();
    assert_eq!(num(o, "connect_failures/timeout"), 2);
    assert_eq!(num(o, "connect_failures/refused"), 0);
    assert_eq!(sockets(o, "SYN_SENT"), 0);
    drop(c);
}
