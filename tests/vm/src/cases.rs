//! The smoke cases: each drives real sockets through helper processes and compares the
//! daemon's figures with the helpers' own counts, exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::checks::{Side, check_entry, entry, until, wait_entry};
use crate::daemon::Daemon;
use crate::helpers::Helper;
use crate::http;

/// What a case concluded.
pub enum Outcome {
    Ok,
    Fail(String),
    /// Not applicable on this kernel; the reason says what was checked instead.
    Skip(String),
}

/// What the cases share.
pub struct Ctx {
    pub daemon: Daemon,
    pub busybox: PathBuf,
    pub openssl: Option<PathBuf>,
    pub tmp: PathBuf,
    /// `features` from /api/v1/status, read by the first case.
    pub features: BTreeMap<String, bool>,
}

impl Ctx {
    fn feature(&self, name: &str) -> bool {
        self.features.get(name).copied().unwrap_or(false)
    }
}

pub type Case = fn(&mut Ctx) -> Result<Outcome>;

/// The cases, in the order they run (the first reads the features the others depend on).
pub const CASES: &[(&str, Case)] = &[
    ("health_and_features", health_and_features),
    ("per_request_time_wait", per_request_time_wait),
    ("inbound_accepted", inbound_accepted),
    ("reuse_requests", reuse_requests),
    ("close_wait", close_wait),
    ("refused_connect", refused_connect),
    ("prefork_server", prefork_server),
    ("fork_per_connection_server", fork_per_connection_server),
    ("tls_handshake", tls_handshake),
];

const REQUESTS_OFF: &str = "the `requests` feature is off (the daemon found no hook to count sends and receives \
                            on this kernel)";

fn verdict(r: Result<(), String>) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Fail(e),
    }
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether something listens on 127.0.0.1:port, from the kernel's own table (not through the
/// daemon, and without connecting, which would count as a connection).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == want && f[3] == "0A"
    })
}

fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listening(port) {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// /healthz is 200 and /api/v1/status lists every feature as a boolean.
fn health_and_features(ctx: &mut Ctx) -> Result<Outcome> {
    let (status, body) = http::get(&ctx.daemon.addr, "/healthz")?;
    if status != 200 || !body.contains("\"ok\"") {
        return Ok(Outcome::Fail(format!("/healthz: HTTP {status}: {body}")));
    }
    let (status, doc) = http::get_json(&ctx.daemon.addr, "/api/v1/status")?;
    let features = doc["features"].as_object();
    let Some(features) = features.filter(|_| status == 200) else {
        return Ok(Outcome::Fail(format!("/api/v1/status: HTTP {status}: {doc}")));
    };
    for name in ["error_reports", "resets", "process_exits", "requests", "tls"] {
        match features.get(name).and_then(|v| v.as_bool()) {
            Some(on) => drop(ctx.features.insert(name.to_string(), on)),
            None => return Ok(Outcome::Fail(format!("feature {name} missing or not a boolean: {doc}"))),
        }
    }
    let list: Vec<String> = ctx.features.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("features: {} (daemon {})", list.join(" "), doc["version"].as_str().unwrap_or("?"));
    Ok(Outcome::Ok)
}

/// 20 connections, one request each, closed by the client: all in TIME_WAIT, reconciled with
/// the kernel's table through sock_diag.
fn per_request_time_wait(ctx: &mut Ctx) -> Result<Outcome> {
    const N: u64 = 20;
    let server = Helper::spawn(&["server", "lines"])?;
    let port = server.expect("port")?;
    let client = Helper::spawn(&["connect-each", &port, &N.to_string()])?;
    client.expect_done(&N.to_string())?;
    let requests = if ctx.feature("requests") { N } else { 0 };
    let wants = [
        ("connections_opened", N),
        ("closed_by_local", N),
        ("closed_by_peer", 0),
        ("sockets.TIME_WAIT", N),
        ("sockets.ESTABLISHED", 0),
        ("requests", requests),
    ];
    Ok(verdict(wait_entry(&ctx.daemon, client.pid(), Side::Out, &format!("127.0.0.1:{port}"), &wants)))
}

/// The server side of connection-per-request, one process listening and accepting: the
/// accepted connections on its listening endpoint, closed by the peer. (Isolates the accepting
/// side from the forking servers below.)
fn inbound_accepted(ctx: &mut Ctx) -> Result<Outcome> {
    const N: u64 = 20;
    let server = Helper::spawn(&["server", "lines"])?;
    let port = server.expect("port")?;
    let client = Helper::spawn(&["connect-each", &port, &N.to_string()])?;
    client.expect_done(&N.to_string())?;
    let requests = if ctx.feature("requests") { N } else { 0 };
    let wants = [
        ("sockets.LISTEN", 1),
        ("connections_accepted", N),
        ("closed_by_peer", N),
        ("closed_by_local", 0),
        ("requests", requests),
        // One "req\n" in and one "rep\n" out on each.
        ("bytes_received", 4 * requests),
        ("bytes_sent", 4 * requests),
    ];
    Ok(verdict(wait_entry(&ctx.daemon, server.pid(), Side::In, &format!("127.0.0.1:{port}"), &wants)))
}

/// One connection carrying 10 exchanges: requests 10 on 1 connection.
fn reuse_requests(ctx: &mut Ctx) -> Result<Outcome> {
    const N: u64 = 10;
    let server = Helper::spawn(&["server", "lines"])?;
    let port = server.expect("port")?;
    let client = Helper::spawn(&["reuse", &port, &N.to_string()])?;
    client.expect_done(&N.to_string())?;
    let remote = format!("127.0.0.1:{port}");
    if ctx.feature("requests") {
        // Each exchange is "req\n" one way and "rep\n" the other.
        let wants = [
            ("connections_opened", 1),
            ("requests", N),
            ("closed_by_local", 1),
            ("bytes_sent", 4 * N),
            ("bytes_received", 4 * N),
        ];
        return Ok(verdict(wait_entry(&ctx.daemon, client.pid(), Side::Out, &remote, &wants)));
    }
    // Degraded: requests stay 0, connections are still counted.
    let wants = [("connections_opened", 1), ("requests", 0), ("closed_by_local", 1)];
    Ok(match wait_entry(&ctx.daemon, client.pid(), Side::Out, &remote, &wants) {
        Ok(()) => {
            Outcome::Skip(format!("{REQUESTS_OFF}; checked the degraded figures: connections_opened 1, requests 0"))
        }
        Err(e) => Outcome::Fail(format!("degraded mode ({REQUESTS_OFF}): {e}")),
    })
}

/// The server closes first, the client keeps its sockets: k in CLOSE_WAIT.
fn close_wait(ctx: &mut Ctx) -> Result<Outcome> {
    const K: u64 = 5;
    let server = Helper::spawn(&["server", "close-first"])?;
    let port = server.expect("port")?;
    let client = Helper::spawn(&["hold", &port, &K.to_string()])?;
    client.expect_done(&K.to_string())?;
    let wants = [("connections_opened", K), ("closed_by_peer", K), ("closed_by_local", 0), ("sockets.CLOSE_WAIT", K)];
    Ok(verdict(wait_entry(&ctx.daemon, client.pid(), Side::Out, &format!("127.0.0.1:{port}"), &wants)))
}

/// A connect to a closed port: one `refused`.
fn refused_connect(ctx: &mut Ctx) -> Result<Outcome> {
    let port = free_port()?.to_string();
    let client = Helper::spawn(&["refused", &port])?;
    client.expect_done("refused")?;
    let wants = [("connect_failures.refused", 1), ("connect_failures.timeout", 0), ("connections_opened", 0)];
    Ok(verdict(wait_entry(&ctx.daemon, client.pid(), Side::Out, &format!("127.0.0.1:{port}"), &wants)))
}

/// The parent listens, a forked child accepts: accepted connections are the child's, the
/// listener the parent's.
fn prefork_server(ctx: &mut Ctx) -> Result<Outcome> {
    const N: u64 = 5;
    let server = Helper::spawn(&["prefork"])?;
    let port = server.expect("port")?;
    let child: u32 = server.expect("child")?.parse()?;
    let client = Helper::spawn(&["connect-each", &port, &N.to_string()])?;
    client.expect_done(&N.to_string())?;
    let local = format!("127.0.0.1:{port}");
    let d = &ctx.daemon;
    if ctx.feature("requests") {
        let r = until(|| {
            let child_ok = check_entry(d, child, Side::In, &local, &[("connections_accepted", N)]);
            let parent_wants = [("sockets.LISTEN", 1), ("connections_accepted", 0)];
            let parent_ok = check_entry(d, server.pid(), Side::In, &local, &parent_wants);
            match (child_ok, parent_ok) {
                (Ok(()), Ok(())) => Ok(()),
                (c, p) => Err(format!(
                    "child {child}: {}; parent {}: {}",
                    c.err().unwrap_or_else(|| "as expected".into()),
                    server.pid(),
                    p.err().unwrap_or_else(|| "as expected".into())
                )),
            }
        });
        return Ok(verdict(r));
    }
    // Degraded: accepted connections stay charged to the listener's owner.
    let wants = [("sockets.LISTEN", 1), ("connections_accepted", N)];
    Ok(match wait_entry(d, server.pid(), Side::In, &local, &wants) {
        Ok(()) => Outcome::Skip(format!(
            "{REQUESTS_OFF}: accepted connections stay charged to the listener's owner; checked: the parent has LISTEN 1 \
             and connections_accepted {N}"
        )),
        Err(e) => Outcome::Fail(format!("degraded mode ({REQUESTS_OFF}): {e}")),
    })
}

/// busybox httpd forks a child per connection: the accepted connections of every process on
/// its listening endpoint add up to the clients' count.
fn fork_per_connection_server(ctx: &mut Ctx) -> Result<Outcome> {
    const N: u64 = 5;
    let www = ctx.tmp.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), "hello\n")?;
    let port = free_port()?;
    let mut cmd = Command::new(&ctx.busybox);
    cmd.args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"]).arg(&www);
    let httpd = Helper::external(cmd)?;
    wait_listening(port)?;
    let client = Helper::spawn(&["http-get", &port.to_string(), &N.to_string()])?;
    client.expect_done(&N.to_string())?;
    let local = format!("127.0.0.1:{port}");
    let d = &ctx.daemon;
    let r = until(|| {
        check_entry(d, httpd.pid(), Side::In, &local, &[("sockets.LISTEN", 1)])?;
        let mut by_pid = BTreeMap::new();
        for pid in d.pids().map_err(|e| format!("{e:#}"))? {
            let Ok(Some(doc)) = d.process(pid) else { continue };
            if let Some(e) = entry(&doc, Side::In, &local) {
                by_pid.insert(pid, e.clone());
            }
        }
        let total: u64 = by_pid.values().filter_map(|e| e["connections_accepted"].as_u64()).sum();
        if total == N {
            return Ok(());
        }
        let entries: Vec<String> = by_pid.iter().map(|(pid, e)| format!("pid {pid}: {e}")).collect();
        Err(format!(
            "connections_accepted on {local} add up to {total}, want {N} (httpd is pid {}); entries: {}",
            httpd.pid(),
            entries.join("; ")
        ))
    });
    Ok(verdict(r))
}

