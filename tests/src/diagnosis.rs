//! The diagnosis tests' own pieces: a local nginx (plain HTTP or TLS, on the host or in a
//! network namespace), the Python clients that make each connection-pool pattern (with their
//! own account of what they did), and reading `GET /api/v1/processes/{pid}/diagnosis`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::Daemon;
use crate::processes::{Proc, sh};
use crate::scenarios::spawn_client;

/// The clients of the diagnosis tests, run with `python3 -c`: each scenario prints one JSON line
/// (its pid and what it did, by its own account), then "DONE", and keeps its sockets until its
/// standard input closes (`close` closes them and answers "CLOSED"; `get URL` makes one
/// `requests.get()` and answers "GOT <status>" or "FAILED <error>").
const CLIENT_PY: &str = r##"
import json
import logging
import os
import socket
import sys
import threading
import time

KEEP = []


def paced(n, rate, fn):
    """fn() n times, the i-th no earlier than i/rate seconds after the first."""
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        fn()
    return time.monotonic() - start


def no_session(url, n, rate):
    """requests.get() without a Session, n times at `rate` per second at most."""
    import requests
    n, rate = int(n), float(rate)
    done = [0]

    def one():
        requests.get(url, timeout=5).raise_for_status()
        done[0] += 1

    took = paced(n, rate, one)
    return {"requests": done[0], "seconds": took}


def session(url, n, rate):
    """One requests.Session, n GETs at `rate` per second at most; its connection stays open."""
    import requests
    n, rate = int(n), float(rate)
    s = requests.Session()
    done = [0]

    def one():
        s.get(url, timeout=5).raise_for_status()
        done[0] += 1

    took = paced(n, rate, one)
    KEEP.append(s)
    return {"requests": done[0], "seconds": took}


