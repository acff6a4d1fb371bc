//! The daemon detaches from the kernel on SIGTERM and SIGINT: every program and link it loaded is
//! gone once it exits.

use std::time::Duration;

use observer_e2e::bpf::{bpf_ids_of, bpf_object_exists};
use observer_e2e::daemon::Daemon;

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
