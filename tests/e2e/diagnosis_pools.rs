//! The diagnosis of connection pools (`GET /api/v1/processes/{pid}/diagnosis`): a connection per
//! request (`requests.get()` without a `Session`), a urllib3 pool smaller than its threads, a TLS
//! handshake per request, and TIME_WAIT filling a narrow ephemeral port range. Real clients
//! (Python requests and urllib3) against a real nginx; each finding's evidence is compared with
//! the client's own account or the kernel's (`ss`), and each pattern has a healthy twin that
//! must get no finding at all.
//!
//! The daemon reads open connections' counters only every 60 s here: the figures of open
//! connections must come from the query's own read of the kernel's counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use observer_e2e::daemon::{Daemon, shared_daemon_with};
use observer_e2e::diagnosis::{
    Nginx, NginxOptions, diagnosis, f64_at, finding, findings, kinds, ns_ss, ns_ss_count, pid_of, py_client,
    self_signed, u64_at,
};
use observer_e2e::document::{num, outbound, sockets};
use observer_e2e::namespaces::Netns;
use observer_e2e::net::{free_port, ss_count};
use observer_e2e::openapi::{check_openapi, openapi};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn daemon() -> &'static Daemon {
    shared_daemon_with(&["--io-flush-interval", "60"])
}

fn kind_peer(kind: &str, peer: &str) -> (String, String) {
    (kind.to_string(), peer.to_string())
}

/// Evidence the daemon may round to 2 decimals, compared with the exact figure.
fn assert_rounded(what: &str, got: f64, exact: f64) {
    assert!((got - exact).abs() <= 0.005 + 1e-9, "{what}: {got}, the figure is {exact}");
}

/// `observer_findings` lines of `pid`.
fn finding_series(d: &Daemon, pid: u32) -> Vec<String> {
    d.metrics()
        .lines()
        .filter(|l| l.starts_with("observer_findings{") && l.contains(&format!("pid=\"{pid}\"")))
        .map(str::to_string)
        .collect()
}

/// 120 `requests.get()` at 30 per second: 120 connections, one request each, all closed by the
/// client (120 TIME_WAIT). A `requests.Session` doing the same 120 requests reuses one
/// connection: no finding.
#[test]
fn requests_get_without_a_session_is_session_not_reused() {
    let d = daemon();
    let nginx = Nginx::start(free_port(), NginxOptions::default());
    let remote = nginx.remote();
    let url = format!("http://{remote}/");
    let started = Instant::now();
    let (c, result) = py_client(None, &[], &["no_session", &url, "120", "30"]);
    assert_eq!(result["requests"], 120, "{result}");
    let pid = pid_of(&result);
    // Every close handed over, and TIME_WAIT reconciled with the kernel's own table.
    let doc = d.wait_process(pid, WAIT, "120 closed connections, TIME_WAIT as the kernel has it", |doc| {
        outbound(doc, &remote).is_some_and(|o| {
            num(o, "requests_per_connection/count") == 120
                && sockets(o, "TIME_WAIT") == ss_count(&["state", "time-wait", "dst", &remote]) as u64
        })
    });
    let o = outbound(&doc, &remote).unwrap();
    let kernel_tw = ss_count(&["state", "time-wait", "dst", &remote]) as u64;
    // Ports for one destination are picked in sequence: none of the 120 is reused within the test.
    assert_eq!(
        kernel_tw,
        120,
        "the kernel holds every close in TIME_WAIT; the API has {}:\n{}",
        sockets(o, "TIME_WAIT"),
        ns_ss(None, &["state", "time-wait", "dst", &remote])
    );
    let diag = diagnosis(d, pid);
    assert!(started.elapsed() < Duration::from_secs(55), "the rate below assumes every connection in the last minute");
    check_openapi(&openapi(), "/api/v1/processes/{pid}/diagnosis", 200, &diag);
    assert_eq!(diag["comm"], "python3");
    assert_eq!(kinds(&diag), vec![kind_peer("session_not_reused", &remote)], "{diag:#}");
    let f = &findings(&diag)[0];
    eprintln!("finding: {f}");
    assert_eq!((f["severity"].as_str(), f["direction"].as_str()), (Some("warning"), Some("outbound")));
    let e = &f["evidence"];
    assert_eq!(f64_at(e, "requests_per_connection"), 1.0, "every connection carried one request: {e}");
    assert_eq!(o["reuse_ratio"].as_f64(), Some(1.0));
    assert_eq!(u64_at(e, "connections"), 120, "{e}");
    assert_eq!(u64_at(e, "time_wait"), kernel_tw, "{e}");
    assert_eq!(u64_at(e, "time_wait"), sockets(o, "TIME_WAIT"));
    // 120 connections in the last minute.
    assert_eq!(f64_at(e, "new_connections_per_second"), 2.0, "{e}");
    let summary = f["summary"].as_str().unwrap();
    assert!(summary.contains(&remote) && summary.contains("120"), "{summary}");
    assert!(f["advice"].as_str().unwrap().contains("requests.Session"), "{f}");

    // The same finding in GET /api/v1/findings, and as a metric series.
    let (status, all) = d.get("/api/v1/findings");
    assert_eq!(status, 200, "{all}");
    check_openapi(&openapi(), "/api/v1/findings", 200, &all);
    let mine: Vec<&Value> = all["findings"].as_array().unwrap().iter().filter(|f| f["pid"] == pid).collect();
    assert_eq!(mine.len(), 1, "{all:#}");
    assert_eq!((mine[0]["comm"].as_str(), mine[0]["kind"].as_str()), (Some("python3"), Some("session_not_reused")));
    assert_eq!(mine[0]["peer"], remote.as_str());
    assert_eq!(mine[0]["evidence"]["connections"], 120);
    let series = finding_series(d, pid);
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(
        series[0].contains(&format!("peer=\"{remote}\""))
            && series[0].contains("kind=\"session_not_reused\"")
            && series[0].contains("direction=\"outbound\"")
            && series[0].ends_with(" 1"),
        "{}",
        series[0]
    );

    // The healthy twin: one Session, the same 120 requests at the same rate, on one connection.
    let (twin, result) = py_client(None, &[], &["session", &url, "120", "30"]);
    assert_eq!(result["requests"], 120, "{result}");
    let twin_pid = pid_of(&result);
    let doc = d.process(twin_pid).expect("the twin");
    let o = outbound(&doc, &remote).expect("the twin's peer");
    assert_eq!((num(o, "connections_opened"), num(o, "requests")), (1, 120), "{o}");
    let diag = diagnosis(d, twin_pid);
    assert_eq!(findings(&diag).len(), 0, "{diag:#}");
    assert!(finding_series(d, twin_pid).is_empty());
    drop((c, twin));
}

