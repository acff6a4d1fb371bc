//! Connection reuse: requests per connection and the pool reuse ratio, from the kernel, with
//! real clients (Python requests and urllib3, curl, redis-benchmark, Java's HttpClient) and
//! real servers.

use std::process::Command;
use std::time::Duration;

use observer_e2e::daemon::{Daemon, shared_daemon_with};
use observer_e2e::document::{inbound, num, outbound};
use observer_e2e::net::free_port;
use observer_e2e::paths::scenario;
use observer_e2e::processes::Proc;
use observer_e2e::scenarios::{client, http_server, spawn_client};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// Open connections report their requests at each flush: every second here.
fn daemon() -> &'static Daemon {
    shared_daemon_with(&["--io-flush-interval", "1"])
}

fn pid_of(result: &Value) -> u32 {
    result["pid"].as_u64().expect("pid") as u32
}

fn buckets(entry: &Value) -> Vec<(u64, u64)> {
    entry["requests_per_connection"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["le"].as_u64().unwrap(), b["count"].as_u64().unwrap()))
        .collect()
}

#[test]
fn requests_without_a_session_never_reuse() {
    let d = daemon();
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(None, &["requests_no_session", &format!("http://{remote}/"), "100"]);
    // Requests on a connection still open can be counted by a flush before its close arrives
    // (with its requests-per-connection figure): wait for the 100 closes too.
    let doc = d.wait_process(pid_of(&result), WAIT, "100 requests on 100 closed connections", |doc| {
        outbound(doc, &remote).is_some_and(|o| {
            num(o, "requests") == 100
                && num(o, "connections_opened") == 100
                && num(o, "requests_per_connection/count") == 100
        })
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(o["reuse_ratio"].as_f64(), Some(1.0));
    assert_eq!(buckets(o), vec![(1, 100)], "every connection carried exactly one request");
    assert_eq!(num(o, "requests_per_connection/sum"), 100);
    let rate = o["new_connections_per_second"].as_f64().unwrap();
    assert!((rate - 100.0 / 60.0).abs() < 1e-9, "100 connections in the last minute: {rate}");
    // The server's fixed 66-byte answer (tests/scenarios/http_server.py RESPONSE) per request.
    assert_eq!(num(o, "bytes_received"), 100 * 66);
    assert!(num(o, "bytes_sent") > 100 * 50, "requests' request lines and headers");
    drop(c);
}

#[test]
fn requests_with_a_session_reuse_one_connection() {
    let d = daemon();
    let (server, port) = http_server("127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(None, &["requests_session", &format!("http://{remote}/"), "100"]);
    // The connection stays open: its requests arrive with the periodic flush.
    let doc = d.wait_process(pid_of(&result), WAIT, "100 requests on 1 connection", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "requests") == 100)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(num(o, "connections_opened"), 1);
    assert_eq!(o["reuse_ratio"].as_f64(), Some(100.0));
    assert_eq!(num(o, "requests_per_connection/count"), 0, "still open");
    // The server's side of the same connection: 100 requests starting with a receive.
    let s = d.wait_process(server.pid(), WAIT, "100 requests served", |doc| {
        inbound(doc, &remote).is_some_and(|i| num(i, "requests") == 100)
    });
    assert_eq!(num(inbound(&s, &remote).unwrap(), "connections_accepted"), 1);
    // Closing hands the final counters over: one connection that carried 100 requests.
    let pid = pid_of(&result);
    c.finish();
    let doc = d.wait_process(pid, WAIT, "the connection closed", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "requests_per_connection/count") == 1)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(buckets(o), vec![(128, 1)]);
    assert_eq!(num(o, "requests_per_connection/max"), 100);
    assert_eq!(num(o, "requests"), 100, "no double count between flush and close");
}

/// urllib3's PoolManager(maxsize=2) driven by 8 threads: more connections than the pool holds,
/// and every connection the full pool rejects is closed by the client. The figures must be the
/// ones urllib3's own log reports.
#[test]
fn a_pool_smaller_than_the_thread_count_discards_connections() {
    let d = daemon();
    let (_server, port) = http_server("127.0.0.1", "delay:0.005");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(None, &["pool_overflow", &format!("http://{remote}/"), "8", "25", "2"]);
    assert_eq!(result["errors"].as_array().unwrap().len(), 0, "{result}");
    let started = result["started"].as_u64().unwrap();
    let discarded = result["discarded"].as_u64().unwrap();
    assert!(started > 2, "8 threads on a pool of 2 open more than 2 connections: {result}");
    assert!(discarded > 0, "{result}");
    let doc = d.wait_process(pid_of(&result), WAIT, "200 requests", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "requests") == 200 && num(o, "closed_by_local") == discarded)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(num(o, "connections_opened"), started, "\"Starting new HTTP connection\" lines");
    assert_eq!(num(o, "closed_by_local"), discarded, "\"Connection pool is full, discarding connection\" lines");
    assert_eq!(num(o, "closed_by_peer"), 0);
    assert_eq!(num(o, "sockets/ESTABLISHED"), started - discarded, "the pool keeps the rest");
    assert!(started - discarded <= 2);
    let ratio = o["reuse_ratio"].as_f64().unwrap();
    assert!((ratio - 200.0 / started as f64).abs() < 1e-9);
    drop(c);
}

