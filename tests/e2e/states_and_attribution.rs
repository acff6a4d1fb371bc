//! Socket states and whom they are charged to, with exact numbers checked against the kernel's
//! own table: connections and their closes, TIME_WAIT, CLOSE_WAIT and FIN_WAIT2, on both sides of
//! loopback, charged to the process that owns each socket (the client, the server's listening
//! endpoint, the worker that accepted) and never to whoever happens to be on the CPU.

use std::time::Duration;

use observer_e2e::daemon::shared_daemon;
use observer_e2e::document::{inbound, num, outbound, sockets};
use observer_e2e::namespaces::Netns;
use observer_e2e::net::ss_count;
use observer_e2e::processes::Proc;
use observer_e2e::scenarios::{busy_loop, client, http_server, http_server_in};

const WAIT: Duration = Duration::from_secs(15);

/// 50 `requests.get()` without a Session to a keep-alive server: every request opens a
/// connection, the client closes each one first, and 50 TIME_WAIT sockets are charged to the
/// client, as many as the kernel's own table holds for that peer.
fn fifty_gets_without_session(host: &str, remote_of: impl Fn(u16) -> String, url_host: &str) {
    let d = shared_daemon();
    let (server, port) = http_server(host, "keepalive");
    let remote = remote_of(port);
    let url = format!("http://{url_host}:{port}/");
    let (c, result) = client(None, &["requests_no_session", &url, "50"]);
    let pid = result["pid"].as_u64().unwrap() as u32;

    let doc = d.wait_process(pid, WAIT, "50 connections and 50 TIME_WAIT", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "connections_opened") == 50 && sockets(o, "TIME_WAIT") == 50)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(num(o, "connections_opened"), 50);
    assert_eq!(num(o, "closed_by_local"), 50);
    assert_eq!(num(o, "closed_by_peer"), 0);
    assert_eq!(num(o, "connect_failures/refused") + num(o, "connect_failures/timeout"), 0);
    assert_eq!(num(o, "connection_lifetime_seconds/count"), 50);
    assert_eq!(sockets(o, "ESTABLISHED"), 0);
    assert_eq!(num(&doc, "connections_opened"), 50);
    assert_eq!(num(&doc, "sockets/TIME_WAIT"), 50, "the process total includes them");
    assert_eq!(doc["outbound"].as_array().unwrap().len(), 1, "one peer: {doc}");
    let kernel_tw = ss_count(&["state", "time-wait", "dst", &remote]);
    assert_eq!(kernel_tw, 50, "ss -tan state time-wait dst {remote}");

    // The server saw the same 50 connections from the other side, on its listening endpoint.
    let sdoc = d.wait_process(server.pid(), WAIT, "50 accepted", |doc| {
        doc["inbound"].as_array().is_some_and(|a| a.iter().any(|i| num(i, "connections_accepted") == 50))
    });
    let listen = remote_of(port);
    let i = inbound(&sdoc, &listen).unwrap_or_else(|| panic!("no inbound {listen}: {sdoc}"));
    assert_eq!(num(i, "connections_accepted"), 50);
    assert_eq!(num(i, "closed_by_peer"), 50);
    assert_eq!(sockets(i, "LISTEN"), 1);
    assert_eq!(sockets(i, "TIME_WAIT"), 0, "the client closed first");
    assert!(sdoc["outbound"].as_array().unwrap().is_empty(), "never keyed by client ports: {sdoc}");
    drop(c);
}

#[test]
fn requests_without_session_ipv4() {
    fifty_gets_without_session("127.0.0.1", |p| format!("127.0.0.1:{p}"), "127.0.0.1");
}

#[test]
fn requests_without_session_ipv6() {
    fifty_gets_without_session("::1", |p| format!("[::1]:{p}"), "[::1]");
}

