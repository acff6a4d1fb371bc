//! Ownership follows the socket: when the process that opened a socket exits and another one
//! holds it, the socket is charged to the holder from then on (a daemonizing nginx, a double
//! fork, systemd-style activation).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use observer_e2e::daemon::{Daemon, shared_daemon_with};
use observer_e2e::document::{inbound, num};
use observer_e2e::net::free_port;
use observer_e2e::paths::scenario;
use observer_e2e::processes::{Proc, sh, wait_timeout};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
/// Short, so that the tests see the exited processes pruned.
const RETENTION_S: u64 = 3;

fn daemon() -> &'static Daemon {
    shared_daemon_with(&["--exited-retention", "3"])
}

/// One request/response exchange with a `tests/scenarios/handover.py` server.
fn ping(conn: &mut BufReader<TcpStream>) {
    conn.get_mut().write_all(b"PING\n").expect("send");
    let mut line = String::new();
    conn.read_line(&mut line).expect("receive");
    assert_eq!(line, "PONG\n");
}

fn connect(port: u16) -> BufReader<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(s)
}

/// `tests/scenarios/handover.py MODE`: (the process, its pid, its port).
fn handover_server(mode: &str) -> (Proc, u32, u16) {
    let mut cmd = Command::new("python3");
    cmd.arg(scenario("handover.py")).arg(mode);
    let mut p = Proc::spawn(cmd);
    let line = p.line();
    let mut words = line.strip_prefix("LISTENING ").unwrap_or_else(|| panic!("unexpected {line:?}")).split(' ');
    let pid = words.next().unwrap().parse().unwrap();
    let port = words.next().unwrap().parse().unwrap();
    (p, pid, port)
}

fn heir_line(p: &mut Proc) -> u32 {
    let line = p.line();
    line.strip_prefix("HEIR ").unwrap_or_else(|| panic!("unexpected {line:?}")).parse().unwrap()
}

