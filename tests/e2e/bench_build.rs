//! The `bench` build of the daemon (`OBSERVER_BENCH_BIN`: the shipped binary has none of this)
//! and its hidden flags for `cargo xtask bench`: `--bench-toggle` (the interleaved measurement
//! detaches and attaches the kernel programs between windows), `--bench-floor` (empty programs on
//! observer's hooks instead of its own) and `--bench-region-records` (observer's programs writing
//! their records where nobody reads them). The bench's figures are only worth something if the
//! "without" windows really observe nothing and the "with" windows everything.

use std::time::{Duration, Instant};

use observer_e2e::bpf::{bpf_ids_of, map_dump, maps, prog_names_of};
use observer_e2e::daemon::{Daemon, observer_bench_bin};
use observer_e2e::document::{num, outbound};
use observer_e2e::processes::Proc;
use observer_e2e::scenarios::{client, http_server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
/// How long a process that should stay unseen is watched for (the daemon drains every 20 ms).
const UNSEEN: Duration = Duration::from_secs(2);

/// A daemon of the `bench` build, started with `flags`.
fn bench_daemon(flags: &[&str]) -> Daemon {
    Daemon::start_bin(&observer_bench_bin(), flags)
}

fn pid_of(result: &Value) -> u32 {
    result["pid"].as_u64().expect("pid") as u32
}

fn wait_log(d: &Daemon, needle: &str, times: usize) {
    let deadline = Instant::now() + WAIT;
    while d.log_text().matches(needle).count() < times {
        assert!(Instant::now() < deadline, "no {times}x '{needle}' in the daemon's log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(d: &Daemon, sig: libc::c_int) {
    // SAFETY: a plain kill of our own child.
    assert_eq!(unsafe { libc::kill(d.pid() as i32, sig) }, 0);
}

/// Five connections, one request each, from a new client process.
fn five_connections(remote: &str) -> (Proc, u32) {
    let (c, result) = client(None, &["requests_no_session", &format!("http://{remote}/"), "5"]);
    (c, pid_of(&result))
}

#[test]
fn toggling_detaches_and_attaches_the_programs() {
    let d = bench_daemon(&["--bench-toggle"]);
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let remote = format!("127.0.0.1:{port}");

    let (_a, a) = five_connections(&remote);
    d.wait_process(a, WAIT, "5 connections while attached", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "connections_opened") == 5)
    });

    signal(&d, libc::SIGUSR1);
    wait_log(&d, "bench toggle: kernel programs detached", 1);
    let (_b, b) = five_connections(&remote);
    std::thread::sleep(UNSEEN);
    assert!(d.process(b).is_none(), "a process that only connected while detached is unknown to the daemon");

    signal(&d, libc::SIGUSR2);
    wait_log(&d, "bench toggle: kernel programs attached", 1);
    let (_c, c) = five_connections(&remote);
    // A connection's requests arrive with its close (or the next flush of open connections'
    // counters), which can be drained after the connection's open: wait for both.
    d.wait_process(c, WAIT, "5 connections and 5 requests once attached again", |doc| {
        outbound(doc, &remote).is_some_and(|o| num(o, "connections_opened") == 5 && num(o, "requests") == 5)
    });
    std::thread::sleep(UNSEEN);
    let doc = d.process(c).expect("the client is still known");
    let o = outbound(&doc, &remote).expect("its outbound peer");
    assert_eq!((num(o, "connections_opened"), num(o, "requests")), (5, 5), "nothing counted twice: {o}");
    assert!(d.process(b).is_none());
}

#[test]
fn the_floor_attaches_empty_programs_only() {
    let d = bench_daemon(&["--bench-floor"]);
    wait_log(&d, "--bench-floor: only empty programs are attached", 1);
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let (_a, a) = five_connections(&format!("127.0.0.1:{port}"));
    std::thread::sleep(UNSEEN);
    assert!(d.process(a).is_none(), "nothing is observed with empty programs");
    // This daemon's programs and links (not any daemon's): the three empty ones, attached.
    assert_eq!(prog_names_of(d.pid()), ["floor_recv", "floor_send", "floor_state"]);
    assert_eq!(bpf_ids_of(d.pid(), "link_id").len(), 3, "one link per empty program");
}

/// The words written so far in the benchmark's per-CPU regions of the daemons that have them
/// (8 entries; 1 otherwise, never written): the sum of their heads.
fn region_words() -> u64 {
    let mut words = 0;
    for m in maps() {
        if m["name"] != "BENCH_REGIONS" || m["max_entries"] != 8 {
            continue;
        }
        for entry in map_dump(m["id"].as_u64().expect("map id")) {
            let bytes: Vec<u8> = entry["value"].as_array().expect("value bytes")[..8]
                .iter()
                .map(|b| u8::from_str_radix(b.as_str().expect("hex").trim_start_matches("0x"), 16).expect("hex byte"))
                .collect();
            words += u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        }
    }
    words
}

#[test]
fn region_records_are_written_where_nobody_reads_them() {
    let d = bench_daemon(&["--bench-region-records"]);
    wait_log(&d, "--bench-region-records: the kernel programs write records nobody reads", 1);
    // This daemon's programs: all of observer's, attached.
    let names = prog_names_of(d.pid());
    for name in ["inet_sock_set_state", "inet_sock_set_state_nested", "sock_send_length", "sock_recv_length"] {
        assert!(names.iter().any(|n| n == name), "{name} is loaded (all of observer's programs are): {names:?}");
    }
    assert_eq!(bpf_ids_of(d.pid(), "link_id").len(), names.len(), "every program attached: {names:?}");
    let (_server, port) = http_server("127.0.0.1", "keepalive");
    let before = region_words();
    let (_a, a) = five_connections(&format!("127.0.0.1:{port}"));
    std::thread::sleep(UNSEEN);
    assert!(d.process(a).is_none(), "nothing reaches the daemon");
    // Per client connection at least its creation (17 words), its connect's success (3) and its
    // close (7); the server's side adds its own.
    let written = region_words() - before;
    assert!(written >= 5 * (17 + 3 + 7), "{written} words written in the regions for 5 connections");
}
