//! CLOSE_WAIT leaks: every tick samples each peer's CLOSE_WAIT count, and a leak verdict starts
//! a finding that stays active until the verdict clears (or its process is pruned). Each start
//! and clear is also an alert change, for the daemon's log.

use hashbrown::HashSet;

use super::{Aggregator, PeerKey};
use crate::closewait::{CloseWaitConfig, Status as CloseWaitStatus, Verdict};
use crate::model::{Direction, Endpoint, ProcessKey};

/// An active alert: a CLOSE_WAIT leak of one process towards one peer.
#[derive(Clone, Debug)]
pub struct LeakAlert {
    pub process: ProcessKey,
    pub comm: String,
    pub direction: Direction,
    pub peer: Endpoint,
    pub status: CloseWaitStatus,
    /// When the leak verdict started (CLOCK_MONOTONIC ns).
    pub since_ns: u64,
}

impl LeakAlert {
    fn of(key: PeerKey, comm: String, status: CloseWaitStatus, since_ns: u64) -> LeakAlert {
        LeakAlert { process: key.0, comm, direction: key.1, peer: key.2, status, since_ns }
    }
}

/// An alert that started or cleared, for the daemon's log.
#[derive(Clone, Debug)]
pub struct AlertChange {
    pub started: bool,
    pub finding: LeakAlert,
}

/// A bucket found leaking, with its process's name and its CLOSE_WAIT status.
type Leak = (PeerKey, String, CloseWaitStatus);

/// The status of a bucket with no CLOSE_WAIT left (its finding cleared).
fn no_close_wait() -> CloseWaitStatus {
    CloseWaitStatus { count: 0, oldest_ns: 0, growth_per_minute: 0.0, verdict: Verdict::None }
}

impl Aggregator {
    pub fn close_wait_config(&self) -> &CloseWaitConfig {
        &self.cfg.close_wait
    }

    /// The active CLOSE_WAIT leaks, oldest first.
    pub fn alerts(&self, now_ns: u64) -> Vec<LeakAlert> {
        let mut v: Vec<LeakAlert> = self
            .findings
            .iter()
            .filter_map(|(key, since_ns)| {
                let status = self.peer_close_wait(key, now_ns)?;
                let comm = self.processes.get(&key.0.pid)?.comm.clone();
                Some(LeakAlert::of(*key, comm, status, *since_ns))
            })
            .collect();
        v.sort_by_key(|f| (f.since_ns, f.process.pid, f.peer));
        v
    }

    /// Findings that started or cleared since the last call.
    pub fn take_alert_changes(&mut self) -> Vec<AlertChange> {
        std::mem::take(&mut self.alert_changes)
    }

    /// Sample every peer's CLOSE_WAIT count and start or clear leak findings.
    pub(super) fn evaluate_close_wait(&mut self, now_ns: u64) {
        let leaking = self.sample_close_wait(now_ns);
        let now_leaking: HashSet<PeerKey> = leaking.iter().map(|(k, _, _)| *k).collect();
        self.clear_findings(&now_leaking, now_ns);
        self.start_findings(leaking, now_ns);
    }

    /// Sample the CLOSE_WAIT count of every bucket that has had some: the ones leaking now.
    fn sample_close_wait(&mut self, now_ns: u64) -> Vec<Leak> {
        let cfg = self.cfg.close_wait.clone();
        let mut leaking = Vec::new();
        for p in self.processes.values_mut() {
            for (direction, peers) in [(Direction::Outbound, &mut p.outbound), (Direction::Inbound, &mut p.inbound)] {
                for (peer, stats) in peers.iter_mut() {
                    if stats.close_wait.is_idle() {
                        continue;
                    }
                    stats.close_wait.sample(now_ns, &cfg);
                    let status = stats.close_wait.status(now_ns, &cfg);
                    if status.verdict == Verdict::Leak {
                        leaking.push(((p.key, direction, *peer), p.comm.clone(), status));
                    }
                }
            }
        }
        leaking
    }

    /// Clear the findings of buckets no longer leaking.
    fn clear_findings(&mut self, leaking: &HashSet<PeerKey>, now_ns: u64) {
        let cleared: Vec<PeerKey> = self.findings.keys().filter(|k| !leaking.contains(*k)).copied().collect();
        for key in cleared {
            let since_ns = self.findings.remove(&key).unwrap_or(now_ns);
            let comm = self.processes.get(&key.0.pid).map(|p| p.comm.clone()).unwrap_or_default();
            let status = self.peer_close_wait(&key, now_ns).unwrap_or_else(no_close_wait);
            self.alert_changes
                .push(AlertChange { started: false, finding: LeakAlert::of(key, comm, status, since_ns) });
        }
    }

    /// Start findings for the buckets leaking that have none yet.
    fn start_findings(&mut self, leaking: Vec<Leak>, now_ns: u64) {
        for (key, comm, status) in leaking {
            if let hashbrown::hash_map::Entry::Vacant(e) = self.findings.entry(key) {
                e.insert(now_ns);
                self.alert_changes
                    .push(AlertChange { started: true, finding: LeakAlert::of(key, comm, status, now_ns) });
            }
        }
    }

    /// Clear the findings of a pruned process (`comm`: its name).
    pub(super) fn clear_findings_of(&mut self, process: ProcessKey, comm: &str, now_ns: u64) {
        let gone: Vec<PeerKey> = self.findings.keys().filter(|k| k.0 == process).copied().collect();
        for k in gone {
            let since_ns = self.findings.remove(&k).unwrap_or(now_ns);
            let finding = LeakAlert::of((process, k.1, k.2), comm.to_string(), no_close_wait(), since_ns);
            self.alert_changes.push(AlertChange { started: false, finding });
        }
    }

    fn peer_close_wait(&self, key: &PeerKey, now_ns: u64) -> Option<CloseWaitStatus> {
        let p = self.processes.get(&key.0.pid).filter(|p| p.key == key.0)?;
        let peers = match key.1 {
            Direction::Outbound => &p.outbound,
            Direction::Inbound => &p.inbound,
        };
        Some(peers.get(&key.2)?.close_wait.status(now_ns, &self.cfg.close_wait))
    }
}
