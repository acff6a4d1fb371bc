//! State changes that interrupt the state program on the same CPU (which the kernel skips for it)
//! are handled by the second program: under a churn, none is lost.

use std::time::Duration;

use observer_e2e::bpf::recursion_misses;
use observer_e2e::daemon::shared_daemon;
use observer_e2e::document::{inbound, num, outbound};
use observer_e2e::processes::Proc;
use observer_e2e::scenarios::{busy_loop, client};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// A state change in a softirq that interrupts observer's state program running in process
/// context on the same CPU is skipped by the kernel for that program (its recursion guard); a
/// second program handles exactly those. Under a churn where the server closes first and the
/// clients hold their sockets (a delayed ACK completes each server close from a timer's softirq,
/// while the process closes and opens other connections), every state change the kernel skipped
/// is handled, and every connection is opened, accepted and ended once.
#[test]
fn state_changes_that_interrupt_the_state_program_are_not_lost() {
    let d = shared_daemon();
    let busy: Vec<Proc> = (0..2).map(|_| busy_loop()).collect();
    let status_before = d.get("/api/v1/status").1;
    let (c, result) = client(None, &["close_first_churn", "8", "20000"]);
    let pid = result["pid"].as_u64().unwrap() as u32;
    let n = result["connections"].as_u64().unwrap();
    assert!(n >= 1000, "too few connections to mean anything: {result}");
    let addr = format!("127.0.0.1:{}", result["port"]);
    let in_flight = |entry: &Value| -> u64 {
        let s = entry["sockets"].as_object().unwrap();
        s.iter()
            .filter(|(k, _)| !["TIME_WAIT", "FIN_WAIT2"].contains(&k.as_str()))
            .map(|(_, v)| v.as_u64().unwrap())
            .sum()
    };
    // The server's sockets (it closed first) reach CLOSE when the client's ACK or FIN comes. On
    // 6.18 the kernel never reports that for a small share of them (none of observer's programs
    // runs, see docs/design.md, "Known gaps"). The daemon finds them all the same: a new socket
    // takes their address, or the audit of the kernel's socket table (every 5 s) finds them in
    // TIME_WAIT. Their connections are reported with their final counters from the table.
    let since = |field: &str| num(&d.get("/api/v1/status").1, field) - num(&status_before, field);
    let doc = d.wait_process(pid, WAIT + Duration::from_secs(10), "every connection ended on both sides", |doc| {
        let ended = |e: Option<&Value>| {
            e.is_some_and(|e| num(e, "connection_lifetime_seconds/count") == n && in_flight(e) == 0)
        };
        ended(outbound(doc, &addr)) && ended(inbound(doc, &addr))
    });
    let o = outbound(&doc, &addr).unwrap();
    assert_eq!(num(o, "connections_opened"), n, "{o}");
    assert_eq!((num(o, "closed_by_peer"), num(o, "closed_by_local")), (n, 0), "{o}");
    let i = inbound(&doc, &addr).unwrap();
    assert_eq!(num(i, "connections_accepted"), n, "{i}");
    assert_eq!((num(i, "closed_by_local"), num(i, "closed_by_peer")), (n, 0), "{i}");
    // One request of one byte, one answer of one byte, on every connection: the closes the
    // kernel never reported included.
    for e in [o, i] {
        assert_eq!((num(e, "requests"), num(e, "bytes_sent"), num(e, "bytes_received")), (n, n, n), "{e}");
        assert_eq!(num(e, "requests_per_connection/count"), n, "{e}");
    }
    assert_eq!(since("closes_without_final_counters"), 0);
    eprintln!(
        "server side: {n} connections reported, {} of them closes the kernel never reported ({} slots freed by the audit)",
        since("closes_not_seen"),
        since("stale_slots_freed")
    );
    // Every run the kernel skipped the state program for, the second program handled.
    let skipped = recursion_misses(d.pid(), "inet_sock_set_state");
    let (_, status) = d.get("/api/v1/status");
    assert_eq!(num(&status, "nested_state_changes"), skipped, "{status}");
    // (The reverse, a state change that interrupts the second program, is handled by the first;
    // informative only.)
    let second_skipped = recursion_misses(d.pid(), "inet_sock_set_state_nested");
    eprintln!(
        "{n} connections; state changes the kernel skipped the state program for: {skipped}, the second program \
         for: {second_skipped}"
    );
    c.finish();
    drop(busy);
}