def pool(url, threads, rounds, maxsize):
    """A urllib3 PoolManager(maxsize, block=False) shared by `threads` worker threads, in
    `rounds` rounds: each worker takes a connection for one GET (headers first,
    preload_content=False) and releases it once every worker holds one, those that came from
    the pool first. So the full pool rejects the newest connections, each after one request.
    Reports what urllib3's own log says (connections started, "Connection pool is full,
    discarding connection") and what its connections carried."""
    import urllib3
    from urllib3.connection import HTTPConnection

    lock = threading.Lock()
    counts = {"started": 0, "discarded": 0}
    conns = []  # per connection made: [requests, closed]

    class Count(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            with lock:
                if msg.startswith("Starting new HTTP connection"):
                    counts["started"] += 1
                elif msg.startswith("Connection pool is full, discarding connection"):
                    counts["discarded"] += 1

    log = logging.getLogger("urllib3.connectionpool")
    log.setLevel(logging.DEBUG)
    log.addHandler(Count())

    orig_connect, orig_request, orig_close = HTTPConnection.connect, HTTPConnection.request, HTTPConnection.close

    def connect(self):
        orig_connect(self)
        with lock:
            self._obs = [0, False]
            conns.append(self._obs)

    def request(self, *a, **kw):
        # The socket is connected inside the first request (http.client's auto_open).
        r = orig_request(self, *a, **kw)
        self._obs[0] += 1
        return r

    def close(self):
        obs = getattr(self, "_obs", None)
        if obs is not None:
            obs[1] = True
        orig_close(self)

    HTTPConnection.connect, HTTPConnection.request, HTTPConnection.close = connect, request, close
    pm = urllib3.PoolManager(maxsize=int(maxsize), block=False, retries=False)
    threads, rounds = int(threads), int(rounds)
    start, holding, pooled_back = (threading.Barrier(threads, timeout=20) for _ in range(3))
    errors = []

    def work():
        for _ in range(rounds):
            start.wait()
            r = pm.request("GET", url, preload_content=False)
            from_pool = r.connection._obs[0] > 1
            holding.wait()  # every worker holds a connection now
            if from_pool:
                r.read()  # reading the body to its end releases the connection to the pool
            pooled_back.wait()
            if not from_pool:
                r.read()
            if r.status != 200:
                errors.append(r.status)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    KEEP.append(pm)
    with lock:
        return {
            **counts,
            "connections": len(conns),
            "closed": sum(1 for r, c in conns if c),
            "closed_after_at_most_2": sum(1 for r, c in conns if c and r <= 2),
            "carried_at_least_3": sum(1 for r, c in conns if r >= 3),
            "per_connection": sorted(r for r, c in conns),
            "requests": sum(r for r, c in conns),
            "errors": errors,
        }


def read_response(c):
    """One HTTP response with a Content-Length; b"" at EOF before anything."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        chunk = c.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n"


def per_connection(host, port, n, per_conn):
    """n connections, one after the other, each carrying per_conn keep-alive requests, then
    closed by the client (TIME_WAIT on this side)."""
    ok = 0
    ports = set()
    for _ in range(int(n)):
        c = socket.create_connection((host, int(port)))
        ports.add(c.getsockname()[1])
        for _ in range(int(per_conn)):
            c.sendall(REQUEST)
            if read_response(c).startswith(b"HTTP/1.1 200"):
                ok += 1
        c.close()
    return {"requests": ok, "local_ports": len(ports)}


def retry_calls(url, total, calls, pause):
    """`calls` GETs of a requests.Session with urllib3 Retry(total, backoff_factor=0), `pause`
    seconds apart."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=Retry(total=int(total), backoff_factor=0)))
    errors = []
    for i in range(int(calls)):
        if i:
            time.sleep(float(pause))
        try:
            s.get(url, timeout=5)
            errors.append(None)
        except requests.exceptions.ConnectionError as e:
            errors.append(str(e)[:200])
    KEEP.append(s)
    return {"errors": errors}


def idle_reuse(host, port, n, idle):
    """n keep-alive connections at once: one request each, `idle` seconds of silence, then a
    second request on the same socket; then the client closes. Reports how each second request
    ended: "ok" (answered), "eof" (the server had closed: its FIN, then its RST for the request)
    or "reset"."""
    outcomes = []
    lock = threading.Lock()

    def one():
        c = socket.create_connection((host, int(port)))
        c.sendall(REQUEST)
        first = read_response(c)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(float(idle))
        try:
            c.sendall(REQUEST)
            second = read_response(c)
            outcome = "ok" if second.startswith(b"HTTP/1.1 200") else "eof"
        except (ConnectionResetError, BrokenPipeError):
            outcome = "reset"
        c.close()
        with lock:
            outcomes.append(outcome)

    ts = [threading.Thread(target=one) for _ in range(int(n))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {"outcomes": sorted(outcomes)}


def mixed(url_a, n, rate, url_b, total):
    """requests.get() without a Session to A, then one call with urllib3 retries against B."""
    a = no_session(url_a, n, rate)
    b = retry_calls(url_b, total, 1, 0)
    return {"a": a, "b": b}


SCENARIOS = {
    "no_session": no_session,
    "session": session,
    "pool": pool,
    "per_connection": per_connection,
    "retry_calls": retry_calls,
    "idle_reuse": idle_reuse,
    "mixed": mixed,
}


def main():
    result = SCENARIOS[sys.argv[1]](*sys.argv[2:])
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    print("DONE", flush=True)
    for line in sys.stdin:
        if line.split() == ["close"]:
            for kept in KEEP:
                kept.close() if hasattr(kept, "close") else kept.clear()
            KEEP.clear()
            print("CLOSED", flush=True)
        elif line.split()[:1] == ["get"]:
            import requests
            try:
                print(f"GOT {requests.get(line.split()[1], timeout=5).status_code}", flush=True)
            except requests.exceptions.RequestException as e:
                print(f"FAILED {type(e).__name__}", flush=True)


main()
"##;

/// A client scenario of [`CLIENT_PY`] (optionally in a network namespace, with extra
/// environment): the process, alive until finished or dropped, and its JSON result.
pub fn py_client(netns: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> (Proc, Value) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "python3"]);
            c
        }
        None => Command::new("python3"),
    };
    cmd.args(["-c", CLIENT_PY]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_client(cmd)
}

/// The pid a client scenario reported.
pub fn pid_of(result: &Value) -> u32 {
    result["pid"].as_u64().expect("pid") as u32
}

/// A self-signed certificate for 127.0.0.1 (its own CA), made once per test binary.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

static CERT: OnceLock<Cert> = OnceLock::new();

extern "C" fn remove_cert_dir() {
    if let Some(dir) = CERT.get().and_then(|c| c.cert.parent()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The certificate of [`Cert`], removed when the test binary exits.
pub fn self_signed() -> &'static Cert {
    CERT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("observer-diag-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(remove_cert_dir) };
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        sh(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        Cert { cert, key }
    })
}

/// How to run an [`Nginx`].
#[derive(Default)]
pub struct NginxOptions<'a> {
    /// `keepalive_timeout` (nginx's default is 75s).
    pub keepalive_timeout: Option<&'a str>,
    /// Serve TLS with this certificate.
    pub tls: Option<&'a Cert>,
    /// Run inside this network namespace.
    pub netns: Option<&'a str>,
}

/// nginx in the foreground, one process (`master_process off`), answering `200 ok` to every
/// request on 127.0.0.1:`port`; killed and its directory removed when dropped.
pub struct Nginx {
    proc: Option<Proc>,
    dir: PathBuf,
    pub port: u16,
}

