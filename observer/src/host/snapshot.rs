//! The sockets that exist when the daemon starts, with the processes that hold them (what
//! `ss -tanp` shows): sock_diag in every network namespace, joined with `/proc/<pid>/fd`.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use anyhow::Result;

use crate::host::procfs;
use crate::host::sock_diag::{self, StateFlags};
use observer_core::aggregate::SeedSocket;
use observer_core::event::Owner;
use observer_core::model::{Endpoint, ProcessKey, TICK_NS};

struct ProcInfo {
    key: ProcessKey,
    comm: String,
    netns: u32,
}

/// What the snapshot was not allowed to see.
#[derive(Debug, Default, PartialEq, Eq)]
struct Denied {
    /// Processes whose `/proc/<pid>/fd` or `/proc/<pid>/ns/net` could not be read.
    processes: usize,
    /// Network namespaces that could not be entered.
    namespaces: usize,
}

/// The capabilities looking into other processes and network namespaces takes, with their bits.
const NEEDED: [(&str, u32); 3] = [("CAP_SYS_PTRACE", 19), ("CAP_DAC_READ_SEARCH", 2), ("CAP_SYS_ADMIN", 21)];

/// Our effective capabilities (`CapEff` of /proc/self/status).
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

impl Denied {
    /// The one start-up warning: what was denied, which capability is missing (`effective`:
    /// our effective set), what is degraded. None if nothing was denied.
    fn warning(&self, effective: Option<u64>) -> Option<String> {
        if *self == Denied::default() {
            return None;
        }
        let missing: Vec<&str> = NEEDED
            .iter()
            .filter(|(_, bit)| effective.is_some_and(|e| e & (1 << bit) == 0))
            .map(|(name, _)| *name)
            .collect();
        let cause = if missing.is_empty() {
            "the capabilities are there, so something else refused it (a security module: AppArmor, SELinux)"
                .to_string()
        } else {
            format!("missing {}", missing.join(", "))
        };
        // Reconciliation opens /proc/<pid>/ns/net and enters the namespace: CAP_DAC_READ_SEARCH
        // alone does not matter to it.
        let time_wait = if missing.is_empty() || missing.iter().any(|c| *c != "CAP_DAC_READ_SEARCH") {
            ", and TIME_WAIT in other network namespaces is derived from closes (60 s expiry) instead of \
             reconciled with the kernel's table"
        } else {
            ""
        };
        Some(format!(
            "permission denied looking into other processes and network namespaces (could not read \
             /proc/<pid>/fd or /proc/<pid>/ns/net of {} processes, could not enter {} network namespaces): \
             {cause}. Degraded: sockets opened before the daemon started are not attributed to those \
             processes (seen at their next state change only){time_wait}. See docs/deploy.md, \"Privileges\"",
            self.processes, self.namespaces
        ))
    }
}

fn is_permission_denied(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == ErrorKind::PermissionDenied))
}

/// Every live TCP socket (TIME_WAIT excepted) held by a process, charged to the lowest pid that
/// holds it (the parent, for sockets shared across fork).
pub fn take() -> Result<Vec<SeedSocket>> {
    let mut procs: HashMap<u32, ProcInfo> = HashMap::new();
    let mut holders: HashMap<u32, u32> = HashMap::new();
    let mut denied = Denied::default();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((state, ticks)) = procfs::parse_stat(&stat) else { continue };
        if state == 'Z' {
            continue;
        }
        let (inodes, fds_denied) = procfs::socket_inodes(pid);
        denied.processes += usize::from(fds_denied);
        if inodes.is_empty() {
            continue;
        }
        let netns = match std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            Ok(m) => m.ino() as u32,
            Err(e) => {
                denied.processes += usize::from(!fds_denied && e.kind() == ErrorKind::PermissionDenied);
                continue;
            }
        };
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
            Err(e) if is_permission_denied(&e) => {
                log::debug!("start-up snapshot of netns {netns}: {e:#}");
                denied.namespaces += 1;
                continue;
            }
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
    if let Some(warning) = denied.warning(effective_capabilities()) {
        log::warn!("{warning}");
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warning_names_the_missing_capabilities() {
        assert_eq!(Denied::default().warning(Some(0)), None, "nothing denied, nothing to say");
        let denied = Denied { processes: 3, namespaces: 1 };
        let bpf_perfmon = 1 << 39 | 1 << 38;
        let w = denied.warning(Some(bpf_perfmon)).unwrap();
        assert!(w.contains("missing CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN"), "{w}");
        assert!(w.contains("of 3 processes") && w.contains("enter 1 network namespaces"), "{w}");
        assert!(w.contains("not attributed") && w.contains("TIME_WAIT"), "{w}");
        let w = denied.warning(Some(bpf_perfmon | 1 << 19 | 1 << 2)).unwrap();
        assert!(w.contains("missing CAP_SYS_ADMIN.") && !w.contains("CAP_SYS_PTRACE"), "{w}");
        let w = denied.warning(Some(bpf_perfmon | 1 << 19 | 1 << 2 | 1 << 21)).unwrap();
        assert!(w.contains("security module") && !w.contains("missing") && w.contains("TIME_WAIT"), "{w}");
        let w = denied.warning(Some(bpf_perfmon | 1 << 19 | 1 << 21)).unwrap();
        assert!(w.contains("missing CAP_DAC_READ_SEARCH.") && !w.contains("TIME_WAIT"), "{w}");
    }
}
