//! The diagnosis of failures (`GET /api/v1/processes/{pid}/diagnosis`): connects refused and
//! retried, requests sent on connections the server had closed for idleness (and the idle time
//! it closes them after), CLOSE_WAIT leaks, several patterns in one process; the endpoint's
//! errors, `observer explain`, and counters of open connections read at query time.
//!
//! The daemon here reads open connections' counters only every 60 s, prunes exited processes
//! after 2 s, and calls a CLOSE_WAIT count above the floor (10) a leak once its oldest socket
//! waited 5 s.

use std::process::Command;
use std::time::{Duration, Instant};

use observer_e2e::daemon::{Daemon, observer_bin, shared_daemon_with};
use observer_e2e::diagnosis::{
    Nginx, NginxOptions, diagnosis, f64_at, finding, findings, kinds, pid_of, py_client, u64_at,
};
use observer_e2e::document::{num, outbound};
use observer_e2e::net::free_port;
use observer_e2e::openapi::{check_openapi, openapi};
use observer_e2e::scenarios::{client, http_server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn daemon() -> &'static Daemon {
    shared_daemon_with(&["--io-flush-interval", "60", "--exited-retention", "2", "--close-wait-max-age", "5"])
}

fn kind_peer(kind: &str, peer: &str) -> (String, String) {
    (kind.to_string(), peer.to_string())
}

fn refused_everywhere(e: &Value, refused: u64) {
    assert_eq!(u64_at(e, "failures/refused"), refused, "{e}");
    for r in ["timeout", "unreachable", "reset", "other"] {
        assert_eq!(u64_at(e, &format!("failures/{r}")), 0, "{r}: {e}");
    }
}

/// A `requests.Session` with urllib3 `Retry(total=3, backoff_factor=0)` against a closed port,
/// called twice 3 s apart (more than the 2 s burst gap): 2 bursts of 4 refused connects, and
/// nothing ever connected: critical. The twin, whose connects succeed: no finding.
#[test]
fn retries_against_a_closed_port_are_connect_failures() {
    let d = daemon();
    let remote = format!("127.0.0.1:{}", free_port()); // nothing listens there
    let started = Instant::now();
    let (mut c, r) = py_client(None, &[], &["retry_calls", &format!("http://{remote}/"), "3", "2", "3"]);
    let errors = r["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{r}");
    assert!(errors.iter().all(|e| e.as_str().is_some_and(|e| e.contains("Max retries exceeded"))), "{r}");
    let pid = pid_of(&r);
    d.wait_process(pid, WAIT, "8 refused", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "connect_failures/refused") == 8)
    });
    let diag = diagnosis(d, pid);
    let queried = started.elapsed().as_secs_f64();
    check_openapi(&openapi(), "/api/v1/processes/{pid}/diagnosis", 200, &diag);
    assert_eq!(kinds(&diag), vec![kind_peer("connect_failures", &remote)], "{diag:#}");
    let f = &findings(&diag)[0];
    eprintln!("finding: {f}");
    assert_eq!((f["severity"].as_str(), f["direction"].as_str()), (Some("critical"), Some("outbound")), "{f}");
    let e = &f["evidence"];
    refused_everywhere(e, 8);
    assert_eq!(u64_at(e, "bursts"), 2, "{e}");
    assert_eq!(f64_at(e, "attempts_per_burst"), 4.0, "{e}");
    assert_eq!(u64_at(e, "last_burst_attempts"), 4, "{e}");
    // The second call's attempts came more than 3 s after the start, and before the query.
    let since = f64_at(e, "seconds_since_last_failure");
    assert!(
        (0.0..=queried - 3.0).contains(&since),
        "seconds_since_last_failure {since}, queried {queried} s after the start"
    );
    assert!(f["summary"].as_str().unwrap().contains('8'), "{f}");
    assert!(f["advice"].as_str().unwrap().to_lowercase().contains("retr"), "{f}");

    // The destination comes up and the same process connects: the finding stays (for
    // hold_seconds) but is a warning now.
    let port: u16 = remote.rsplit(':').next().unwrap().parse().unwrap();
    let up = Nginx::start(port, NginxOptions::default());
    assert_eq!(c.command(&format!("get http://{remote}/")), "GOT 200");
    let doc = d.wait_process(pid, WAIT, "one connection opened", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "connections_opened") == 1)
    });
    assert_eq!(num(outbound(&doc, &remote).unwrap(), "connect_failures/refused"), 8);
    let diag = diagnosis(d, pid);
    assert_eq!(kinds(&diag), vec![kind_peer("connect_failures", &remote)], "{diag:#}");
    let f = &findings(&diag)[0];
    assert_eq!(f["severity"], "warning", "a connect succeeded since the last burst: {f}");
    refused_everywhere(&f["evidence"], 8);
    assert_eq!(u64_at(&f["evidence"], "bursts"), 2);
    drop(up);

    // The twin: connects that succeed.
    let nginx = Nginx::start(free_port(), NginxOptions::default());
    let (twin, r) = py_client(None, &[], &["session", &format!("http://{}/", nginx.remote()), "5", "100"]);
    let twin_pid = pid_of(&r);
    let doc = d.process(twin_pid).expect("the twin");
    assert_eq!(num(outbound(&doc, &nginx.remote()).unwrap(), "connections_opened"), 1);
    assert_eq!(findings(&diagnosis(d, twin_pid)).len(), 0);
    drop((c, twin));
}