/// urllib3's `PoolManager(maxsize=2, block=False)` shared by 8 threads holding a connection each
/// at once, 10 rounds: every round the full pool discards the 6 newest connections, each after
/// one request, while its 2 pooled ones carry every round's request (10 each). urllib3's own log
/// says how many it started and discarded. The twin, `maxsize=8`, keeps all 8: no finding.
#[test]
fn a_pool_smaller_than_its_threads_is_pool_too_small() {
    let d = daemon();
    let nginx = Nginx::start(free_port(), NginxOptions::default());
    let remote = nginx.remote();
    let url = format!("http://{remote}/");
    let (c, r) = py_client(None, &[], &["pool", &url, "8", "10", "2"]);
    assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r}");
    // Round 1: 8 new connections, 2 kept; each later round 6 new ones discarded.
    let (started, discarded) = (u64_at(&r, "started"), u64_at(&r, "discarded"));
    assert_eq!((started, discarded, u64_at(&r, "requests")), (62, 60, 80), "{r}");
    assert_eq!(u64_at(&r, "closed_after_at_most_2"), discarded, "every discarded connection carried one request: {r}");
    assert_eq!(u64_at(&r, "carried_at_least_3"), 2, "{r}");
    let pid = pid_of(&r);
    let doc = d.wait_process(pid, WAIT, "60 closed by the client, 80 requests", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "closed_by_local") == discarded && num(o, "requests") == 80)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(num(o, "connections_opened"), started);
    assert_eq!(sockets(o, "ESTABLISHED"), 2, "the pool keeps 2");
    let diag = diagnosis(d, pid);
    check_openapi(&openapi(), "/api/v1/processes/{pid}/diagnosis", 200, &diag);
    assert_eq!(kinds(&diag), vec![kind_peer("pool_too_small", &remote)], "{diag:#}");
    let f = &findings(&diag)[0];
    eprintln!("finding: {f}");
    assert_eq!((f["severity"].as_str(), f["direction"].as_str()), (Some("warning"), Some("outbound")));
    let e = &f["evidence"];
    assert_eq!(u64_at(e, "discarded_connections"), discarded, "urllib3's \"Connection pool is full\" lines: {e}");
    // The 2 pooled connections are open: their 10 requests each come from the query's read.
    assert_eq!(u64_at(e, "reused_connections"), 2, "{e}");
    // All 8 workers held a connection at once, and no more than 8 ever were open.
    let peak = u64_at(e, "peak_concurrent_connections");
    assert!((3..=8).contains(&peak), "{e}");
    assert_eq!(peak, 8, "{e}");
    assert_rounded("requests_per_connection", f64_at(e, "requests_per_connection"), 80.0 / 62.0);
    assert_rounded("requests_per_connection", f64_at(e, "requests_per_connection"), o["reuse_ratio"].as_f64().unwrap());
    let summary = f["summary"].as_str().unwrap();
    assert!(summary.contains(&remote) && summary.contains("60"), "{summary}");
    assert!(f["advice"].as_str().unwrap().contains("maxsize"), "{f}");

    // The twin: a pool as large as the thread count keeps every connection.
    let (twin, r) = py_client(None, &[], &["pool", &url, "8", "10", "8"]);
    assert_eq!((u64_at(&r, "started"), u64_at(&r, "discarded"), u64_at(&r, "requests")), (8, 0, 80), "{r}");
    let twin_pid = pid_of(&r);
    let doc = d.process(twin_pid).expect("the twin");
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!((num(o, "connections_opened"), num(o, "requests"), num(o, "closed_by_local")), (8, 80, 0), "{o}");
    let diag = diagnosis(d, twin_pid);
    assert_eq!(findings(&diag).len(), 0, "{diag:#}");
    drop((c, twin));
}