impl Nginx {
    pub fn start(port: u16, o: NginxOptions<'_>) -> Nginx {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("observer-diag-nginx-{}-{n}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let d = dir.display();
        let tls = match o.tls {
            Some(c) => format!(" ssl; ssl_certificate {}; ssl_certificate_key {}", c.cert.display(), c.key.display()),
            None => String::new(),
        };
        let keepalive = o.keepalive_timeout.map(|t| format!("keepalive_timeout {t};")).unwrap_or_default();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; \
             uwsgi_temp_path {d}; scgi_temp_path {d}; keepalive_requests 100000; {keepalive}\n\
             server {{ listen 127.0.0.1:{port}{tls}; location / {{ return 200 \"ok\"; }} }} }}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = match o.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nginx"]);
                c
            }
            None => Command::new("nginx"),
        };
        cmd.arg("-p").arg(&dir).arg("-c").arg(&conf_path);
        let n = Nginx { proc: Some(Proc::spawn(cmd)), dir, port };
        // Listening, seen by ss (a probe connection would be a connection of its own).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listening = ns_ss(o.netns, &["state", "listening", "sport", "=", &format!(":{port}")]);
            if !listening.trim().is_empty() {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port}: {}",
                std::fs::read_to_string(n.dir.join("logs/error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn remote(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        drop(self.proc.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ss -Htan <filter>` output, in a network namespace or on the host.
pub fn ns_ss(netns: Option<&str>, filter: &[&str]) -> String {
    let mut args = vec![];
    if let Some(ns) = netns {
        args.extend(["ip", "netns", "exec", ns]);
    }
    args.extend(["ss", "-Htan"]);
    args.extend_from_slice(filter);
    sh(&args)
}

/// Sockets `ss -Htan <filter>` lists, in a network namespace or on the host.
pub fn ns_ss_count(netns: Option<&str>, filter: &[&str]) -> u64 {
    ns_ss(netns, filter).lines().filter(|l| !l.trim().is_empty()).count() as u64
}

/// `GET /api/v1/processes/{pid}/diagnosis`, which must answer 200.
pub fn diagnosis(d: &Daemon, pid: u32) -> Value {
    let (status, v) = d.get(&format!("/api/v1/processes/{pid}/diagnosis"));
    assert_eq!(status, 200, "GET diagnosis of {pid}: {v}");
    assert_eq!(v["pid"], pid, "{v}");
    assert!(v["findings"].is_array(), "{v}");
    for f in v["findings"].as_array().unwrap() {
        check_finding_shape(f);
    }
    v
}

/// Poll the diagnosis until `pred` holds; panic with the last one after `timeout`.
pub fn wait_diagnosis(d: &Daemon, pid: u32, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let v = diagnosis(d, pid);
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for the diagnosis of {pid}: {what}\nlast: {v:#}\nprocess: {:#}",
            d.process(pid).unwrap_or(Value::Null)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The findings of a diagnosis document.
pub fn findings(doc: &Value) -> &Vec<Value> {
    doc["findings"].as_array().expect("findings")
}

/// `(kind, peer)` of every finding, in the document's order.
pub fn kinds(doc: &Value) -> Vec<(String, String)> {
    findings(doc)
        .iter()
        .map(|f| (f["kind"].as_str().unwrap().to_string(), f["peer"].as_str().unwrap().to_string()))
        .collect()
}

/// The finding of `kind` for `peer`, if any.
pub fn finding<'a>(doc: &'a Value, kind: &str, peer: &str) -> Option<&'a Value> {
    findings(doc).iter().find(|f| f["kind"] == kind && f["peer"] == peer)
}

/// The finding's documented fields, each of the documented type.
pub fn check_finding_shape(f: &Value) {
    let kind = f["kind"].as_str().unwrap_or_else(|| panic!("kind: {f}"));
    assert!(
        [
            "session_not_reused",
            "pool_too_small",
            "close_wait_leak",
            "stale_reuse",
            "connect_failures",
            "tls_handshake_per_request",
            "time_wait_exhaustion_risk"
        ]
        .contains(&kind),
        "unknown kind {kind}: {f}"
    );
    assert!(["warning", "critical"].contains(&f["severity"].as_str().unwrap_or("")), "{f}");
    assert!(["outbound", "inbound"].contains(&f["direction"].as_str().unwrap_or("")), "{f}");
    assert!(f["peer"].as_str().is_some_and(|p| p.contains(':')), "{f}");
    assert!(f["summary"].as_str().is_some_and(|s| !s.is_empty()), "{f}");
    assert!(f["advice"].as_str().is_some_and(|s| !s.is_empty()), "{f}");
    assert!(f["evidence"].is_object(), "{f}");
}

/// The number at `path` ("a/b") of `v`, as f64 (panics if it is not a number).
pub fn f64_at(v: &Value, path: &str) -> f64 {
    v.pointer(&format!("/{path}")).and_then(Value::as_f64).unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// The integer at `path` ("a/b") of `v` (panics if it is not one).
pub fn u64_at(v: &Value, path: &str) -> u64 {
    v.pointer(&format!("/{path}")).and_then(Value::as_u64).unwrap_or_else(|| panic!("{path} is not an integer in {v}"))
}
