//! The sockets that exist when the daemon starts, with the processes that hold them (what
//! `ss -tanp` shows): sock_diag in every network namespace, joined with `/proc/<pid>/fd`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;

use crate::aggregate::SeedSocket;
use crate::event::Owner;
use crate::model::{Endpoint, ProcessKey, TICK_NS};
use crate::procfs;
use crate::sock_diag::{self, StateFlags};

struct ProcInfo {
    key: ProcessKey,
    comm: String,
    netns: u32,
}

/// Socket inodes (`socket:[N]`) among the fds of `pid`.
fn socket_inodes(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            let t = t.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Every live TCP socket (TIME_WAIT excepted) held by a process, charged to the lowest pid that
/// holds it (the parent, for sockets shared across fork).
pub fn take() -> Result<Vec<SeedSocket>> {
    let mut procs: HashMap<u32, ProcInfo> = HashMap::new();
    let mut holders: HashMap<u32, u32> = HashMap::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((state, ticks)) = procfs::parse_stat(&stat) else { continue };
        if state == 'Z' {
            continue;
        }
        let inodes = socket_inodes(pid);
        if inodes.is_empty() {
            continue;
        }
        let Some(netns) = procfs::netns_inode(pid) else { continue };
        let comm = procfs::comm(pid).unwrap_or_default();
        procs.insert(pid, ProcInfo { key: ProcessKey { pid, start_ns: ticks * TICK_NS }, comm, netns });
        for inode in inodes {
            let h = holders.entry(inode).or_insert(pid);
            *h = (*h).min(pid);
        }
    }
    // One dump per network namespace, entered through any process in it.
    let own = procfs::own_netns_inode();
    let mut namespaces: HashMap<u32, u32> = HashMap::new();
    for (pid, p) in &procs {
        namespaces.entry(p.netns).or_insert(*pid);
    }
    let states = StateFlags::all() - StateFlags::TIME_WAIT - StateFlags::CLOSE;
    let mut seeds = Vec::new();
    for (netns, via) in namespaces {
        let dumped = if Some(netns) == own {
            sock_diag::dump(states.clone())
        } else {
            sock_diag::dump_in(Path::new(&format!("/proc/{via}/ns/net")), states.clone())
        };
        let sockets = match dumped {
            Ok(s) => s,
            Err(e) => {
                log::warn!("start-up snapshot of netns {netns} failed: {e:#}");
                continue;
            }
        };
        for s in sockets {
            let Some(p) = holders.get(&s.inode).and_then(|pid| procs.get(pid)) else { continue };
            if p.netns != netns {
                continue;
            }
            seeds.push(SeedSocket {
                netns,
                local: Endpoint(s.local),
                remote: Endpoint(s.remote),
                state: s.state,
                owner: Owner { key: p.key, comm: p.comm.as_str().into() },
            });
        }
    }
    Ok(seeds)
}