/// Queries and scrapes back to back until `stop` is set (30 s at most): each reads the kernel's
/// counters of open connections, whenever it comes (in the middle of a TLS handshake too).
/// Returns how many it made.
fn query_meanwhile(d: &'static Daemon, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            assert_eq!(d.get("/api/v1/processes").0, 200);
            d.metrics();
            n += 2;
        }
        n
    })
}

/// 70 `requests.get()` over HTTPS without a `Session`: a full TLS handshake for every request
/// (each call builds a new SSL context: nothing to resume). Such a client opens a connection per
/// request too, so it is session_not_reused as well. The twin, a `Session`: one handshake, no
/// finding. API queries and /metrics scrapes run all along, as they do in production: whenever
/// they read a connection's counters (in the middle of its handshake too), the handshake's
/// exchanges are no requests.
#[test]
fn https_without_a_session_is_a_tls_handshake_per_request() {
    let d = daemon();
    let cert = self_signed();
    let nginx = Nginx::start(free_port(), NginxOptions { tls: Some(cert), ..Default::default() });
    let remote = nginx.remote();
    let url = format!("https://{remote}/");
    let ca = cert.cert.to_str().unwrap();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let queries = query_meanwhile(d, stop.clone());
    let (c, r) = py_client(None, &[("REQUESTS_CA_BUNDLE", ca)], &["no_session", &url, "70", "30"]);
    stop.store(true, Ordering::Relaxed);
    eprintln!("{} queries during the client's run", queries.join().unwrap());
    assert_eq!(r["requests"], 70, "{r}");
    let pid = pid_of(&r);
    let doc = d.wait_process(pid, WAIT, "70 handshakes on 70 closed connections", |doc| {
        outbound(doc, &remote).is_some_and(|o| {
            o.pointer("/tls/handshake_ms/count").and_then(Value::as_u64) == Some(70)
                && num(o, "requests_per_connection/count") == 70
        })
    });
    let diag = diagnosis(d, pid);
    assert!(started.elapsed() < Duration::from_secs(55), "the rate below assumes every connection in the last minute");
    let o = outbound(&doc, &remote).unwrap();
    // Every connection is closed: its requests are in requests_per_connection too.
    assert_eq!(
        (num(o, "connections_opened"), num(o, "requests"), num(o, "requests_per_connection/sum")),
        (70, 70, 70),
        "{o:#}"
    );
    assert_eq!(
        kinds(&diag),
        vec![kind_peer("session_not_reused", &remote), kind_peer("tls_handshake_per_request", &remote)],
        "{diag:#}"
    );
    let f = finding(&diag, "tls_handshake_per_request", &remote).unwrap();
    eprintln!("finding: {f}");
    assert_eq!((f["severity"].as_str(), f["direction"].as_str()), (Some("warning"), Some("outbound")));
    let e = &f["evidence"];
    assert_eq!((u64_at(e, "handshakes"), u64_at(e, "resumed"), u64_at(e, "connections")), (70, 0, 70), "{e}");
    // The mean full handshake times the new connections per minute (70 in the last minute).
    let mean_s = f64_at(o, "tls/handshake_ms/mean") / 1000.0;
    let expected = mean_s * f64_at(o, "new_connections_per_second") * 60.0;
    let got = f64_at(e, "handshake_seconds_per_minute");
    assert!(
        (got - expected).abs() <= expected * 0.01 + 0.005,
        "handshake_seconds_per_minute {got}, expected {expected}"
    );
    assert!(got > 0.0);
    assert!(f["summary"].as_str().unwrap().contains("70"), "{f}");
    assert!(f["advice"].as_str().unwrap().to_lowercase().contains("resumption"), "{f}");
    let s = finding(&diag, "session_not_reused", &remote).unwrap();
    assert_eq!(u64_at(&s["evidence"], "connections"), 70);

    let (twin, r) = py_client(None, &[("REQUESTS_CA_BUNDLE", ca)], &["session", &url, "70", "30"]);
    assert_eq!(r["requests"], 70, "{r}");
    let twin_pid = pid_of(&r);
    let doc = d.wait_process(twin_pid, WAIT, "the twin's handshake", |doc| {
        outbound(doc, &remote).is_some_and(|o| o.pointer("/tls/handshakes").and_then(Value::as_u64) == Some(1))
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!((num(o, "connections_opened"), num(o, "requests")), (1, 70), "{o}");
    let diag = diagnosis(d, twin_pid);
    assert_eq!(findings(&diag).len(), 0, "{diag:#}");
    drop((c, twin));
}

/// A namespace whose ephemeral port range is 100 ports (40000-40099), a client in it that opens
/// 70 connections to an nginx there, 2 requests each (so it is no connection-per-request
/// client), each closed by the client: 70 TIME_WAIT, 70% of the range. The twin, the same
/// client in a namespace with the default range: no finding.
///
/// `net.ipv4.tcp_tw_reuse` is 0 in both namespaces, as it is for anything but loopback by
/// default (2): with 100 ports, connect() would otherwise take over TIME_WAIT ports towards the
/// same loopback destination.
#[test]
fn time_wait_filling_a_narrow_port_range_is_an_exhaustion_risk() {
    let d = daemon();
    let run = |tag: &str, range: Option<&str>| {
        let ns = Netns::new(tag);
        if let Some(range) = range {
            ns.exec(&["sysctl", "-q", "-w", &format!("net.ipv4.ip_local_port_range={range}")]);
        }
        ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=0"]);
        let nginx = Nginx::start(8080, NginxOptions { netns: Some(&ns.name), ..Default::default() });
        let (c, r) = py_client(Some(&ns.name), &[], &["per_connection", "127.0.0.1", "8080", "70", "2"]);
        assert_eq!((r["requests"].as_u64(), r["local_ports"].as_u64()), (Some(140), Some(70)), "{r}");
        let pid = pid_of(&r);
        let remote = "127.0.0.1:8080";
        let doc =
            d.wait_process(pid, WAIT, "70 closed by the client, TIME_WAIT as the namespace's kernel has it", |doc| {
                outbound(doc, remote).is_some_and(|o| {
                    num(o, "closed_by_local") == 70
                        && sockets(o, "TIME_WAIT")
                            == ns_ss_count(Some(&ns.name), &["state", "time-wait", "dst", remote])
                })
            });
        let o = outbound(&doc, remote).unwrap().clone();
        assert_eq!(ns_ss_count(Some(&ns.name), &["state", "time-wait", "dst", remote]), 70);
        assert_eq!((num(&o, "requests"), num(&o, "connections_opened")), (140, 70));
        let diag = diagnosis(d, pid);
        (ns, nginx, c, diag, o)
    };

    let (_ns, _nginx, c, diag, o) = run("twx", Some("40000 40099"));
    check_openapi(&openapi(), "/api/v1/processes/{pid}/diagnosis", 200, &diag);
    assert_eq!(kinds(&diag), vec![kind_peer("time_wait_exhaustion_risk", "127.0.0.1:8080")], "{diag:#}");
    let f = &findings(&diag)[0];
    eprintln!("finding: {f}");
    assert_eq!(f["direction"], "outbound");
    let e = &f["evidence"];
    assert_eq!((u64_at(e, "time_wait"), u64_at(e, "port_range_size")), (70, 100), "{e}");
    assert_eq!(u64_at(e, "time_wait"), sockets(&o, "TIME_WAIT"));
    assert_eq!(f64_at(e, "share"), 0.7, "{e}");
    assert_rounded("new_connections_per_second", f64_at(e, "new_connections_per_second"), 70.0 / 60.0);
    // 70 new connections a minute fill 70 of the 100 ports in TIME_WAIT's 60 s, not all.
    assert_eq!(e["seconds_to_exhaustion"], Value::Null, "{e}");
    assert_eq!(f["severity"], "warning");
    let summary = f["summary"].as_str().unwrap();
    assert!(summary.contains("70") && summary.contains("100"), "{summary}");
    assert!(f["advice"].as_str().unwrap().contains("ip_local_port_range"), "{f}");
    drop(c);

    let (_ns2, _nginx2, twin, diag, _) = run("twok", None);
    assert_eq!(findings(&diag).len(), 0, "the default range: {diag:#}");
    drop(twin);
}
