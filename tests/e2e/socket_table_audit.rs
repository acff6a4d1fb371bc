//! The audit of the kernel's socket table: it frees the slots of sockets that are gone and
//! leaves open connections alone.

use std::time::{Duration, Instant};

use observer_e2e::daemon::shared_daemon;
use observer_e2e::document::{inbound, num, outbound, sockets};
use observer_e2e::namespaces::Netns;
use observer_e2e::scenarios::{client, http_server_in};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// The audit of the kernel's socket table frees only the slots of sockets that are gone. Open
/// connections in a network namespace of their own (the daemon enters it through a process in it
/// to list its sockets) keep theirs, pass after pass: established ones (the audit does not look
/// at them), and half-closed ones in FIN_WAIT2, which it checks at every pass (a closing state,
/// where 6.18 loses closes). Still open after three passes, and closed once when they close,
/// with their counters.
#[test]
fn the_socket_table_audit_leaves_open_connections_alone() {
    let d = shared_daemon();
    let ns = Netns::new("audit");
    let (server, port) = http_server_in(Some(&ns.name), "127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (held, result) = client(Some(&ns.name), &["hold", "127.0.0.1", &port.to_string(), "30"]);
    let pid = result["pid"].as_u64().unwrap() as u32;
    let (half, result) = client(Some(&ns.name), &["half_closed", "20"]);
    let half_pid = result["pid"].as_u64().unwrap() as u32;
    let half_remote = format!("127.0.0.1:{}", result["port"]);
    d.wait_process(pid, WAIT, "30 connections open", |doc| {
        outbound(doc, &remote).is_some_and(|o| sockets(o, "ESTABLISHED") == 30)
    });
    let half_open = |doc: &Value| {
        outbound(doc, &half_remote).is_some_and(|o| sockets(o, "FIN_WAIT2") == 20)
            && inbound(doc, &half_remote).is_some_and(|i| sockets(i, "CLOSE_WAIT") == 20)
    };
    d.wait_process(half_pid, WAIT, "20 connections half closed", half_open);
    let audits = || num(&d.get("/api/v1/status").1, "table_audits");
    let first = audits();
    let deadline = Instant::now() + Duration::from_secs(30);
    while audits() < first + 3 {
        assert!(Instant::now() < deadline, "fewer than 3 audit passes in 30 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    let doc = d.wait_process(pid, WAIT, "the process", |_| true);
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!((sockets(o, "ESTABLISHED"), num(o, "connection_lifetime_seconds/count")), (30, 0), "{o}");
    let doc = d.wait_process(half_pid, WAIT, "the process", |_| true);
    assert!(half_open(&doc), "{doc}");
    for e in [outbound(&doc, &half_remote).unwrap(), inbound(&doc, &half_remote).unwrap()] {
        assert_eq!(num(e, "connection_lifetime_seconds/count"), 0, "{e}");
    }
    // Their slots are still theirs: their closes carry their counters.
    drop(held);
    drop(half);
    let doc = d.wait_process(pid, WAIT, "30 connections closed", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "connection_lifetime_seconds/count") == 30)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!((num(o, "closed_by_local"), num(o, "requests")), (30, 30), "{o}");
    let doc = d.wait_process(half_pid, WAIT, "20 connections closed each way", |doc| {
        let closed = |e: Option<&Value>| e.is_some_and(|e| num(e, "connection_lifetime_seconds/count") == 20);
        closed(outbound(doc, &half_remote)) && closed(inbound(doc, &half_remote))
    });
    let o = outbound(&doc, &half_remote).unwrap();
    assert_eq!((num(o, "bytes_sent"), num(o, "closed_by_local")), (20, 20), "{o}");
    drop(server);
}