/// nginx closes keep-alive connections idle for 2 s (`keepalive_timeout 2s`); a client that
/// waits 3 s and then sends its next request on the same socket gets the server's RST: 3 such
/// connections are 3 resets after the peer's close, each connection idle 2 s when nginx closed
/// it. The twin waits 1 s, below the server's timeout: every request answered, no idle close.
#[test]
fn requests_on_connections_the_server_closed_are_stale_reuse() {
    let d = daemon();
    let nginx = Nginx::start(free_port(), NginxOptions { keepalive_timeout: Some("2s"), ..Default::default() });
    let remote = nginx.remote();
    let port = nginx.port.to_string();
    let (c, r) = py_client(None, &[], &["idle_reuse", "127.0.0.1", &port, "3", "3"]);
    let outcomes: Vec<&str> = r["outcomes"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    assert!(outcomes.iter().all(|o| *o != "ok"), "no second request may be answered: {r}");
    let pid = pid_of(&r);
    let doc = d.wait_process(pid, WAIT, "3 connections closed by nginx, 3 resets", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "closed_by_peer") == 3 && num(o, "resets_received") == 3)
    });
    let o = outbound(&doc, &remote).unwrap();
    let idle = &o["idle_close_seconds"];
    eprintln!("idle_close_seconds: {idle}");
    assert_eq!(u64_at(idle, "samples"), 3, "{idle}");
    for q in ["min", "p50", "max"] {
        let v = f64_at(idle, q);
        assert!((1.7..=2.3).contains(&v), "idle_close_seconds {q} {v}: nginx's keepalive_timeout is 2 s");
    }
    let diag = diagnosis(d, pid);
    check_openapi(&openapi(), "/api/v1/processes/{pid}/diagnosis", 200, &diag);
    check_openapi(&openapi(), "/api/v1/processes/{pid}", 200, &doc);
    assert_eq!(kinds(&diag), vec![kind_peer("stale_reuse", &remote)], "{diag:#}");
    let f = &findings(&diag)[0];
    eprintln!("finding: {f}");
    assert_eq!((f["severity"].as_str(), f["direction"].as_str()), (Some("warning"), Some("outbound")));
    let e = &f["evidence"];
    assert_eq!(u64_at(e, "resets_after_peer_close"), 3, "{e}");
    assert_eq!(u64_at(e, "idle_close_samples"), 3, "{e}");
    let p50 = f64_at(e, "idle_close_seconds_p50");
    assert!((1.7..=2.3).contains(&p50), "{e}");
    // The finding's figure is the entry's, rounded to a tenth of a second.
    assert!((p50 - f64_at(idle, "p50")).abs() <= 0.05 + 1e-9, "the entry's p50 {idle}, the finding's {e}");
    assert!(f["advice"].as_str().unwrap().contains("idle"), "{f}");
    // The same as metrics.
    let metrics = d.metrics();
    let sample = |prefix: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(prefix)
                    && l.contains(&format!("pid=\"{pid}\""))
                    && l.contains(&format!("peer=\"{remote}\""))
            })
            .unwrap_or_else(|| panic!("no {prefix} for {pid}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(sample("observer_idle_closes_total{"), 3.0);
    let p50_series = metrics
        .lines()
        .find(|l| {
            l.starts_with("observer_idle_close_seconds{")
                && l.contains(&format!("pid=\"{pid}\""))
                && l.contains("quantile=\"0.5\"")
        })
        .expect("observer_idle_close_seconds p50");
    let v: f64 = p50_series.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((v - f64_at(idle, "p50")).abs() < 1e-6, "{p50_series} vs {idle}");

    // The twin: idle 1 s, then its second request, then it closes.
    let (twin, r) = py_client(None, &[], &["idle_reuse", "127.0.0.1", &port, "3", "1"]);
    assert_eq!(r["outcomes"], serde_json::json!(["ok", "ok", "ok"]), "{r}");
    let twin_pid = pid_of(&r);
    let doc = d.wait_process(twin_pid, WAIT, "3 connections closed by the client", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "closed_by_local") == 3)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!((num(o, "closed_by_peer"), num(o, "resets_received"), num(o, "requests")), (0, 0, 6), "{o}");
    let idle = &o["idle_close_seconds"];
    assert_eq!(u64_at(idle, "samples"), 0, "{idle}");
    for q in ["min", "p50", "max"] {
        assert_eq!(idle[q], Value::Null, "{idle}");
    }
    assert_eq!(findings(&diagnosis(d, twin_pid)).len(), 0);
    drop((c, twin));
}

/// The CLOSE_WAIT leak scenario of tests/e2e/close_wait.rs (12 connections the server closed
/// after 1 s of idleness, never closed by the client), flagged once the oldest waited 5 s: the
/// finding carries the process's own CLOSE_WAIT figures.
#[test]
fn a_close_wait_leak_is_a_finding_with_the_process_figures() {
    let d = daemon();
    let (_server, port) = http_server("127.0.0.1", "idle:1");
    let remote = format!("127.0.0.1:{port}");
    let (c, r) = client(None, &["hold", "127.0.0.1", &port.to_string(), "12"]);
    let pid = pid_of(&r);
    d.wait_process(pid, Duration::from_secs(30), "12 in CLOSE_WAIT, a leak", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "close_wait/count") == 12 && o["close_wait"]["verdict"] == "leak")
    });
    // The process document before and after the diagnosis: growth_per_minute moves only with a
    // new sample; retry if one came in between.
    let mut checked = false;
    for _ in 0..5 {
        let before = d.process(pid).unwrap();
        let diag = diagnosis(d, pid);
        let after = d.process(pid).unwrap();
        let (b, a) =
            (&outbound(&before, &remote).unwrap()["close_wait"], &outbound(&after, &remote).unwrap()["close_wait"]);
        if b["growth_per_minute"] != a["growth_per_minute"] || b["count"] != a["count"] {
            continue;
        }
        assert_eq!(kinds(&diag), vec![kind_peer("close_wait_leak", &remote)], "{diag:#}");
        let f = &findings(&diag)[0];
        eprintln!("finding: {f}");
        assert_eq!((f["severity"].as_str(), f["direction"].as_str()), (Some("critical"), Some("outbound")));
        let e = &f["evidence"];
        assert_eq!(u64_at(e, "count"), 12);
        assert_eq!(e["count"], b["count"]);
        // The finding's figures are the entry's, rounded to a tenth.
        let growth = f64_at(e, "growth_per_minute");
        assert!((growth - f64_at(b, "growth_per_minute")).abs() <= 0.05 + 1e-9, "{e} vs {b}");
        let oldest = f64_at(e, "oldest_seconds");
        assert!(
            f64_at(b, "oldest_seconds") - 0.05 <= oldest && oldest <= f64_at(a, "oldest_seconds") + 0.05,
            "oldest_seconds {oldest}: before {b}, after {a}"
        );
        assert!(oldest >= 5.0, "{e}");
        // The process summary says the same.
        assert_eq!(before["close_wait"]["count"], 12);
        assert!(f["summary"].as_str().unwrap().contains("12"), "{f}");
        checked = true;
        break;
    }
    assert!(checked, "growth_per_minute changed between every pair of queries");
    drop(c);
}

