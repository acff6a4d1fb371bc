//! The start-up snapshot: sockets and listeners older than the daemon are attributed.

use std::time::Duration;

use observer_e2e::daemon::Daemon;
use observer_e2e::document::{inbound, num, outbound};
use observer_e2e::net::ss_count;
use observer_e2e::scenarios::{client, http_server};

/// Sockets and listeners that exist before the daemon starts are attributed from its
/// start-up snapshot (as `ss -tanp` would): a leak that started earlier is visible at once,
/// and new connections to an old listener are charged to its listening endpoint, never to
/// client ports.
#[test]
fn sockets_older_than_the_daemon_are_attributed() {
    let (server, port) = http_server("127.0.0.1", "close");
    let remote = format!("127.0.0.1:{port}");
    let (old_client, result) = client(None, &["hold", "127.0.0.1", &port.to_string(), "5"]);
    let old_pid = result["pid"].as_u64().unwrap() as u32;
    // 5 CLOSE_WAIT sockets exist before the daemon starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ss_count(&["state", "close-wait", "dst", &remote]) != 5 {
        assert!(std::time::Instant::now() < deadline, "setup: no CLOSE_WAIT");
        std::thread::sleep(Duration::from_millis(100));
    }

    let d = Daemon::start(&[]);
    let doc = d.wait_process(old_pid, Duration::from_secs(10), "5 CLOSE_WAIT from the snapshot", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "sockets/CLOSE_WAIT") == 5)
    });
    assert_eq!(num(outbound(&doc, &remote).unwrap(), "connections_opened"), 0, "opened before we looked");

    // A new client of the old listener.
    let (new_client, result) = client(None, &["hold", "127.0.0.1", &port.to_string(), "3"]);
    let new_pid = result["pid"].as_u64().unwrap() as u32;
    d.wait_process(new_pid, Duration::from_secs(10), "3 CLOSE_WAIT", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "sockets/CLOSE_WAIT") == 3 && num(o, "connections_opened") == 3)
    });
    let sdoc = d.wait_process(server.pid(), Duration::from_secs(10), "3 accepted on the old listener", |doc| {
        inbound(doc, &remote).is_some_and(|i| num(i, "connections_accepted") == 3)
    });
    let i = inbound(&sdoc, &remote).unwrap();
    assert_eq!(num(i, "sockets/LISTEN"), 1);
    assert_eq!(num(i, "closed_by_local"), 3);
    assert!(sdoc["outbound"].as_array().unwrap().is_empty(), "children filed as outbound: {sdoc}");
    assert_eq!(sdoc["inbound"].as_array().unwrap().len(), 1, "{sdoc}");

    // The old client closes its leaked sockets: the seeded ones drain like any other.
    old_client.finish();
    d.wait_process(old_pid, Duration::from_secs(10), "CLOSE_WAIT drained", |doc| num(doc, "sockets/CLOSE_WAIT") == 0);
    drop(new_client);
}