/// One `openssl s_client` handshake with `openssl s_server` on loopback.
fn tls_handshake(ctx: &mut Ctx) -> Result<Outcome> {
    let Some(openssl) = ctx.openssl.clone() else {
        return Ok(Outcome::Skip("openssl is not installed on the host".into()));
    };
    if !ctx.feature("tls") {
        return Ok(Outcome::Skip(
            "the `tls` feature is off (it needs the sock_send_length and sock_recv_length tracepoints, Linux 6.3+): tls stays null".into(),
        ));
    }
    let (cert, key) = (ctx.tmp.join("cert.pem"), ctx.tmp.join("key.pem"));
    let out = Command::new(&openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-subj", "/CN=localhost", "-days", "2", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    if !out.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
    }
    let port = free_port()?;
    let mut cmd = Command::new(&openssl);
    cmd.args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-naccept", "1", "-cert"])
        .arg(&cert)
        .arg("-key")
        .arg(&key);
    let _server = Helper::external(cmd)?;
    wait_listening(port)?;
    let remote = format!("127.0.0.1:{port}");
    let (pid, status, said) = s_client(&openssl, &remote, &ctx.tmp)?;
    if !status.success() || !said.contains("CONNECTION ESTABLISHED") {
        return Ok(Outcome::Fail(format!("s_client failed ({status}): {said}")));
    }
    // The client has exited: its figures stay for --exited-retention (30 s by default).
    let wants = [("connections_opened", 1), ("tls.handshakes", 1), ("tls.failed", 0)];
    Ok(verdict(wait_entry(&ctx.daemon, pid, Side::Out, &remote, &wants)))
}

/// `openssl s_client` once against `remote`, its stdin empty so that it closes after the
/// handshake: its pid, exit status and what it said (stderr, on one line).
fn s_client(openssl: &Path, remote: &str, tmp: &Path) -> Result<(u32, ExitStatus, String)> {
    let err_path = tmp.join("s_client.err");
    let mut child = Command::new(openssl)
        .args(["s_client", "-connect", remote, "-servername", "localhost", "-brief"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .context("openssl s_client")?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = std::fs::read_to_string(&err_path).unwrap_or_default().trim().replace('\n', " | ");
    Ok((pid, status, said))
}