/// One process with two patterns: `requests.get()` without a Session to nginx (70 connections at
/// 30 per second), then retries against a closed port: each finding once, for its own peer, the
/// critical one first, and nothing else.
#[test]
fn several_patterns_in_one_process_each_get_their_finding() {
    let d = daemon();
    let nginx = Nginx::start(free_port(), NginxOptions::default());
    let a = nginx.remote();
    let b = format!("127.0.0.1:{}", free_port());
    let (c, r) = py_client(None, &[], &["mixed", &format!("http://{a}/"), "70", "30", &format!("http://{b}/"), "3"]);
    assert_eq!(r["a"]["requests"], 70, "{r}");
    let pid = pid_of(&r);
    d.wait_process(pid, WAIT, "70 closed connections to A, 4 refused by B", |doc| {
        outbound(doc, &a).is_some_and(|o| num(o, "requests_per_connection/count") == 70)
            && outbound(doc, &b).is_some_and(|o| num(o, "connect_failures/refused") == 4)
    });
    let diag = diagnosis(d, pid);
    eprintln!("diagnosis: {diag}");
    assert_eq!(
        kinds(&diag),
        vec![kind_peer("connect_failures", &b), kind_peer("session_not_reused", &a)],
        "most severe first: {diag:#}"
    );
    let cf = finding(&diag, "connect_failures", &b).unwrap();
    assert_eq!(cf["severity"], "critical");
    refused_everywhere(&cf["evidence"], 4);
    assert_eq!((u64_at(&cf["evidence"], "bursts"), u64_at(&cf["evidence"], "last_burst_attempts")), (1, 4));
    let s = finding(&diag, "session_not_reused", &a).unwrap();
    assert_eq!(s["severity"], "warning");
    assert_eq!(u64_at(&s["evidence"], "connections"), 70);
    assert_eq!(f64_at(&s["evidence"], "requests_per_connection"), 1.0);
    drop(c);
}

