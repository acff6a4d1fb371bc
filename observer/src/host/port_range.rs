//! The ephemeral port range (`net.ipv4.ip_local_port_range`) of a process's network namespace:
//! how many connections to one destination can exist at once, TIME_WAIT included.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, Result};

use observer_core::model::PortRange;

use super::{netns, procfs};

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The range of the namespace this thread is in.
fn read_here() -> Result<PortRange> {
    let text = std::fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
    PortRange::parse(&text).with_context(|| format!("{SYSCTL}: unexpected {text:?}"))
}

/// The ranges of the network namespaces of `pids`, each namespace read once. A process whose
/// namespace cannot be read is left out.
pub fn of_processes(pids: &[u32]) -> HashMap<u32, PortRange> {
    let own = procfs::own_netns_inode();
    let mut by_netns: HashMap<u32, Option<PortRange>> = HashMap::new();
    let mut out = HashMap::new();
    for &pid in pids {
        let Some(ns) = procfs::netns_inode(pid) else { continue };
        let range = *by_netns.entry(ns).or_insert_with(|| {
            let read = if Some(ns) == own {
                read_here()
            } else {
                netns::run_in(Path::new(&format!("/proc/{pid}/ns/net")), read_here)
            };
            read.map_err(|e| log::debug!("ephemeral port range of pid {pid}'s network namespace: {e:#}")).ok()
        });
        if let Some(r) = range {
            out.insert(pid, r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_the_hosts_range() {
        let me = std::process::id();
        let ranges = of_processes(&[me]);
        let text = std::fs::read_to_string(SYSCTL).unwrap();
        assert_eq!(ranges.get(&me).copied(), PortRange::parse(&text));
    }
}
