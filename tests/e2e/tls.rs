//! TLS handshakes recognised from the wire bytes, for any TLS library: Python (OpenSSL),
//! `openssl s_client`, Java's JSSE, against a TLS server on loopback with a certificate from a
//! throw-away CA made here. The host name the clients use, `api.observer.test`, is mapped to
//! 127.0.0.1 by an /etc/hosts entry this binary adds and removes.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use observer_e2e::daemon::{Daemon, shared_daemon_with};
use observer_e2e::document::{inbound, num, outbound};
use observer_e2e::paths::scenario;
use observer_e2e::processes::Proc;
use observer_e2e::scenarios::{client, http_server, spawn_client, spawn_http_server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const HOST: &str = "api.observer.test";
const HOSTS_LINE: &str = "127.0.0.1 api.observer.test # observer e2e tls";

fn daemon() -> &'static Daemon {
    shared_daemon_with(&["--io-flush-interval", "1"])
}

fn pid_of(result: &Value) -> u32 {
    result["pid"].as_u64().expect("pid") as u32
}

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

extern "C" fn remove_hosts_entry() {
    if let Ok(text) = std::fs::read_to_string("/etc/hosts") {
        let kept: String = text.lines().filter(|l| *l != HOSTS_LINE).map(|l| format!("{l}\n")).collect();
        let _ = std::fs::write("/etc/hosts", kept);
    }
}

/// A CA, a server certificate for [`HOST`] signed by it, a Java trust store with the CA, and the
/// /etc/hosts entry (removed when the test binary exits).
fn pki() -> &'static Pki {
    static P: OnceLock<Pki> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("observer-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(args[0]).args(&args[1..]).current_dir(&dir).output().expect(args[0]);
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        run(&[
            &["openssl", "req", "-x509"],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=observer e2e CA"],
        ]
        .concat());
        run(&[
            &["openssl", "req"],
            &ec[..],
            &["-keyout", "server.key", "-out", "server.csr", "-subj", &format!("/CN={HOST}")],
        ]
        .concat());
        std::fs::write(dir.join("ext"), format!("subjectAltName=DNS:{HOST}\n")).unwrap();
        run(&[
            "openssl",
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "ext",
        ]);
        run(&[
            "keytool",
            "-importcert",
            "-noprompt",
            "-alias",
            "ca",
            "-file",
            "ca.pem",
            "-keystore",
            "trust.p12",
            "-storetype",
            "PKCS12",
            "-storepass",
            "changeit",
        ]);
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !hosts.lines().any(|l| l == HOSTS_LINE) {
            let sep = if hosts.is_empty() || hosts.ends_with('\n') { "" } else { "\n" };
            std::fs::write("/etc/hosts", format!("{hosts}{sep}{HOSTS_LINE}\n")).unwrap();
        }
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(remove_hosts_entry) };
        Pki { dir }
    })
}

/// `tests/scenarios/http_server.py` serving TLS with the server certificate.
fn tls_server(mode: &str) -> (Proc, u16) {
    let p = pki();
    let mut cmd = Command::new("python3");
    cmd.arg(scenario("http_server.py")).args(["--host", "127.0.0.1", "--port", "0", "--mode", mode]).args([
        "--tls",
        &p.path("server.pem"),
        &p.path("server.key"),
    ]);
    spawn_http_server(cmd)
}

/// A Python client scenario that trusts the CA (`trust`) or not.
fn py_client(args: &[&str], trust: bool) -> (Proc, Value) {
    let mut cmd = Command::new("python3");
    cmd.arg(scenario("client.py")).args(args);
    if trust {
        cmd.env("REQUESTS_CA_BUNDLE", pki().path("ca.pem"));
    } else {
        cmd.env_remove("REQUESTS_CA_BUNDLE");
    }
    spawn_client(cmd)
}

/// A number at `path` ("a/b/c"), or None while it is not there (e.g. `tls` still null).
fn opt(v: &Value, path: &str) -> Option<u64> {
    v.pointer(&format!("/{path}")).and_then(Value::as_u64)
}

fn tls_of(entry: &Value) -> &Value {
    &entry["tls"]
}

