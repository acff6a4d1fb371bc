//! Housekeeping: pruning, process information from /proc, and process exits.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::monotonic_ns;
use crate::host::{cgroup, exits, port_range, procfs};
use observer_core::aggregate::{Aggregator, AlertChange};
use observer_core::model::ProcessKey;

use super::Wake;

/// How often the ephemeral port ranges of the processes' namespaces are read again, in rounds.
const PORT_RANGE_ROUNDS: u64 = 30;

/// Every second: prune and expire; read /proc for new processes and watch them for their exit
/// (pidfds), at once when the aggregation sees new ones; every 5 s, look for exits among the
/// processes no pidfd watches; every 30 s, read the port ranges of their namespaces again.
pub(super) async fn housekeeping(agg: Arc<Mutex<Aggregator>>, watch_exits: bool, wake: Wake) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0u64;
    // The live processes whose exit no pidfd watches (all of them without pidfds).
    let mut polled: HashSet<ProcessKey> = HashSet::new();
    loop {
        let full = tokio::select! {
            _ = interval.tick() => true,
            _ = wake.new_processes.notified() => false,
        };
        let new = {
            let mut a = agg.lock().expect("aggregator lock");
            if full {
                a.tick(monotonic_ns());
                log_alert_changes(&a.take_alert_changes());
            }
            a.take_new_processes()
        };
        let mut dead = Vec::new();
        if full {
            round += 1;
            if round.is_multiple_of(PORT_RANGE_ROUNDS) {
                let live: Vec<ProcessKey> = {
                    let a = agg.lock().expect("aggregator lock");
                    a.processes().filter(|p| p.exited_ns.is_none()).map(|p| p.key).collect()
                };
                set_port_ranges(&agg, &live);
            }
            if round.is_multiple_of(5) {
                polled.retain(|k| {
                    let alive = procfs::is_alive(k);
                    if !alive {
                        dead.push(*k);
                    }
                    alive
                });
            }
        }
        let mut info = Vec::with_capacity(new.len());
        for k in new {
            let alive = if watch_exits { watch(&agg, k, &wake.exits) } else { None };
            let alive = alive.unwrap_or_else(|| {
                let alive = procfs::is_alive(&k);
                if alive {
                    polled.insert(k);
                }
                alive
            });
            if alive {
                info.push((k, procfs::comm(k.pid), procfs::cmdline(k.pid), cgroup::read(k.pid)));
            } else {
                dead.push(k);
            }
        }
        if info.is_empty() && dead.is_empty() {
            continue;
        }
        set_port_ranges(&agg, &info.iter().map(|(k, ..)| *k).collect::<Vec<_>>());
        let now = monotonic_ns();
        let mut a = agg.lock().expect("aggregator lock");
        for (k, comm, cmdline, container) in info {
            a.set_process_info(k, comm, cmdline, container);
        }
        if !dead.is_empty() {
            for k in dead {
                a.mark_exited(k, now);
            }
            wake.exits.notify_one();
        }
    }
}

/// Read the ephemeral port ranges of the namespaces of `keys` (outside the lock) and record them.
fn set_port_ranges(agg: &Mutex<Aggregator>, keys: &[ProcessKey]) {
    if keys.is_empty() {
        return;
    }
    let ranges = port_range::of_processes(&keys.iter().map(|k| k.pid).collect::<Vec<_>>());
    let mut a = agg.lock().expect("aggregator lock");
    for k in keys {
        a.set_port_range(*k, ranges.get(&k.pid).copied());
    }
}

/// Watch `k` for its exit through a pidfd: whether it is alive, None if no pidfd can watch it.
pub(super) fn watch(agg: &Arc<Mutex<Aggregator>>, k: ProcessKey, exits: &Arc<Notify>) -> Option<bool> {
    match exits::open(&k) {
        Ok(Some(fd)) => {
            tokio::spawn(watch_exit(agg.clone(), k, fd, exits.clone()));
            Some(true)
        }
        Ok(None) => Some(false),
        Err(e) => {
            log::debug!("pid {}: no pidfd ({e}), its exit is found by polling /proc", k.pid);
            None
        }
    }
}

/// Mark `key` exited when its pidfd says so.
pub(super) async fn watch_exit(
    agg: Arc<Mutex<Aggregator>>,
    key: ProcessKey,
    fd: std::os::fd::OwnedFd,
    exits: Arc<Notify>,
) {
    if let Err(e) = exits::wait(fd).await {
        log::debug!("pid {}: cannot wait on its pidfd ({e}), its exit is found by polling /proc", key.pid);
        while procfs::is_alive(&key) {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
    agg.lock().expect("aggregator lock").mark_exited(key, monotonic_ns());
    exits.notify_one();
}

/// One warning line when a CLOSE_WAIT leak starts and one when it clears.
pub(super) fn log_alert_changes(changes: &[AlertChange]) {
    for c in changes {
        let f = &c.finding;
        if c.started {
            log::warn!(
                "CLOSE_WAIT leak: pid {} ({}) {} {}: {} sockets in CLOSE_WAIT, oldest {:.0} s, {:+.1} per minute",
                f.process.pid,
                f.comm,
                f.direction.name(),
                f.peer,
                f.status.count,
                f.status.oldest_ns as f64 / 1e9,
                f.status.growth_per_minute
            );
        } else {
            log::warn!(
                "CLOSE_WAIT leak cleared: pid {} ({}) {} {}: {} sockets in CLOSE_WAIT now",
                f.process.pid,
                f.comm,
                f.direction.name(),
                f.peer,
                f.status.count
            );
        }
    }
}
