//! The socket-table audit: slots whose socket is gone without a reported close.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::monotonic_ns;
use crate::host::{procfs, sock_diag};
use crate::kernel::Probes;
use observer_core::aggregate::Aggregator;
use observer_core::table_audit::{self, Audit, Gone, StaleSlot};

use super::BATCH;
use super::reconcile::RECONCILE_DUTY;

/// How often the kernel's socket table is audited against the kernel's own list of sockets (at
/// most: like TIME_WAIT reconciliation, passes space out over a large table).
pub(super) const AUDIT_INTERVAL: Duration = Duration::from_secs(5);

/// Find the slots of the kernel's socket table whose socket is gone although the kernel never
/// reported its close, free them, and report their connections (see `table_audit`).
pub(super) async fn audit_socket_table(agg: Arc<Mutex<Aggregator>>, probes: Arc<Mutex<Probes>>) {
    let own = procfs::own_netns_inode().unwrap_or(0);
    let mut audit = Audit::default();
    let mut pause = AUDIT_INTERVAL;
    loop {
        tokio::time::sleep(pause).await;
        let pass = std::time::Instant::now();
        let p = probes.clone();
        // Read before any dump starts: a socket in the table then is in every dump unless gone.
        let Ok(slots) = tokio::task::spawn_blocking(move || p.lock().expect("probes lock").table_slots()).await else {
            continue;
        };
        // A few thousand lookups per lock: the API never waits long.
        let mut known = Vec::with_capacity(slots.len());
        for chunk in slots.chunks(BATCH) {
            let a = agg.lock().expect("aggregator lock");
            known.extend(chunk.iter().map(|s| a.slot_knowledge(s)));
        }
        let plan = audit.plan(&slots, &known);
        let mut kernel = HashMap::new();
        for (netns, pids) in table_audit::namespaces(&plan.suspects) {
            if netns == 0 {
                // Unknown namespace: left alone.
                continue;
            }
            let all_states = plan.all_states;
            let dump = tokio::task::spawn_blocking(move || {
                if netns == own {
                    return sock_diag::dump_cookies(None, all_states);
                }
                let path = procfs::netns_path(netns, &pids)
                    .ok_or_else(|| anyhow::anyhow!("nothing left in netns {netns} to enter it through"))?;
                sock_diag::dump_cookies(Some(&path), all_states)
            })
            .await;
            match dump {
                Ok(Ok(cookies)) => {
                    kernel.insert(netns, cookies);
                }
                Ok(Err(e)) => log::debug!("socket table audit of netns {netns} skipped: {e:#}"),
                Err(e) => log::warn!("socket table audit task failed: {e}"),
            }
        }
        let mut stale = audit.pass(&plan.suspects, &kernel);
        stale.extend(plan.replaced.iter().map(|s| StaleSlot::new(*s, Gone::Replaced)));
        log::debug!(
            "socket table audit: {} slots, {} suspects in {} namespaces (all states: {}), {} stale, {} missing from one dump, in {:?}",
            slots.len(),
            plan.suspects.len(),
            kernel.len(),
            plan.all_states,
            stale.len(),
            audit.missing_once(),
            pass.elapsed()
        );
        agg.lock().expect("aggregator lock").stats.table_audits += 1;
        if !stale.is_empty() {
            let p = probes.clone();
            let freed = tokio::task::spawn_blocking(move || {
                let p = p.lock().expect("probes lock");
                stale.into_iter().filter(|s| p.free_slot(s.slot.index, s.slot.cookie)).collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            // None freed: the kernel freed them meanwhile (it reported their closes after all).
            if !freed.is_empty() {
                let now = monotonic_ns();
                let mut a = agg.lock().expect("aggregator lock");
                let reported = freed.iter().filter(|s| a.close_unreported(s, now)).count();
                let gone = |g: Gone| freed.iter().filter(|s| s.gone == g).count();
                log::info!(
                    "socket table audit: freed {} slots of sockets whose close the kernel never reported ({} replaced by a new socket, {} in TIME_WAIT, {} gone; {reported} connections reported)",
                    freed.len(),
                    gone(Gone::Replaced),
                    gone(Gone::TimeWait),
                    gone(Gone::Missing),
                );
            }
        }
        pause = AUDIT_INTERVAL.max(pass.elapsed() * RECONCILE_DUTY);
    }
}
