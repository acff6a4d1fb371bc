//! TIME_WAIT reconciled with the kernel's own timewait table, in other network namespaces too.

use std::time::Duration;

use observer_e2e::daemon::shared_daemon;
use observer_e2e::document::{num, outbound, sockets};
use observer_e2e::namespaces::Netns;
use observer_e2e::net::ss_count;
use observer_e2e::scenarios::{client, http_server_in};

const WAIT: Duration = Duration::from_secs(15);

/// TIME_WAIT in another network namespace is reconciled with that namespace's own table: with
/// room for only 5 timewait entries there, the kernel keeps 5 of the 10 active closes, and so
/// does observer.
#[test]
fn time_wait_is_reconciled_inside_other_network_namespaces() {
    let d = shared_daemon();
    let ns = Netns::new("tw");
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_max_tw_buckets=5"]);
    let (_server, port) = http_server_in(Some(&ns.name), "127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(Some(&ns.name), &["requests_no_session", &format!("http://{remote}/"), "10"]);
    let pid = result["pid"].as_u64().unwrap() as u32;
    // The last connection's close may be drained after its open: wait for the closes too.
    let doc = d.wait_process(pid, WAIT, "10 connections closed, 5 TIME_WAIT", |doc| {
        outbound(doc, &remote).is_some_and(|o| {
            num(o, "connections_opened") == 10 && num(o, "closed_by_local") == 10 && sockets(o, "TIME_WAIT") == 5
        })
    });
    assert_eq!(num(outbound(&doc, &remote).unwrap(), "closed_by_peer"), 0);
    let in_ns = ns.exec(&["ss", "-Htan", "state", "time-wait", "dst", &remote]);
    assert_eq!(in_ns.lines().filter(|l| !l.trim().is_empty()).count(), 5, "{in_ns}");
    assert_eq!(ss_count(&["state", "time-wait", "dst", &remote]), 0, "nothing of it in the host namespace");
    drop(c);
}
