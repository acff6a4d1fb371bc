//! TIME_WAIT reconciliation with the kernel's own socket table.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::monotonic_ns;
use crate::host::{procfs, sock_diag};
use observer_core::aggregate::Aggregator;

/// Match derived TIME_WAIT entries with the kernel's table in every namespace that has some.
/// A pass of TIME_WAIT reconciliation may take at most this share of the time between passes:
/// with a large kernel table (tens of thousands of entries under a connection-per-request load),
/// passes space out instead of taking a CPU.
pub(super) const RECONCILE_DUTY: u32 = 100;

pub(super) async fn reconcile_time_wait(agg: Arc<Mutex<Aggregator>>, every: Duration) {
    let own = procfs::own_netns_inode().unwrap_or(0);
    let mut pause = every;
    loop {
        tokio::time::sleep(pause).await;
        let pass = std::time::Instant::now();
        let namespaces = agg.lock().expect("aggregator lock").timewait().namespaces();
        for (netns, owners) in namespaces {
            let started = monotonic_ns();
            let dump = tokio::task::spawn_blocking(move || {
                if netns == 0 || netns == own {
                    return sock_diag::dump_timewait(None);
                }
                // Enter the namespace through a live process that is in it.
                let pid = owners
                    .iter()
                    .map(|k| k.pid)
                    .find(|pid| procfs::netns_inode(*pid) == Some(netns))
                    .ok_or_else(|| anyhow::anyhow!("no live process left in netns {netns}"))?;
                sock_diag::dump_timewait(Some(std::path::Path::new(&format!("/proc/{pid}/ns/net"))))
            })
            .await;
            match dump {
                Ok(Ok(kernel)) => {
                    agg.lock().expect("aggregator lock").reconcile_time_wait(netns, started, &kernel, monotonic_ns());
                }
                Ok(Err(e)) => log::debug!("TIME_WAIT reconciliation of netns {netns} skipped: {e:#}"),
                Err(e) => log::warn!("TIME_WAIT reconciliation task failed: {e}"),
            }
        }
        pause = every.max(pass.elapsed() * RECONCILE_DUTY);
    }
}