#[test]
fn requests_with_one_session_opens_one_connection() {
    let d = shared_daemon();
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(None, &["requests_session", &format!("http://{remote}/"), "50"]);
    let pid = result["pid"].as_u64().unwrap() as u32;
    let doc = d.wait_process(pid, WAIT, "one established connection", |doc| {
        outbound(doc, &remote).is_some_and(|o| sockets(o, "ESTABLISHED") == 1)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(num(o, "connections_opened"), 1);
    assert_eq!(num(o, "closed_by_local") + num(o, "closed_by_peer"), 0);
    assert_eq!(sockets(o, "TIME_WAIT"), 0);
    drop(c);
}

/// A server that closes first leaves the client's sockets in CLOSE_WAIT. The FIN is processed
/// in softirq (on loopback, in the server's context, or wherever the CPU is): the sockets must
/// still be charged to the client, and never to the server or to CPU-busy bystanders.
#[test]
fn close_wait_is_charged_to_the_client_not_to_whoever_is_on_the_cpu() {
    let d = shared_daemon();
    let busy: Vec<Proc> = (0..2).map(|_| busy_loop()).collect();
    let (server, port) = http_server("127.0.0.1", "close");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(None, &["hold", "127.0.0.1", &port.to_string(), "20"]);
    let pid = result["pid"].as_u64().unwrap() as u32;
    let doc = d.wait_process(pid, WAIT, "20 CLOSE_WAIT", |doc| {
        outbound(doc, &remote).is_some_and(|o| sockets(o, "CLOSE_WAIT") == 20)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(num(o, "closed_by_peer"), 20);
    assert_eq!(num(o, "closed_by_local"), 0);
    assert_eq!(num(&doc, "sockets/CLOSE_WAIT"), 20);
    assert_eq!(ss_count(&["state", "close-wait", "dst", &remote]), 20);

    // The server's closed sockets wait for the client's FIN as FIN_WAIT2 timewait entries, as
    // the kernel's table (after reconciliation) shows.
    let sdoc = d.wait_process(server.pid(), WAIT, "20 FIN_WAIT2 on the server", |doc| {
        inbound(doc, &remote).is_some_and(|i| sockets(i, "FIN_WAIT2") == 20)
    });
    assert_eq!(num(&sdoc, "sockets/CLOSE_WAIT"), 0, "{sdoc}");
    assert!(sdoc["outbound"].as_array().unwrap().is_empty(), "{sdoc}");
    let i = inbound(&sdoc, &remote).expect("server inbound");
    assert_eq!(num(i, "closed_by_local"), 20);
    assert_eq!(num(i, "connections_accepted"), 20);
    assert_eq!(ss_count(&["state", "fin-wait-2", "src", &remote]), 20);
    for b in &busy {
        assert!(d.process(b.pid()).is_none(), "busy process {} was charged: {:?}", b.pid(), d.process(b.pid()));
    }
    // The client exits, its sockets close: CLOSE_WAIT drains to zero and the server's
    // entries become TIME_WAIT.
    c.finish();
    d.wait_process(server.pid(), WAIT, "20 TIME_WAIT on the server", |doc| {
        inbound(doc, &remote).is_some_and(|i| sockets(i, "TIME_WAIT") == 20 && sockets(i, "FIN_WAIT2") == 0)
    });
    assert_eq!(ss_count(&["state", "time-wait", "src", &remote]), 20);
    drop(busy);
}

/// The nginx model: a parent listens, a forked worker accepts on the same socket. Connections
/// belong to the worker that accepted them (charged when it first reads them), never to the
/// parent, which only holds the listening socket.
#[test]
fn accepted_connections_belong_to_the_worker_that_accepts_them() {
    let d = shared_daemon();
    // A wildcard listener (in a namespace of its own, off the host's interfaces): connections
    // are charged to it, found through the kernel's listener map, not to the address they came in
    // on.
    let ns = Netns::new("prefork");
    let (mut server, port) = http_server_in(Some(&ns.name), "0.0.0.0", "prefork");
    let worker: u32 = server.line().strip_prefix("WORKER ").expect("worker line").parse().unwrap();
    let listen = format!("0.0.0.0:{port}");
    let target = format!("127.0.0.1:{port}");
    let (c, _) = client(Some(&ns.name), &["requests_no_session", &format!("http://{target}/"), "10"]);
    let w = d.wait_process(worker, WAIT, "10 accepted by the worker", |doc| {
        inbound(doc, &listen).is_some_and(|i| num(i, "connections_accepted") == 10 && num(i, "closed_by_peer") == 10)
    });
    assert!(inbound(&w, &target).is_none(), "nothing charged to the address they came in on: {w}");
    assert_eq!(num(inbound(&w, &listen).unwrap(), "sockets/LISTEN"), 0, "the worker did not listen()");
    let parent = d.process(server.pid()).expect("the parent listens");
    let p = inbound(&parent, &listen).unwrap();
    assert_eq!(num(p, "sockets/LISTEN"), 1);
    assert_eq!(num(p, "connections_accepted"), 0, "{parent}");
    assert_eq!(num(p, "closed_by_peer") + num(p, "closed_by_local"), 0, "{parent}");
    drop(c);
}