/// curl fetching 20 URLs of one host in one invocation reuses one connection.
#[test]
fn curl_reuses_one_connection_for_twenty_urls() {
    let d = daemon();
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "-w", "%{num_connects}\\n"]);
    for i in 0..20 {
        cmd.args(["-o", "/dev/null", &format!("http://{remote}/{i}")]);
    }
    let child = cmd.stdout(std::process::Stdio::piped()).spawn().expect("curl");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    // curl's own count of new connections per transfer.
    let connects: u64 = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse::<u64>().unwrap()).sum();
    assert_eq!(connects, 1);
    let doc = d.wait_process(pid, WAIT, "20 requests", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "requests_per_connection/count") == 1)
    });
    assert_eq!(doc["comm"], "curl");
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(num(o, "connections_opened"), connects);
    assert_eq!(num(o, "requests"), 20);
    assert_eq!(buckets(o), vec![(32, 1)]);
    assert_eq!(num(o, "requests_per_connection/max"), 20);
}

/// A real non-HTTP peer: redis-benchmark against redis-server, with and without keep-alive.
///
/// Set-up exchanges of the protocol: redis-benchmark first opens one connection of its own to
/// read the server's configuration (`CONFIG GET save` and `CONFIG GET appendonly`, sent
/// together: one exchange), then runs its clients. So `-c 1 -n 100 -k 1` is 2 connections and
/// 101 requests, and `-k 0` (a new connection per request) is 101 connections and 101 requests.
#[test]
fn redis_benchmark_with_and_without_keepalive() {
    let d = daemon();
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    let server = Proc::spawn(cmd);
    let remote = format!("127.0.0.1:{port}");
    // Wait until it listens. The probe that succeeds is a connection redis accepts too (with
    // no request on it): the server's counts below include it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&remote).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let probe = 1;
    let bench = |keepalive: &str| -> u32 {
        let child = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "1", "-n", "100", "-k", keepalive])
            .args(["-t", "set", "-q"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-benchmark");
        let pid = child.id();
        assert!(child.wait_with_output().unwrap().status.success());
        pid
    };

    let keep = bench("1");
    let doc = d.wait_process(keep, WAIT, "2 connections, 101 requests", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "requests_per_connection/count") == 2)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(num(o, "connections_opened"), 2);
    assert_eq!(num(o, "requests"), 101);
    assert_eq!(buckets(o), vec![(1, 1), (128, 1)], "the config connection, then 100 SETs on one");
    let s = d.wait_process(server.pid(), WAIT, "server side", |doc| {
        inbound(doc, &remote).is_some_and(|i| num(i, "requests") == 101)
    });
    assert_eq!(num(inbound(&s, &remote).unwrap(), "connections_accepted"), 2 + probe);

    let each = bench("0");
    let doc = d.wait_process(each, WAIT, "101 connections, 101 requests", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "requests_per_connection/count") == 101)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(num(o, "connections_opened"), 101);
    assert_eq!(num(o, "requests"), 101);
    assert_eq!(o["reuse_ratio"].as_f64(), Some(1.0));
    assert_eq!(buckets(o), vec![(1, 101)]);
    let s = d.wait_process(server.pid(), WAIT, "server side", |doc| {
        inbound(doc, &remote).is_some_and(|i| num(i, "requests") == 202)
    });
    assert_eq!(num(inbound(&s, &remote).unwrap(), "connections_accepted"), 2 + 101 + probe);
}

/// Java's java.net.http.HttpClient keeps its connection alive between requests.
#[test]
fn java_httpclient_reuses_its_connection() {
    let d = daemon();
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("java");
    cmd.arg(scenario("JavaHttpClient.java")).args([&format!("http://{remote}/"), "20"]);
    let (p, result) = spawn_client(cmd);
    let doc = d.wait_process(pid_of(&result), WAIT, "20 requests on 1 connection", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "requests") == 20)
    });
    let o = outbound(&doc, &remote).unwrap();
    assert_eq!(num(o, "connections_opened"), 1);
    assert_eq!(num(o, "sockets/ESTABLISHED"), 1);
    assert_eq!(o["reuse_ratio"].as_f64(), Some(20.0));
    assert_eq!(doc["comm"], "java");
    p.finish();
}

/// The same figures in the metrics, and the native histogram in the protobuf exposition.
#[test]
fn reuse_metrics() {
    let d = daemon();
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(None, &["requests_no_session", &format!("http://{remote}/"), "5"]);
    let pid = pid_of(&result);
    d.wait_process(pid, WAIT, "5 requests", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "requests_per_connection/count") == 5)
    });
    let text = d.metrics();
    let sample = |name: &str| -> String {
        text.lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains(&format!("pid=\"{pid}\""))
                    && l.contains(&format!("peer=\"{remote}\""))
            })
            .unwrap_or_else(|| panic!("no {name} for {pid} {remote}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(sample("observer_requests_total{"), "5");
    assert_eq!(sample("observer_reuse_ratio{"), "1.0");
    assert_eq!(sample("observer_requests_per_connection_count{"), "5");
    assert_eq!(sample("observer_requests_per_connection_bucket{le=\"1.0\""), "5");

    // What Prometheus asks for with native histograms enabled.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent
        .get(&format!("{}/metrics", d.api))
        .header("Accept", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,text/plain;q=0.3")
        .call()
        .unwrap();
    let ct = resp.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert!(ct.starts_with("application/vnd.google.protobuf"), "{ct}");
    let body = resp.body_mut().read_to_vec().unwrap();
    assert!(body.len() > 100);
    assert!(body.windows(32).any(|w| w == b"observer_requests_per_connection"));
    drop(c);
}
