//! TIME_WAIT per process and peer.
//!
//! The kernel has no state transition into TIME_WAIT for the owning socket: an active close
//! ends with FIN_WAIT2->CLOSE (or CLOSING->CLOSE) and the kernel keeps a separate timewait
//! entry with the same 4-tuple for 60 s. So the aggregation derives an entry, charged to the
//! socket's owner, at each completed active close; [`TimeWaitTable::reconcile`] then matches the
//! entries with the kernel's own table (sock_diag, the same source as `ss -tan state time-wait`):
//! entries the kernel dropped early (port reuse, RST, bucket overflow) go, and the kernel's
//! sub-state (TIME_WAIT, or FIN_WAIT2 while the peer has not closed yet) is adopted.

use hashbrown::HashMap;
use std::net::SocketAddr;

use crate::model::{Direction, Endpoint, ProcessKey, StateCounts, TcpState};

/// `TCP_TIMEWAIT_LEN`.
pub const TIME_WAIT_NS: u64 = 60_000_000_000;
/// How long past the kernel's own deadline an entry is kept when it cannot be reconciled.
const SLACK_NS: u64 = 2_000_000_000;
/// An entry the kernel still had at a reconciliation is kept at least this long after it
/// (a FIN_WAIT2 timewait entry restarts its 60 s when the peer's FIN arrives).
const RECONCILED_GRACE_NS: u64 = 10_000_000_000;
/// Reconciliation passes in a row that must miss an entry before it goes. A netlink dump is not
/// atomic: under churn, a socket can move in the kernel's hash table while it is dumped and be
/// listed in no batch, so one miss is not proof that the kernel dropped the entry.
const MISSES_TO_DROP: u8 = 2;

/// A timewait entry in the kernel, as the 4-tuple the socket had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwKey {
    /// Network namespace inode (0: the daemon's own).
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Who a derived timewait entry is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TwOwner {
    pub process: ProcessKey,
    pub direction: Direction,
    pub peer: Endpoint,
}

/// A [`TwKey`] as the table stores it: 44 bytes instead of 72 (`SocketAddr` holds an IPv6
/// address's flow and scope too). With the owner interned ([`TwEntry::owner`]), a slot of the
/// table takes 80 bytes instead of 152: at thousands of closes a second the table holds tens of
/// thousands of entries, and each close's insert is a cache miss into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PackedKey {
    /// IPv4 addresses in the first word, the rest 0.
    local_ip: [u32; 4],
    remote_ip: [u32; 4],
    netns: u32,
    local_port: u16,
    remote_port: u16,
    v6: bool,
}

