//! Who holds a socket now: the kernel's sockets (sock_diag, with their inodes) joined with the
//! `socket:[inode]` links of every process's `/proc/<pid>/fd`, as `ss -tanp` does. Run only when
//! a process that is charged with live sockets exits (see `aggregate::handover`), within a time
//! bound.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::host::procfs;
use crate::host::sock_diag::{self, StateFlags};
use observer_core::aggregate::HeldSocket;
use observer_core::event::Owner;
use observer_core::model::{ProcessKey, TICK_NS};

/// A process that holds sockets.
struct Holder {
    owner: Owner,
    netns: u32,
}

/// Every live process's socket inodes, each with the lowest pid that holds it (the rule of the
/// start-up snapshot: for a socket shared across fork, usually the parent). Stops at `deadline`.
fn scan_fds(deadline: Instant) -> (HashMap<u32, u32>, HashMap<u32, Holder>, bool) {
    let mut inodes: HashMap<u32, u32> = HashMap::new();
    let mut procs: HashMap<u32, Holder> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return (inodes, procs, false) };
    for entry in dir.flatten() {
        if Instant::now() > deadline {
            return (inodes, procs, false);
        }
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((state, ticks)) = procfs::parse_stat(&stat) else { continue };
        if state == 'Z' || state == 'X' {
            continue;
        }
        let held = procfs::socket_inodes(pid).0;
        if held.is_empty() {
            continue;
        }
        let Some(netns) = procfs::netns_inode(pid) else { continue };
        let comm = procfs::comm(pid).unwrap_or_default();
        let key = ProcessKey { pid, start_ns: ticks * TICK_NS };
        procs.insert(pid, Holder { owner: Owner { key, comm: comm.as_str().into() }, netns });
        for inode in held {
            let h = inodes.entry(inode).or_insert(pid);
            *h = (*h).min(pid);
        }
    }
    (inodes, procs, true)
}

/// The process that holds each of `wanted` now, if any does (an exited process holds nothing),
/// in the same order. Sockets are matched by cookie, or by their endpoints where the cookie is
/// unknown. What is not found by `deadline` is given up on.
pub fn find(wanted: &[HeldSocket], deadline: Instant) -> Vec<Option<Owner>> {
    let mut found = vec![None; wanted.len()];
    let (inodes, procs, complete) = scan_fds(deadline);
    if !complete {
        log::warn!("looking for the new holders of sockets of exited processes: /proc scan cut short");
    }
    let own = procfs::own_netns_inode().unwrap_or(0);
    let mut namespaces: Vec<u32> = wanted.iter().map(|w| w.netns).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let states = StateFlags::all() - StateFlags::TIME_WAIT - StateFlags::CLOSE;
    for netns in namespaces {
        if Instant::now() > deadline {
            break;
        }
        let dumped = if netns == own || netns == 0 {
            sock_diag::dump(states.clone())
        } else {
            // Entered through a process the scan found in it.
            let Some(path) = procs.iter().find(|(_, h)| h.netns == netns).map(|(pid, _)| ns_path(*pid)) else {
                continue;
            };
            sock_diag::dump_in(&path, states.clone())
        };
        let sockets = match dumped {
            Ok(s) => s,
            Err(e) => {
                log::debug!("new holders of sockets of exited processes: dump of netns {netns}: {e:#}");
                continue;
            }
        };
        let by_cookie: HashMap<u64, &sock_diag::DiagSocket> = sockets.iter().map(|s| (s.cookie, s)).collect();
        let by_tuple: HashMap<_, &sock_diag::DiagSocket> = sockets.iter().map(|s| ((s.local, s.remote), s)).collect();
        for (w, slot) in wanted.iter().zip(found.iter_mut()).filter(|(w, _)| w.netns == netns) {
            let s = if w.cookie != 0 { by_cookie.get(&w.cookie) } else { by_tuple.get(&(w.local.0, w.remote.0)) };
            let Some(s) = s else { continue };
            let holder = inodes.get(&s.inode).and_then(|pid| procs.get(pid));
            *slot = holder.filter(|h| h.netns == netns || netns == 0).map(|h| h.owner.clone());
        }
    }
    found
}

fn ns_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}