/// The endpoint's errors, like `GET /api/v1/processes/{pid}`'s: an unknown pid and an exited
/// process past its retention are 404, a pid that is no number 400, all JSON.
#[test]
fn diagnosis_of_unknown_or_pruned_processes_is_404() {
    let d = daemon();
    let (status, body) = d.get("/api/v1/processes/999999999/diagnosis");
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string(), "{body}");
    check_openapi(&openapi(), "/api/v1/processes/{pid}/diagnosis", 404, &body);
    let (status, body) = d.get("/api/v1/processes/abc/diagnosis");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    check_openapi(&openapi(), "/api/v1/processes/{pid}/diagnosis", 400, &body);

    let nginx = Nginx::start(free_port(), NginxOptions::default());
    let (p, r) = py_client(None, &[], &["session", &format!("http://{}/", nginx.remote()), "1", "10"]);
    let pid = pid_of(&r);
    assert_eq!(findings(&diagnosis(d, pid)).len(), 0);
    assert!(p.finish().success());
    // Exited: still there for its retention, then pruned.
    d.wait_process(pid, Duration::from_secs(5), "exited", |doc| doc["exited"] == true);
    let (status, _) = d.get(&format!("/api/v1/processes/{pid}/diagnosis"));
    assert_eq!(status, 200, "an exited process is diagnosed until it is pruned");
    let deadline = Instant::now() + Duration::from_secs(15);
    while d.process(pid).is_some() {
        assert!(Instant::now() < deadline, "pid {pid} was not pruned");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = d.get(&format!("/api/v1/processes/{pid}/diagnosis"));
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string(), "{body}");
}

