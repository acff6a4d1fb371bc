//! Process exits: seen at once through pidfds (no tracefs nor CAP_SYS_ADMIN needed), and exited
//! processes pruned after their retention.

use std::time::Duration;

use observer_e2e::daemon::Daemon;
use observer_e2e::document::{num, outbound};
use observer_e2e::scenarios::{client, http_server};

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
