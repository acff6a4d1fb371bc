//! The process table: processes are created when an event first names them, described by the
//! daemon (command line, container), marked exited, and pruned after their retention. Each
//! holds its peers' figures and the endpoints it listens on.

use hashbrown::HashMap;

use super::{Aggregator, PeerStats, SECOND};
use crate::container::Container;
use crate::event::Owner;
use crate::model::{Direction, Endpoint, PortRange, ProcessKey};

/// How long a pruned process is remembered, so that late events of its orphaned sockets do not
/// bring it back.
const PRUNED_TTL_NS: u64 = 600 * SECOND;

#[derive(Clone, Debug)]
pub struct Process {
    pub key: ProcessKey,
    pub comm: String,
    pub cmdline: Option<String>,
    /// Its container and Kubernetes pod, from its cgroup.
    pub container: Container,
    /// When the last thread exited (CLOCK_MONOTONIC ns).
    pub exited_ns: Option<u64>,
    /// The ephemeral port range of its network namespace, as the daemon last read it.
    pub port_range: Option<PortRange>,
    pub outbound: HashMap<Endpoint, PeerStats>,
    pub inbound: HashMap<Endpoint, PeerStats>,
    /// Endpoints this process listens on, with their network namespace.
    pub(super) listeners: Vec<(Option<u32>, Endpoint)>,
}

impl Process {
    fn new(key: ProcessKey, comm: String) -> Process {
        Process {
            key,
            comm,
            cmdline: None,
            container: Container::default(),
            exited_ns: None,
            port_range: None,
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            listeners: Vec::new(),
        }
    }

    pub(super) fn peers_mut(&mut self, direction: Direction) -> &mut HashMap<Endpoint, PeerStats> {
        match direction {
            Direction::Outbound => &mut self.outbound,
            Direction::Inbound => &mut self.inbound,
        }
    }

    /// The listening endpoint a child socket with local endpoint `local` came from.
    pub(super) fn listener_for(&self, netns: Option<u32>, local: Endpoint) -> Option<Endpoint> {
        let local = local.canonical();
        self.listeners
            .iter()
            .find(|(ns, l)| {
                (ns.is_none() || netns.is_none() || *ns == netns)
                    && l.port() == local.port()
                    && (l.ip() == local.ip() || l.ip().is_unspecified())
            })
            .map(|(_, l)| *l)
    }
}

impl Aggregator {
    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.processes.values()
    }

    /// Processes seen since the last call, for the daemon to read their command lines.
    pub fn take_new_processes(&mut self) -> Vec<ProcessKey> {
        std::mem::take(&mut self.new_processes)
    }

    pub fn has_new_processes(&self) -> bool {
        !self.new_processes.is_empty()
    }

    pub fn set_process_info(
        &mut self,
        key: ProcessKey,
        comm: Option<String>,
        cmdline: Option<String>,
        container: Option<Container>,
    ) {
        if let Some(p) = self.processes.get_mut(&key.pid).filter(|p| p.key.same_process(&key)) {
            if let Some(c) = container {
                p.container = c;
            }
            if let Some(c) = comm.filter(|c| !c.is_empty()) {
                p.comm = c;
            }
            if cmdline.is_some() {
                p.cmdline = cmdline;
            }
        }
    }

    /// The ephemeral port range of the process's network namespace (read by the daemon).
    pub fn set_port_range(&mut self, key: ProcessKey, range: Option<PortRange>) {
        if let Some(p) = self.processes.get_mut(&key.pid).filter(|p| p.key.same_process(&key)) {
            p.port_range = range;
        }
    }

    /// A process is gone (found dead in /proc, or its pid was reused).
    pub fn mark_exited(&mut self, key: ProcessKey, now_ns: u64) {
        if let Some(p) = self.processes.get_mut(&key.pid).filter(|p| p.key.same_process(&key))
            && p.exited_ns.is_none()
        {
            p.exited_ns = Some(now_ns);
            self.exits.push(p.key);
        }
    }

    /// The process an event names, created on first sight. None for pruned processes and for
    /// late events of a previous holder of a reused pid.
    pub(super) fn ensure_process(&mut self, owner: &Owner, now_ns: u64) -> Option<ProcessKey> {
        if self.pruned.contains_key(&owner.key) {
            self.stats.events_after_prune += 1;
            return None;
        }
        if let Some(p) = self.processes.get_mut(&owner.key.pid) {
            if p.key.same_process(&owner.key) {
                if p.key.start_ns == 0 {
                    p.key.start_ns = owner.key.start_ns;
                }
                return Some(p.key);
            }
            if owner.key.start_ns < p.key.start_ns {
                // An older process that had this pid.
                self.stats.events_after_prune += 1;
                return None;
            }
            // The pid was reused: the previous process is gone.
            let old = p.key;
            self.prune(old, now_ns);
        }
        self.processes.insert(owner.key.pid, Process::new(owner.key, owner.comm.to_string()));
        self.new_processes.push(owner.key);
        Some(owner.key)
    }

    /// Prune the exited processes past their retention at `now_ns`, and forget the pruned ones
    /// remembered long enough.
    pub(super) fn prune_exited(&mut self, now_ns: u64) {
        let retention = self.cfg.exited_retention_ns;
        let expired: Vec<ProcessKey> = self
            .processes
            .values()
            .filter(|p| p.exited_ns.is_some_and(|t| now_ns.saturating_sub(t) >= retention))
            .map(|p| p.key)
            .collect();
        for key in expired {
            self.prune(key, now_ns);
        }
        self.pruned.retain(|_, t| now_ns.saturating_sub(*t) < PRUNED_TTL_NS);
    }

    /// Forget a process and everything charged to it; its active findings clear.
    fn prune(&mut self, key: ProcessKey, now_ns: u64) {
        let Some(p) = self.processes.remove(&key.pid) else { return };
        self.forget_sockets_of(key);
        self.forget_seeds_of(key);
        self.clear_findings_of(key, &p.comm, now_ns);
        self.timewait.remove_process(&key);
        self.pruned.insert(key, now_ns);
    }

    /// A listening endpoint in `netns` that a socket with local endpoint `local` belongs to:
    /// one of `prefer`'s first, then any process's (accepted sockets are often held by another
    /// process than the one that listens, e.g. forked workers).
    pub(super) fn find_listener(&self, prefer: ProcessKey, netns: Option<u32>, local: Endpoint) -> Option<Endpoint> {
        if let Some(l) = self.processes.get(&prefer.pid).and_then(|p| p.listener_for(netns, local)) {
            return Some(l);
        }
        self.processes.values().find_map(|p| p.listener_for(netns, local))
    }
}