#[test]
fn requests_without_a_session_pays_a_handshake_per_request() {
    let d = daemon();
    let (server, port) = tls_server("keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = py_client(&["requests_no_session", &format!("https://{HOST}:{port}/"), "20"], true);
    let doc = d.wait_process(pid_of(&result), WAIT, "20 handshakes", |doc| {
        outbound(doc, &remote).is_some_and(|o| opt(o, "tls/handshakes") == Some(20) && opt(o, "requests") == Some(20))
    });
    let o = outbound(&doc, &remote).unwrap();
    let t = tls_of(o);
    assert_eq!(num(o, "connections_opened"), 20);
    assert_eq!((num(t, "resumed"), num(t, "failed")), (0, 0));
    assert_eq!(num(t, &format!("server_names/{HOST}/handshakes")), 20, "SNI is the URL's host name: {t}");
    assert_eq!(t["server_names"].as_object().unwrap().len(), 1);
    assert_eq!(num(t, "versions/TLS1.3"), 20);
    assert_eq!(num(t, "handshake_ms/count"), 20);
    let mean = t["handshake_ms"]["mean"].as_f64().unwrap();
    assert!(mean > 0.0 && mean < 1000.0, "handshake mean {mean} ms");
    // The handshake is not a request: one request per connection.
    assert_eq!(o["reuse_ratio"].as_f64(), Some(1.0));
    // The server saw the same handshakes on its listener, without a server name of its own.
    let s = d.wait_process(server.pid(), WAIT, "server side", |doc| {
        inbound(doc, &remote).is_some_and(|i| opt(i, "tls/handshakes") == Some(20))
    });
    let i = inbound(&s, &remote).unwrap();
    assert_eq!(num(i, &format!("tls/server_names/{HOST}/handshakes")), 20);
    assert_eq!(num(i, "requests"), 20);
    drop(c);
}

#[test]
fn requests_with_a_session_pays_one_handshake() {
    let d = daemon();
    let (_server, port) = tls_server("keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = py_client(&["requests_session", &format!("https://{HOST}:{port}/"), "20"], true);
    let doc = d.wait_process(pid_of(&result), WAIT, "20 requests on 1 connection", |doc| {
        outbound(doc, &remote).is_some_and(|o| opt(o, "requests") == Some(20))
    });
    let o = outbound(&doc, &remote).unwrap();
    let t = tls_of(o);
    assert_eq!(num(o, "connections_opened"), 1);
    assert_eq!((num(t, "handshakes"), num(t, "resumed"), num(t, "failed")), (1, 0, 0), "{t}");
    assert_eq!(num(t, &format!("server_names/{HOST}/handshakes")), 1);
    assert_eq!(o["reuse_ratio"].as_f64(), Some(20.0), "the handshake's exchanges are not requests");
    drop(c);
}

/// `openssl s_client -reconnect`: one full handshake, then five that resume its session (TLS 1.2
/// session resumption; the server keeps a session cache and issues tickets).
#[test]
fn s_client_reconnect_resumes() {
    let d = daemon();
    let (_server, port) = tls_server("keepalive");
    let remote = format!("127.0.0.1:{port}");
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &remote, "-servername", HOST, "-reconnect", "-tls1_2", "-CAfile"])
        .arg(pki().path("ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    let pid = child.id();
    let doc = d.wait_process(pid, WAIT, "6 handshakes", |doc| {
        outbound(doc, &remote).is_some_and(|o| opt(o, "tls/handshakes") == Some(6))
    });
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let reused = text.lines().filter(|l| l.starts_with("Reused,")).count();
    assert_eq!(reused, 5, "openssl's own account: {text}");
    let t = tls_of(outbound(&doc, &remote).unwrap()).clone();
    assert_eq!(num(&t, "resumed"), reused as u64, "{t}");
    assert_eq!(num(&t, "failed"), 0);
    assert_eq!(num(&t, "versions/TLS1.2"), 6);
    assert_eq!(num(&t, &format!("server_names/{HOST}/resumed")), 5);
}

/// A client that rejects the server's certificate (it does not trust the CA).
#[test]
fn a_rejected_certificate_is_a_failed_handshake() {
    let d = daemon();
    let (_server, port) = tls_server("keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = py_client(&["untrusted", &format!("https://{HOST}:{port}/")], false);
    assert!(result["error"].as_str().is_some_and(|e| e.starts_with("SSLError")), "{result}");
    let doc = d.wait_process(pid_of(&result), WAIT, "1 failed handshake", |doc| {
        outbound(doc, &remote).is_some_and(|o| opt(o, "tls/failed") == Some(1))
    });
    let t = tls_of(outbound(&doc, &remote).unwrap());
    assert_eq!((num(t, "handshakes"), num(t, "resumed")), (1, 0), "{t}");
    assert_eq!(num(t, "handshake_ms/count"), 0, "a failed handshake has no duration");
    drop(c);
}

/// Java's HttpClient (JSSE, not OpenSSL): one handshake for 20 requests on its pooled connection.
#[test]
fn java_httpclient_over_tls() {
    let d = daemon();
    let (_server, port) = tls_server("keepalive");
    let remote = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("java");
    cmd.arg(format!("-Djavax.net.ssl.trustStore={}", pki().path("trust.p12")))
        .arg("-Djavax.net.ssl.trustStorePassword=changeit")
        .arg(scenario("JavaHttpClient.java"))
        .args([&format!("https://{HOST}:{port}/"), "20"]);
    let (p, result) = spawn_client(cmd);
    let doc = d.wait_process(pid_of(&result), WAIT, "20 requests over 1 TLS connection", |doc| {
        outbound(doc, &remote).is_some_and(|o| opt(o, "requests") == Some(20) && opt(o, "tls/handshakes") == Some(1))
    });
    let o = outbound(&doc, &remote).unwrap();
    let t = tls_of(o);
    assert_eq!(doc["comm"], "java");
    assert_eq!(num(o, "connections_opened"), 1);
    assert_eq!((num(t, "resumed"), num(t, "failed")), (0, 0), "{t}");
    assert_eq!(num(t, &format!("server_names/{HOST}/handshakes")), 1);
    assert_eq!(num(t, "versions/TLS1.3"), 1);
    p.finish();
}

/// Plain HTTP to the same host name is never TLS, on either side.
#[test]
fn plain_http_is_never_counted_as_tls() {
    let d = daemon();
    pki();
    let (server, port) = http_server("127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(None, &["requests_no_session", &format!("http://{HOST}:{port}/"), "10"]);
    let doc = d.wait_process(pid_of(&result), WAIT, "10 plain requests", |doc| {
        outbound(doc, &remote).is_some_and(|o| opt(o, "requests") == Some(10))
    });
    assert_eq!(outbound(&doc, &remote).unwrap()["tls"], Value::Null);
    let s = d.wait_process(server.pid(), WAIT, "server side", |doc| {
        inbound(doc, &remote).is_some_and(|i| opt(i, "requests") == Some(10))
    });
    assert_eq!(inbound(&s, &remote).unwrap()["tls"], Value::Null);
    drop(c);
}

/// The same figures as Prometheus metrics, with the server name as a label.
#[test]
fn tls_metrics() {
    let d = daemon();
    let (_server, port) = tls_server("keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = py_client(&["requests_no_session", &format!("https://{HOST}:{port}/"), "3"], true);
    let pid = pid_of(&result);
    d.wait_process(pid, WAIT, "3 handshakes", |doc| {
        outbound(doc, &remote).is_some_and(|o| opt(o, "tls/handshake_ms/count") == Some(3))
    });
    let text = d.metrics();
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains(&format!("pid=\"{pid}\""))
                    && l.contains(&format!("peer=\"{remote}\""))
            })
            .unwrap_or_else(|| panic!("no {name} for pid {pid}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("observer_tls_handshakes_total"), 3.0);
    assert_eq!(value("observer_tls_handshakes_resumed_total"), 0.0);
    assert_eq!(value("observer_tls_handshakes_failed_total"), 0.0);
    assert_eq!(value("observer_tls_handshake_seconds_count"), 3.0);
    assert!(text.lines().any(|l| l.starts_with("observer_tls_handshakes_total{")
        && l.contains(&format!("pid=\"{pid}\""))
        && l.contains(&format!("server_name=\"{HOST}\""))));
    drop(c);
}