fn explain(d: &Daemon, pid: u32) -> (i32, String, String) {
    let out = Command::new(observer_bin())
        .args(["explain", &pid.to_string(), "--api", &d.api])
        .output()
        .expect("observer explain");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `observer explain PID` prints the findings for a person, most severe first, with their
/// summaries and advice; a healthy process gets a line saying no problem was found; an unknown
/// pid is an error (exit 1).
#[test]
fn observer_explain_prints_the_findings_most_severe_first() {
    let d = daemon();
    let nginx = Nginx::start(free_port(), NginxOptions::default());
    let a = nginx.remote();
    let b = format!("127.0.0.1:{}", free_port());
    let (c, r) = py_client(None, &[], &["mixed", &format!("http://{a}/"), "70", "30", &format!("http://{b}/"), "3"]);
    let pid = pid_of(&r);
    d.wait_process(pid, WAIT, "70 closed connections to A, 4 refused by B", |doc| {
        outbound(doc, &a).is_some_and(|o| num(o, "requests_per_connection/count") == 70)
            && outbound(doc, &b).is_some_and(|o| num(o, "connect_failures/refused") == 4)
    });
    let diag = diagnosis(d, pid);
    assert_eq!(kinds(&diag).len(), 2, "{diag:#}");
    let (code, out, err) = explain(d, pid);
    eprintln!("observer explain {pid}:\n{out}");
    assert_eq!(code, 0, "{out}{err}");
    let at = |s: &str| out.find(s).unwrap_or_else(|| panic!("{s:?} not in the output:\n{out}"));
    assert!(at("connect_failures") < at("session_not_reused"), "critical first:\n{out}");
    for f in findings(&diag) {
        at(f["summary"].as_str().unwrap());
        at(f["advice"].as_str().unwrap());
    }
    assert!(at(findings(&diag)[0]["summary"].as_str().unwrap()) < at(findings(&diag)[1]["summary"].as_str().unwrap()));

    let (healthy, r) = py_client(None, &[], &["session", &format!("http://{a}/"), "5", "100"]);
    let healthy_pid = pid_of(&r);
    assert_eq!(findings(&diagnosis(d, healthy_pid)).len(), 0);
    let (code, out, err) = explain(d, healthy_pid);
    eprintln!("observer explain {healthy_pid}:\n{out}");
    assert_eq!(code, 0, "{out}{err}");
    let lower = out.to_lowercase();
    assert!(lower.contains("no connection-pool problem found"), "no line saying nothing was found:\n{out}");
    for kind in ["session_not_reused", "pool_too_small", "connect_failures", "stale_reuse", "close_wait_leak"] {
        assert!(!out.contains(kind), "{out}");
    }

    let (code, out, err) = explain(d, 999_999_999);
    eprintln!("observer explain 999999999: exit {code}: {err}");
    assert_eq!(code, 1, "an unknown pid is an API error: {out}{err}");
    drop((c, healthy));
}

/// A keep-alive `requests.Session` does 50 requests and idles with its connection open; the
/// daemon reads open connections every 60 s only, yet the process document right after, and a
/// /metrics scrape right after (another such client), count all 50: queries read the kernel's
/// counters themselves.
#[test]
fn queries_read_open_connections_counters_at_query_time() {
    let d = daemon();
    let nginx = Nginx::start(free_port(), NginxOptions::default());
    let remote = nginx.remote();
    let url = format!("http://{remote}/");
    // 2 s of requests: the connection's opening reached the daemon long before the query.
    let (c1, r) = py_client(None, &[], &["session", &url, "50", "25"]);
    assert_eq!(r["requests"], 50, "{r}");
    let doc = d.process(pid_of(&r)).expect("the client");
    let o = outbound(&doc, &remote).expect("its peer");
    assert_eq!((num(o, "connections_opened"), num(o, "requests")), (1, 50), "{o}");
    assert_eq!(num(o, "sockets/ESTABLISHED"), 1, "still open: {o}");

    let (c2, r) = py_client(None, &[], &["session", &url, "50", "25"]);
    let pid = pid_of(&r);
    let metrics = d.metrics();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("observer_requests_total{")
                && l.contains(&format!("pid=\"{pid}\""))
                && l.contains(&format!("peer=\"{remote}\""))
        })
        .unwrap_or_else(|| panic!("no observer_requests_total for {pid}"));
    assert!(line.ends_with(" 50"), "{line}");
    drop((c1, c2));
}