impl PackedKey {
    fn of(k: &TwKey) -> PackedKey {
        let ip = |a: &SocketAddr| -> [u32; 4] {
            match a {
                SocketAddr::V4(v) => [u32::from(*v.ip()), 0, 0, 0],
                SocketAddr::V6(v) => {
                    let b = u128::from(*v.ip());
                    [(b >> 96) as u32, (b >> 64) as u32, (b >> 32) as u32, b as u32]
                }
            }
        };
        PackedKey {
            local_ip: ip(&k.local),
            remote_ip: ip(&k.remote),
            netns: k.netns,
            local_port: k.local.port(),
            remote_port: k.remote.port(),
            v6: k.local.is_ipv6(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct TwEntry {
    /// Index of the owner in [`TimeWaitTable::owners`].
    owner: u32,
    /// TIME_WAIT, or FIN_WAIT2 while the peer has not sent its FIN.
    substate: TcpState,
    /// The reconciliation pass that last found it in the kernel's table.
    seen_pass: u32,
    /// Passes in a row that did not find it (see [`MISSES_TO_DROP`]).
    missed: u8,
    created_ns: u64,
    expires_ns: u64,
}

/// One timewait socket from the kernel's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelTimeWait {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// TIME_WAIT or FIN_WAIT2 (`tw_substate`).
    pub substate: TcpState,
}

#[derive(Default)]
pub struct TimeWaitTable {
    entries: HashMap<PackedKey, TwEntry>,
    /// By index, each owner that entries are charged to and its live counts, kept in step with
    /// `entries` (a slot is reused once no entry is charged to its owner).
    owners: Vec<(TwOwner, StateCounts)>,
    /// The index of each owner that entries are charged to now.
    owner_ids: HashMap<TwOwner, u32>,
    free_ids: Vec<u32>,
    /// Per netns: kernel TIME_WAIT entries that no derived entry matched at the last
    /// reconciliation (created before the daemon started, or by sockets it could not attribute).
    unattributed: HashMap<u32, u64>,
    /// Reconciliation passes so far.
    passes: u32,
}

impl TimeWaitTable {
    /// Record the timewait entry left by a completed active close at `ts_ns`.
    pub fn add(&mut self, key: TwKey, owner: TwOwner, ts_ns: u64) {
        let entry = TwEntry {
            owner: self.intern(owner),
            substate: TcpState::TimeWait,
            seen_pass: 0,
            missed: 0,
            created_ns: ts_ns,
            expires_ns: ts_ns + TIME_WAIT_NS + SLACK_NS,
        };
        // Counted before the entry it replaces is uncounted: an owner whose count fell to 0 in
        // between would lose its index.
        self.count(&entry);
        if let Some(old) = self.entries.insert(PackedKey::of(&key), entry) {
            self.uncount(&old);
        }
    }

    fn intern(&mut self, owner: TwOwner) -> u32 {
        if let Some(&id) = self.owner_ids.get(&owner) {
            return id;
        }
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.owners[id as usize] = (owner, StateCounts::default());
                id
            }
            None => {
                self.owners.push((owner, StateCounts::default()));
                (self.owners.len() - 1) as u32
            }
        };
        self.owner_ids.insert(owner, id);
        id
    }

    fn owner(&self, e: &TwEntry) -> &TwOwner {
        &self.owners[e.owner as usize].0
    }

    fn count(&mut self, e: &TwEntry) {
        self.owners[e.owner as usize].1.add(e.substate, 1);
    }

    fn uncount(&mut self, e: &TwEntry) {
        let (owner, counts) = &mut self.owners[e.owner as usize];
        counts.sub(e.substate, 1);
        if counts.total() == 0 {
            self.owner_ids.remove(owner);
            self.free_ids.push(e.owner);
        }
    }

    /// Drop entries past their deadline.
    pub fn expire(&mut self, now_ns: u64) {
        let mut gone = Vec::new();
        self.entries.retain(|_, e| {
            let keep = e.expires_ns > now_ns;
            if !keep {
                gone.push(*e);
            }
            keep
        });
        for e in gone {
            self.uncount(&e);
        }
    }

    /// Drop everything charged to a process (it was pruned).
    pub fn remove_process(&mut self, process: &ProcessKey) {
        let mut gone = Vec::new();
        let owners = &self.owners;
        self.entries.retain(|_, e| {
            let keep = owners[e.owner as usize].0.process != *process;
            if !keep {
                gone.push(*e);
            }
            keep
        });
        for e in gone {
            self.uncount(&e);
        }
    }

    /// Match the entries of network namespace `netns` with the kernel's table, dumped starting
    /// at `dump_started_ns`. Entries created after the dump started are left alone; an entry goes
    /// once [`MISSES_TO_DROP`] passes in a row did not list it.
    pub fn reconcile(&mut self, netns: u32, dump_started_ns: u64, kernel: &[KernelTimeWait], now_ns: u64) {
        // Each kernel entry is looked up where it is (no second table of the kernel's tens of
        // thousands of entries), then one sweep drops what no lookup marked.
        self.passes = self.passes.wrapping_add(1).max(1);
        let pass = self.passes;
        let mut matched = 0u64;
        let mut kernel_tw = 0u64;
        let mut changed = Vec::new();
        for k in kernel {
            let is_tw = k.substate == TcpState::TimeWait;
            kernel_tw += u64::from(is_tw);
            let key = PackedKey::of(&TwKey { netns, local: k.local, remote: k.remote });
            let Some(e) = self.entries.get_mut(&key) else { continue };
            if e.seen_pass == pass {
                continue; // listed twice
            }
            matched += u64::from(is_tw);
            let before = *e;
            e.seen_pass = pass;
            e.missed = 0;
            e.substate = k.substate;
            e.expires_ns = e.expires_ns.max(now_ns + RECONCILED_GRACE_NS);
            if before.substate != e.substate {
                changed.push((before, *e));
            }
        }
        let mut gone = Vec::new();
        self.entries.retain(|key, e| {
            if key.netns != netns || e.seen_pass == pass || e.created_ns >= dump_started_ns {
                return true;
            }
            e.missed = e.missed.saturating_add(1);
            let stale = e.missed >= MISSES_TO_DROP;
            if stale {
                gone.push(*e);
            }
            !stale
        });
        for (before, after) in changed {
            // In this order, for the reason given in `add`.
            self.count(&after);
            self.uncount(&before);
        }
        for e in gone {
            self.uncount(&e);
        }
        self.unattributed.insert(netns, kernel_tw.saturating_sub(matched));
    }

    /// Network namespaces that have entries, with the processes charged in each (candidates to
    /// enter the namespace through).
    pub fn namespaces(&self) -> HashMap<u32, Vec<ProcessKey>> {
        let mut out: HashMap<u32, Vec<ProcessKey>> = HashMap::new();
        for (k, e) in &self.entries {
            let v = out.entry(k.netns).or_default();
            let process = self.owner(e).process;
            if !v.contains(&process) {
                v.push(process);
            }
        }
        out
    }

    /// Live timewait sockets (TIME_WAIT and FIN_WAIT2 sub-states) charged to `owner`; None when
    /// there are none.
    pub fn counts(&self, owner: &TwOwner) -> Option<&StateCounts> {
        self.owner_ids.get(owner).map(|&id| &self.owners[id as usize].1)
    }

    /// Kernel TIME_WAIT sockets not charged to any process, over all namespaces.
    pub fn unattributed(&self) -> u64 {
        self.unattributed.values().sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn owner(pid: u32) -> TwOwner {
        TwOwner {
            process: ProcessKey { pid, start_ns: 1 },
            direction: Direction::Outbound,
            peer: Endpoint(sa("127.0.0.1:80")),
        }
    }

    fn key(port: u16) -> TwKey {
        TwKey { netns: 7, local: SocketAddr::new("127.0.0.1".parse().unwrap(), port), remote: sa("127.0.0.1:80") }
    }

    fn kernel(port: u16, substate: TcpState) -> KernelTimeWait {
        KernelTimeWait {
            local: SocketAddr::new("127.0.0.1".parse().unwrap(), port),
            remote: sa("127.0.0.1:80"),
            substate,
        }
    }

    #[test]
    fn derived_entries_count_until_they_expire() {
        let mut t = TimeWaitTable::default();
        for p in 0..50 {
            t.add(key(40000 + p), owner(1), 1_000);
        }
        assert_eq!(t.counts(&owner(1)).unwrap().get(TcpState::TimeWait), 50);
        t.expire(1_000 + TIME_WAIT_NS);
        assert_eq!(t.counts(&owner(1)).unwrap().get(TcpState::TimeWait), 50, "kept through the slack");
        t.expire(1_000 + TIME_WAIT_NS + SLACK_NS);
        assert!(t.counts(&owner(1)).is_none());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn reconciliation_follows_the_kernel_table() {
        let mut t = TimeWaitTable::default();
        t.add(key(1), owner(1), 10); // still in the kernel as TIME_WAIT
        t.add(key(2), owner(1), 10); // kernel says FIN_WAIT2 (peer has not closed)
        t.add(key(3), owner(1), 10); // gone from the kernel (reused port)
        t.add(key(4), owner(1), 500); // created after the dump started: kept
        let k = [kernel(1, TcpState::TimeWait), kernel(2, TcpState::FinWait2), kernel(9, TcpState::TimeWait)];
        t.reconcile(7, 100, &k, 1_000);
        assert_eq!(t.len(), 4, "one miss is not enough to drop an entry");
        t.reconcile(7, 100, &k, 2_000);
        let c = *t.counts(&owner(1)).unwrap();
        assert_eq!(c.get(TcpState::TimeWait), 2);
        assert_eq!(c.get(TcpState::FinWait2), 1);
        assert_eq!(t.len(), 3);
        assert_eq!(t.unattributed(), 1, "port 9 is in the kernel but was never derived");
    }

    /// A netlink dump under churn can miss a socket that stays in the kernel's table: one pass
    /// that does not list an entry keeps it, a pass that lists it again starts the count over.
    #[test]
    fn an_entry_goes_only_after_two_passes_in_a_row_miss_it() {
        let mut t = TimeWaitTable::default();
        t.add(key(1), owner(1), 10);
        let listed = [kernel(1, TcpState::TimeWait)];
        t.reconcile(7, 100, &[], 1_000);
        assert_eq!(t.counts(&owner(1)).unwrap().get(TcpState::TimeWait), 1, "missed once: kept");
        t.reconcile(7, 200, &listed, 2_000);
        t.reconcile(7, 300, &[], 3_000);
        assert_eq!(t.counts(&owner(1)).unwrap().get(TcpState::TimeWait), 1, "listed in between: kept");
        t.reconcile(7, 400, &[], 4_000);
        assert!(t.counts(&owner(1)).is_none(), "missed twice in a row: gone");
        assert_eq!(t.len(), 0);
        assert_eq!(t.unattributed(), 0);
    }

    #[test]
    fn reconciliation_of_another_namespace_leaves_entries_alone() {
        let mut t = TimeWaitTable::default();
        t.add(key(1), owner(1), 10);
        t.reconcile(8, 100, &[], 1_000);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_reused_tuple_is_charged_once_to_the_latest_owner() {
        let mut t = TimeWaitTable::default();
        t.add(key(1), owner(1), 10);
        t.add(key(1), owner(2), 20);
        assert!(t.counts(&owner(1)).is_none());
        assert_eq!(t.counts(&owner(2)).unwrap().get(TcpState::TimeWait), 1);
    }

    #[test]
    fn a_lone_entry_changing_substate_stays_charged_to_its_owner() {
        let mut t = TimeWaitTable::default();
        t.add(key(1), owner(1), 10);
        t.reconcile(7, 100, &[kernel(1, TcpState::FinWait2)], 1_000);
        assert_eq!(t.counts(&owner(1)).unwrap().get(TcpState::FinWait2), 1);
        assert_eq!(t.counts(&owner(1)).unwrap().get(TcpState::TimeWait), 0);
        // A new owner must not take the index of one that still has entries.
        t.add(key(2), owner(2), 1_100);
        assert_eq!(t.counts(&owner(1)).unwrap().total(), 1);
        assert_eq!(t.counts(&owner(2)).unwrap().total(), 1);
        let mut ns = t.namespaces()[&7].clone();
        ns.sort_by_key(|p| p.pid);
        assert_eq!(ns, vec![owner(1).process, owner(2).process]);
    }

    #[test]
    fn an_owner_with_no_entries_left_gives_its_index_to_the_next() {
        let mut t = TimeWaitTable::default();
        t.add(key(1), owner(1), 10);
        t.add(key(1), owner(2), 20); // the same tuple, reused: owner 1 has nothing left
        assert!(t.counts(&owner(1)).is_none());
        t.add(key(2), owner(3), 30);
        t.add(key(3), owner(2), 40);
        assert_eq!(t.counts(&owner(2)).unwrap().get(TcpState::TimeWait), 2);
        assert_eq!(t.counts(&owner(3)).unwrap().get(TcpState::TimeWait), 1);
        assert!(t.owners.len() <= 2, "index of owner 1 reused: {} owners", t.owners.len());
        t.remove_process(&owner(2).process);
        assert_eq!(t.len(), 1);
        assert_eq!(t.namespaces()[&7], vec![owner(3).process]);
        // IPv4 and IPv6 tuples are different keys, whatever their bits.
        let v6 = TwKey { netns: 7, local: sa("[::1]:2"), remote: sa("[::1]:80") };
        t.add(v6, owner(3), 50);
        assert_eq!(t.counts(&owner(3)).unwrap().get(TcpState::TimeWait), 2);
    }

    #[test]
    fn pruning_a_process_drops_its_entries() {
        let mut t = TimeWaitTable::default();
        t.add(key(1), owner(1), 10);
        t.add(key(2), owner(2), 10);
        t.remove_process(&owner(1).process);
        assert_eq!(t.len(), 1);
        assert!(t.counts(&owner(1)).is_none());
        assert_eq!(t.namespaces()[&7], vec![owner(2).process]);
    }
}
