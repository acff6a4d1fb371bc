//! The daemon's own lifecycle: clean detach on signals, clear errors on bad set-ups, pruning
//! of exited processes. Each test starts its own daemon.

use std::process::Command;
use std::time::Duration;

use observer_e2e::*;

fn bpf_object_exists(kind: &str, id: u64) -> bool {
    Command::new("bpftool").args([kind, "show", "id", &id.to_string()]).output().unwrap().status.success()
}

fn detaches_cleanly_on(signal: libc::c_int) {
    let d = Daemon::start(&[]);
    let pid = d.pid();
    let progs = bpf_ids_of(pid, "prog_id");
    let links = bpf_ids_of(pid, "link_id");
    assert_eq!(progs.len(), 7, "7 programs loaded: {progs:?}");
    assert_eq!(links.len(), 7, "one link per program: {links:?}");
    assert!(progs.iter().all(|id| bpf_object_exists("prog", *id)));
    let (status, log) = d.stop_with(signal);
    assert!(status.success(), "exit status {status:?}\n{log}");
    assert!(log.contains("detached from the kernel"), "{log}");
    // The kernel frees programs and links after an RCU grace period: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = progs
            .iter()
            .filter(|id| bpf_object_exists("prog", **id))
            .map(|id| format!("program {id}"))
            .chain(links.iter().filter(|id| bpf_object_exists("link", **id)).map(|id| format!("link {id}")))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still in the kernel 5 s after exit: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_detaches_every_program() {
    detaches_cleanly_on(libc::SIGTERM);
}

#[test]
fn sigint_detaches_every_program() {
    detaches_cleanly_on(libc::SIGINT);
}

/// Run `wrapper... observer daemon --listen <listen>` and collect its exit code and stderr.
fn run_daemon(wrapper: &[&str], listen: &str) -> (i32, String) {
    let bin = observer_bin();
    let mut args: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
    args.push(bin.display().to_string());
    args.extend(["daemon", "--listen", listen].map(String::from));
    run(&args)
}

/// Run a shell script (that execs the daemon) in a private mount namespace.
fn run_in_mount_namespace(script: &str) -> (i32, String) {
    let args = ["unshare", "-m", "--propagation", "private", "sh", "-c", script].map(String::from);
    run(&args)
}

fn run(args: &[String]) -> (i32, String) {
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("the daemon should exit on its own");
    let stderr = read_all(child.stderr.take().unwrap());
    (status.code().unwrap_or(-1), stderr)
}

fn assert_one_line_error(code: i32, stderr: &str, needle: &str) {
    assert_eq!(code, 1, "exit code; stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("observer: ")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].contains(needle), "{:?} should mention {needle:?}", errors[0]);
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (code, stderr) = run_daemon(&[], &addr);
    assert_one_line_error(code, &stderr, &format!("cannot listen on {addr}"));
    assert!(stderr.contains("Address already in use"), "{stderr}");
}

#[test]
fn not_root_is_a_clear_error() {
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, stderr) = run_daemon(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], &listen);
    assert_one_line_error(code, &stderr, "permission denied");
}

/// In a private mount namespace, the kernel's BTF hidden: the socket hooks are BTF tracepoints
/// and cannot be attached.
#[test]
fn missing_kernel_btf_is_a_clear_error() {
    let listen = format!("127.0.0.1:{}", free_port());
    let bin = observer_bin();
    let script =
        format!("mount --bind /dev/null /sys/kernel/btf/vmlinux && exec {} daemon --listen {listen}", bin.display());
    let (code, stderr) = run_in_mount_namespace(&script);
    assert_one_line_error(code, &stderr, "observer needs the kernel's BTF");
    // It names the kernel and the ones observer runs on.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(stderr.contains(&format!("which kernel {} lacks", release.trim())), "{stderr}");
    assert!(stderr.contains("observer runs on Linux 5.10 or later with BTF"), "{stderr}");
}

/// tracefs unmounted, no right to mount it and no CAP_SYS_ADMIN: the programs are BTF
/// tracepoints and need none, and exits are watched through pidfds, at once.
#[test]
fn without_tracefs_everything_still_works() {
    let d = Daemon::start_wrapped(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
           exec setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin \"$0\" \"$@\"",
        ],
        &["--exited-retention", "60"],
    );
    let (_, status) = d.get("/api/v1/status");
    assert_eq!(status["features"]["process_exits"], true, "{status}");
    assert_eq!(status["features"]["requests"], true, "{status}");
    let log = d.log_text();
    assert!(!log.contains("tracefs"), "{log}");
    assert!(!log.contains("polling /proc"), "{log}");
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(None, &["requests_session", &format!("http://{remote}/"), "2"]);
    let pid = result["pid"].as_u64().unwrap() as u32;
    d.wait_process(pid, Duration::from_secs(10), "one connection", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "connections_opened") == 1)
    });
    // Known for over a second: its pidfd is watched.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.process(pid).expect("still listed")["exited"], false);
    drop(c);
    // Its exit comes from its pidfd, well before the 5 s /proc poll.
    let t0 = std::time::Instant::now();
    d.wait_process(pid, Duration::from_secs(10), "exited", |doc| doc["exited"] == true);
    assert!(t0.elapsed() < Duration::from_millis(1000), "exit seen after {:?}", t0.elapsed());
}

#[test]
fn exited_processes_are_pruned() {
    let d = Daemon::start(&["--exited-retention", "1"]);
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");
    let (c, result) = client(None, &["requests_session", &format!("http://{remote}/"), "3"]);
    let pid = result["pid"].as_u64().unwrap() as u32;
    let doc = d.wait_process(pid, Duration::from_secs(10), "one connection", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "connections_opened") == 1)
    });
    assert_eq!(doc["exited"], false);
    c.finish();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while d.process(pid).is_some() {
        assert!(std::time::Instant::now() < deadline, "pid {pid} still listed after exit: {:?}", d.process(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let list = d.get("/api/v1/processes").1;
    assert!(!list.as_array().unwrap().iter().any(|p| p["pid"] == pid), "{list}");
}

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
