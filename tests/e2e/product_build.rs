//! The shipped build of the daemon (`OBSERVER_BIN`) is the product alone: with its default flags
//! it loads exactly the product's kernel programs, and it has none of the benchmark's flags (that
//! scaffolding is in the `bench` build only, see `bench_build.rs`).

use std::process::{Command, Stdio};
use std::time::Duration;

use observer_e2e::bpf::prog_names_of;
use observer_e2e::daemon::{Daemon, observer_bin};
use observer_e2e::net::free_port;
use observer_e2e::processes::{read_all, wait_timeout};

/// The product's kernel programs a current kernel runs, sorted: those of `observer-ebpf`'s
/// `main.rs` that are not benchmark scaffolding (the `calibrate_*` and `floor_*` programs are),
/// on a kernel that accepts the current programs and has `sock_send_length` and
/// `sock_recv_length` (Linux 6.3 or later, as the tests' host). The product's other programs are
/// not among them: the `_legacy` variants (`inet_sock_set_state_legacy`,
/// `inet_sock_set_state_nested_legacy`, `sock_send_length_legacy`, `sock_recv_length_legacy`,
/// `tcp_rcv_space_adjust_legacy`) are loaded instead only on kernels that refuse these or lack
/// those tracepoints, and `probe_current` is loaded once, in an object of its own that the daemon
/// drops before it attaches anything, to find out which.
const PRODUCT_PROGRAMS: [&str; 7] = [
    "inet_sk_error_report",
    "inet_sock_set_state",
    "inet_sock_set_state_nested",
    "sock_recv_length",
    "sock_send_length",
    "tcp_receive_reset",
    "tcp_send_reset",
];

/// The hidden flags of the `bench` build.
const BENCH_FLAGS: [&str; 5] =
    ["--bench-calibration", "--bench-floor", "--bench-table-only", "--bench-region-records", "--bench-toggle"];

#[test]
fn a_default_daemon_loads_exactly_the_product_programs() {
    let d = Daemon::start(&[]);
    // This daemon's programs (not any daemon's), by name: one more, a benchmark's or any other,
    // or one fewer, and the shipped build is not the product.
    assert_eq!(prog_names_of(d.pid()), PRODUCT_PROGRAMS, "the programs a default daemon holds");
}

#[test]
fn the_default_binary_has_no_bench_flags() {
    let bin = observer_bin();
    let mut accepted = Vec::new();
    for flag in BENCH_FLAGS {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(&bin)
            .args(["daemon", "--listen", &listen, flag])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn observer daemon");
        // A flag the binary does not have is refused at once; one it has starts a daemon.
        let Some(status) = wait_timeout(&mut child, Duration::from_secs(10)) else {
            let _ = child.kill();
            let _ = child.wait();
            accepted.push(flag);
            continue;
        };
        let stderr = read_all(child.stderr.take().unwrap());
        assert!(!status.success(), "{} accepted {flag}: exit status {status:?}\n{stderr}", bin.display());
        assert!(stderr.contains(flag), "{flag} refused for another reason than not being a flag:\n{stderr}");
    }
    assert!(accepted.is_empty(), "{} ran a daemon with {accepted:?}", bin.display());
}

/// Names only the bench build's kernel object has: its programs, map and global.
const BENCH_OBJECT_NAMES: [&str; 5] =
    ["calibrate_empty", "calibrate_cpu_region", "floor_state", "BENCH_REGIONS", "RECORD_SINK"];

#[test]
fn the_default_binary_embeds_no_bench_programs() {
    // The kernel object is embedded in the binary, its symbol names with it: a default daemon
    // never loads the bench programs, so only the bytes show whether the object carries them.
    let bin = observer_bin();
    let bytes = std::fs::read(&bin).expect("read the observer binary");
    let has = |name: &str| bytes.windows(name.len()).any(|w| w == name.as_bytes());
    assert!(has("inet_sock_set_state_nested"), "the product's programs are found the same way");
    let found: Vec<&str> = BENCH_OBJECT_NAMES.into_iter().filter(|n| has(n)).collect();
    assert!(found.is_empty(), "{} embeds the bench's {found:?}", bin.display());
}