fn kill(pid: u32) {
    // SAFETY: plain kill of a process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

fn inherited_pid(entry: &Value) -> Option<u64> {
    entry["inherited_from"]["pid"].as_u64()
}

/// A double-forking server holding its listener and an established connection: both move to
/// the grandchild when the original process exits. Requests and bytes on the connection keep
/// counting there, and its lifetime stays whole.
#[test]
fn a_double_fork_hands_the_listener_and_the_connection_to_the_grandchild() {
    let d = daemon();
    let (mut server, pid, port) = handover_server("double-fork");
    let listen = format!("127.0.0.1:{port}");
    let opened = Instant::now();
    let mut conn = connect(port);
    ping(&mut conn);
    let heir = heir_line(&mut server);
    assert!(server.finish().success(), "the original process exits");
    let g = d.wait_process(heir, WAIT, "the listener and the connection taken over", |doc| {
        inbound(doc, &listen).is_some_and(|i| {
            num(i, "sockets/LISTEN") == 1 && num(i, "sockets/ESTABLISHED") == 1 && inherited_pid(i) == Some(pid.into())
        })
    });
    let i = inbound(&g, &listen).unwrap();
    assert_eq!(num(i, "inherited_from/sockets"), 2, "{i}");
    assert_eq!(num(i, "connections_accepted"), 0, "accepted by the original process: {i}");
    let p = d.process(pid).expect("the exited process is kept for its retention");
    let pi = inbound(&p, &listen).unwrap();
    assert_eq!((num(pi, "connections_accepted"), num(pi, "sockets/LISTEN"), num(pi, "sockets/ESTABLISHED")), (1, 0, 0));
    assert_eq!(p["exited"], true);

    // Past the exited process's retention, 4 more requests on the same connection, then it ends.
    std::thread::sleep(Duration::from_secs(RETENTION_S + 2));
    assert!(d.process(pid).is_none(), "pruned after its retention");
    for _ in 0..4 {
        ping(&mut conn);
    }
    drop(conn);
    let lived = opened.elapsed().as_secs_f64();
    let g = d.wait_process(heir, WAIT, "the connection ended", |doc| {
        inbound(doc, &listen).is_some_and(|i| num(i, "connection_lifetime_seconds/count") == 1)
    });
    let i = inbound(&g, &listen).unwrap();
    assert_eq!((num(i, "requests"), num(i, "bytes_received"), num(i, "bytes_sent")), (4, 20, 20), "{i}");
    assert_eq!((num(i, "closed_by_peer"), num(i, "sockets/LISTEN"), num(i, "sockets/ESTABLISHED")), (1, 1, 0));
    assert_eq!(num(i, "requests_per_connection/sum"), 5, "all the connection's requests: {i}");
    let life = i["connection_lifetime_seconds"]["max"].as_f64().unwrap();
    assert!(life > lived - 1.0 && life <= lived + 0.5, "lifetime {life} s, the connection lived {lived:.2} s");
    kill(heir);
}

/// systemd-style activation: a parent listens, starts a new program with the socket and exits.
/// The listener moves to the program, and its connections count there.
#[test]
fn an_activated_service_takes_the_listener_over_from_its_activator() {
    let d = daemon();
    let (mut activator, pid, port) = handover_server("exec-child");
    let listen = format!("127.0.0.1:{port}");
    let heir = heir_line(&mut activator);
    assert!(activator.finish().success());
    d.wait_process(heir, WAIT, "the listener taken over", |doc| {
        inbound(doc, &listen).is_some_and(|i| num(i, "sockets/LISTEN") == 1 && inherited_pid(i) == Some(pid.into()))
    });
    for _ in 0..5 {
        let mut c = connect(port);
        ping(&mut c);
    }
    let s = d.wait_process(heir, WAIT, "5 connections, closed by the client", |doc| {
        inbound(doc, &listen).is_some_and(|i| num(i, "closed_by_peer") == 5)
    });
    let i = inbound(&s, &listen).unwrap();
    assert_eq!((num(i, "connections_accepted"), num(i, "requests"), num(i, "sockets/LISTEN")), (5, 5, 1), "{i}");
    let a = d.process(pid).expect("the activator, exited, is kept for its retention");
    let ai = inbound(&a, &listen).unwrap();
    assert_eq!((num(ai, "connections_accepted"), num(ai, "sockets/LISTEN")), (0, 0), "{ai}");
    kill(heir);
}

/// nginx as it runs by default (`daemon on`): the launcher calls listen(), forks the master and
/// exits; the master forks the workers. The listener is the master's within a second of the
/// launcher's exit, stays there after the launcher is pruned, and every connection through it is
/// counted on it, exactly.
#[test]
fn a_daemonizing_nginx_listener_belongs_to_its_live_master() {
    let d = daemon();
    let dir = std::env::temp_dir().join(format!("observer-e2e-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon on;\nmaster_process on;\nworker_processes 2;\nuser root;\npid {pid};\nerror_log {err} warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; \
             uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\"; }} }} }}\n",
            pid = dir.join("nginx.pid").display(),
            err = dir.join("logs/error.log").display(),
            tmp = dir.display(),
        ),
    )
    .unwrap();
    let mut launcher = Command::new("nginx").arg("-p").arg(&dir).arg("-c").arg(&conf).spawn().expect("nginx");
    let launcher_pid = launcher.id();
    let status = wait_timeout(&mut launcher, Duration::from_secs(10)).expect("the launcher exits");
    let exited = Instant::now();
    assert!(
        status.success(),
        "nginx failed: {}",
        std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
    );
    let master: u32 = std::fs::read_to_string(dir.join("nginx.pid")).unwrap().trim().parse().unwrap();
    let stop = Stop(master, dir.clone());
    let listen = format!("127.0.0.1:{port}");
    let taken = |doc: &Value| {
        inbound(doc, &listen)
            .is_some_and(|i| num(i, "sockets/LISTEN") == 1 && inherited_pid(i) == Some(launcher_pid.into()))
    };
    let m = loop {
        if let Some(doc) = d.process(master).filter(|doc| taken(doc)) {
            break doc;
        }
        assert!(
            exited.elapsed() < Duration::from_secs(5),
            "the master never got the listener: {:?}",
            d.process(master)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = exited.elapsed();
    assert!(took < Duration::from_secs(1), "the master had the listener {took:?} after the launcher's exit");
    eprintln!("the master had the listener {took:?} after the launcher's exit");
    assert_eq!(inbound(&m, &listen).unwrap()["inherited_from"]["comm"], "nginx");

    // Past the launcher's retention: it is pruned, the listener stays with the master.
    std::thread::sleep(Duration::from_secs(RETENTION_S + 2));
    assert!(d.process(launcher_pid).is_none(), "the launcher is pruned");
    let m = d.process(master).expect("the master");
    assert_eq!(num(inbound(&m, &listen).unwrap(), "sockets/LISTEN"), 1, "{m}");

    // 20 connections, one request each (curl closes first).
    for _ in 0..20 {
        sh(&["curl", "-sf", "-o", "/dev/null", &format!("http://{listen}/")]);
    }
    let workers = children_of(master);
    assert_eq!(workers.len(), 2, "two workers");
    let total = |field: &str| -> u64 {
        workers
            .iter()
            .chain([&master])
            .filter_map(|pid| d.process(*pid))
            .filter_map(|doc| inbound(&doc, &listen).map(|i| num(i, field)))
            .sum()
    };
    let deadline = Instant::now() + WAIT;
    while total("closed_by_peer") < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!((total("connections_accepted"), total("closed_by_peer"), total("requests")), (20, 20, 20));
    let m = d.process(master).expect("the master");
    assert_eq!(num(inbound(&m, &listen).unwrap(), "connections_accepted"), 0, "the workers accept: {m}");
    drop(stop);
}

/// Stops an nginx master (and its workers) and removes its directory when dropped.
struct Stop(u32, std::path::PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        // SAFETY: plain kill of the nginx master this test started.
        unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// The pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(|s| {
                let after = s.rsplit_once(") ")?.1;
                after.split(' ').nth(1)?.parse::<u32>().ok()
            }) == Some(pid)
        })
        .collect();
    v.sort();
    v
}
