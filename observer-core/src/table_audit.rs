//! Auditing the kernel's socket table against the kernel's own list of sockets (sock_diag, what
//! `ss` reads): the slots whose socket is gone although the kernel never reported its CLOSE.
//!
//! A slot is freed at CLOSE, which every TCP socket passes through before it is destroyed. On
//! 6.18 the tracepoint never reports it for a small share of orphaned sockets (docs/design.md,
//! "Known gaps"): their slots would stay taken for ever, and the daemon would hold their
//! connections open. Each socket has a cookie, unique for the kernel's lifetime, in its slot and
//! in sock_diag's answers, so the two lists can be matched exactly.
//!
//! A slot's socket is gone:
//! - at once, when its cookie is a timewait socket's (the kernel made it from the full socket,
//!   which it then destroyed);
//! - when its cookie is in neither list of two dumps in a row, each taken after the slot was
//!   read (a dump is not atomic: a socket moving in the kernel's table while it is walked can be
//!   missed once).
//!
//! The slots of a namespace that could not be dumped are left alone.
//!
//! Only the slots that can be stale are checked ([`Audit::plan`]): those of sockets the daemon
//! knows in a closing state (where 6.18 loses closes), and those of sockets it does not know
//! after a whole pass. The dump then asks the kernel for the closing and timewait states only,
//! unless an unknown socket needs them all. A slot whose socket the daemon knows closed (a new
//! socket took its address) is freed without a dump. With no slot to check there is no dump.

use std::collections::{HashMap, HashSet};

use crate::model::IoCounts;

/// A taken slot of the kernel's socket table, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSlot {
    /// Its index in the slot array.
    pub index: u32,
    pub cookie: u64,
    /// The socket's address, as events name it.
    pub sk: u64,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// The process that owned the socket last (to enter its namespace).
    pub owner_pid: u32,
    /// What the socket sent and received, until it closed.
    pub io: IoCounts,
}

/// The kernel's TCP sockets of one network namespace, by cookie.
#[derive(Clone, Debug, Default)]
pub struct KernelCookies {
    /// Full sockets, in any state.
    pub full: HashSet<u64>,
    /// Timewait sockets (TIME_WAIT, and FIN_WAIT2 for orphans): what is left of a full socket
    /// once it closed, with its cookie; each with when its TIME_WAIT began, from its timer
    /// (`sock_diag::time_wait_began`), if the kernel says.
    pub timewait: HashMap<u64, Option<u64>>,
    /// When the dump ended (CLOCK_MONOTONIC ns): a socket it did not list was gone by then (or
    /// missed while it moved in the kernel's table, which the next dump tells).
    pub dumped_ns: u64,
}

/// What the daemon knows of a slot's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// Closed: a new socket took its address (the daemon set it aside).
    Replaced,
    /// Open, in a closing state (FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK).
    Closing,
    /// Open, in another state.
    Open,
    /// Not known to the daemon (its first record is not read yet, or was lost).
    Unknown,
}

/// The slots one pass checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Stale: freed without a dump.
    pub replaced: Vec<TableSlot>,
    /// To look for in the kernel's sockets.
    pub suspects: Vec<TableSlot>,
    /// Whether the dump needs every state (a suspect's state is not known), not only the
    /// closing and timewait ones.
    pub all_states: bool,
}

/// How the audit knows a slot's socket is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// A new socket took its address.
    Replaced,
    /// It is a timewait socket now: it closed through TIME_WAIT.
    TimeWait,
    /// The kernel has no socket with its cookie.
    Missing,
}

/// A slot whose socket is gone, to free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleSlot {
    pub slot: TableSlot,
    pub gone: Gone,
    /// The latest its socket can have closed (CLOCK_MONOTONIC ns), when the audit knows: the
    /// start of its TIME_WAIT, or the end of the first dump that did not list it.
    pub closed_by_ns: Option<u64>,
}

impl StaleSlot {
    pub fn new(slot: TableSlot, gone: Gone) -> StaleSlot {
        StaleSlot { slot, gone, closed_by_ns: None }
    }
}

/// The audit's memory between passes.
#[derive(Debug, Default)]
pub struct Audit {
    /// Cookies of the slots that no dump of the previous pass had, with when that dump ended.
    missing_once: HashMap<u64, u64>,
    /// Cookies of the slots of sockets the daemon did not know at the previous pass.
    unknown: HashSet<u64>,
}

impl Audit {
    /// The slots to check this pass, from what the daemon knows of each (`known[i]` of
    /// `slots[i]`). A socket the daemon does not know is checked from the second pass that finds
    /// it so: its first record may not have been read yet.
    pub fn plan(&mut self, slots: &[TableSlot], known: &[Known]) -> Plan {
        let mut plan = Plan::default();
        let mut unknown = HashSet::new();
        for (s, k) in slots.iter().zip(known) {
            match k {
                Known::Replaced => plan.replaced.push(*s),
                Known::Closing => plan.suspects.push(*s),
                Known::Open => {}
                Known::Unknown => {
                    if self.unknown.contains(&s.cookie) {
                        plan.suspects.push(*s);
                        plan.all_states = true;
                    }
                    unknown.insert(s.cookie);
                }
            }
        }
        self.unknown = unknown;
        plan
    }

    /// One pass: `slots` were read before the dumps in `kernel` started, one per network
    /// namespace that could be dumped.
    pub fn pass(&mut self, slots: &[TableSlot], kernel: &HashMap<u32, KernelCookies>) -> Vec<StaleSlot> {
        let mut missing = HashMap::new();
        let mut stale = Vec::new();
        for s in slots {
            let Some(k) = kernel.get(&s.netns) else { continue };
            if k.full.contains(&s.cookie) {
                continue;
            }
            if let Some(began) = k.timewait.get(&s.cookie) {
                stale.push(StaleSlot { closed_by_ns: *began, ..StaleSlot::new(*s, Gone::TimeWait) });
            } else if let Some(first) = self.missing_once.get(&s.cookie) {
                // Gone by the first dump that missed it: the second says it was no move.
                stale.push(StaleSlot { closed_by_ns: Some(*first), ..StaleSlot::new(*s, Gone::Missing) });
            } else {
                missing.insert(s.cookie, k.dumped_ns);
            }
        }
        self.missing_once = missing;
        stale
    }

    /// Slots missing from one dump, waiting for the next to confirm.
    pub fn missing_once(&self) -> usize {
        self.missing_once.len()
    }
}

/// The namespaces to dump for `slots`: each with the pids that may be in it (the slots' owners).
pub fn namespaces(slots: &[TableSlot]) -> HashMap<u32, Vec<u32>> {
    let mut out: HashMap<u32, Vec<u32>> = HashMap::new();
    for s in slots {
        let pids = out.entry(s.netns).or_default();
        if !pids.contains(&s.owner_pid) {
            pids.push(s.owner_pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(index: u32, cookie: u64, netns: u32) -> TableSlot {
        TableSlot {
            index,
            cookie,
            sk: 0x1000 + u64::from(index),
            netns,
            owner_pid: 100 + index,
            io: IoCounts::default(),
        }
    }

    fn kernel(netns: u32, full: &[u64], timewait: &[u64]) -> HashMap<u32, KernelCookies> {
        kernel_at(netns, full, timewait, 0)
    }

    /// Timewait cookies under 100 say their TIME_WAIT began at cookie * 1000 ns.
    fn kernel_at(netns: u32, full: &[u64], timewait: &[u64], dumped_ns: u64) -> HashMap<u32, KernelCookies> {
        let k = KernelCookies {
            full: full.iter().copied().collect(),
            timewait: timewait.iter().map(|c| (*c, (*c < 100).then_some(*c * 1000))).collect(),
            dumped_ns,
        };
        HashMap::from([(netns, k)])
    }

    #[test]
    fn a_slot_whose_socket_is_in_time_wait_is_stale_at_once() {
        let mut audit = Audit::default();
        let slots = [slot(0, 11, 7), slot(1, 12, 7)];
        let stale = audit.pass(&slots, &kernel(7, &[11], &[12]));
        assert_eq!(stale, vec![StaleSlot { slot: slots[1], gone: Gone::TimeWait, closed_by_ns: Some(12_000) }]);
        assert_eq!(audit.missing_once(), 0);
    }

    #[test]
    fn a_missing_socket_is_stale_only_when_two_dumps_in_a_row_miss_it() {
        let mut audit = Audit::default();
        let slots = [slot(0, 11, 7), slot(1, 12, 7), slot(2, 13, 7)];
        // First pass: 12 and 13 are missing; nothing is freed yet.
        assert_eq!(audit.pass(&slots, &kernel_at(7, &[11], &[], 5_000)), vec![]);
        assert_eq!(audit.missing_once(), 2);
        // Second pass: 13 shows up again (the first dump missed it), 12 is still missing: gone
        // by the first dump.
        let stale = audit.pass(&slots, &kernel_at(7, &[11, 13], &[], 10_000));
        assert_eq!(stale, vec![StaleSlot { closed_by_ns: Some(5_000), ..StaleSlot::new(slots[1], Gone::Missing) }]);
        // 13 is no suspect any more: one more miss does not free it.
        assert_eq!(audit.pass(&slots[2..], &kernel(7, &[], &[])), vec![]);
        assert_eq!(audit.missing_once(), 1);
    }

    #[test]
    fn a_miss_that_is_not_followed_by_another_is_forgotten() {
        let mut audit = Audit::default();
        let slots = [slot(0, 11, 7)];
        assert_eq!(audit.pass(&slots, &kernel(7, &[], &[])), vec![]);
        assert_eq!(audit.pass(&slots, &kernel(7, &[11], &[])), vec![]);
        assert_eq!(audit.pass(&slots, &kernel(7, &[], &[])), vec![], "one miss again, not two in a row");
    }

    #[test]
    fn slots_of_a_namespace_that_was_not_dumped_are_left_alone() {
        let mut audit = Audit::default();
        let slots = [slot(0, 11, 7), slot(1, 21, 8)];
        // Only namespace 7 could be dumped; it has neither cookie: its slot is stale after two
        // passes, the other namespace's never.
        let passes: Vec<Vec<u32>> =
            (0..3).map(|_| audit.pass(&slots, &kernel(7, &[], &[])).iter().map(|s| s.slot.index).collect()).collect();
        assert_eq!(passes, vec![vec![], vec![0], vec![]]);
        // A cookie in another namespace's dump does not keep a slot alive.
        let mut both = kernel(7, &[21], &[]);
        both.insert(8, KernelCookies::default());
        let mut audit = Audit::default();
        audit.pass(&slots, &both);
        let stale = audit.pass(&slots, &both);
        assert_eq!(stale.len(), 2, "{stale:?}");
    }

    #[test]
    fn only_closing_and_long_unknown_sockets_are_suspects() {
        let mut audit = Audit::default();
        let slots = [slot(0, 11, 7), slot(1, 12, 7), slot(2, 13, 7), slot(3, 14, 7)];
        let known = |s: &TableSlot| match s.cookie {
            11 => Known::Replaced,
            12 => Known::Closing,
            13 => Known::Open,
            _ => Known::Unknown,
        };
        let known: Vec<Known> = slots.iter().map(known).collect();
        let plan = audit.plan(&slots, &known);
        assert_eq!(plan, Plan { replaced: vec![slots[0]], suspects: vec![slots[1]], all_states: false });
        // Unknown a second time: a suspect, and the dump needs every state.
        let plan = audit.plan(&slots, &known);
        assert_eq!(plan.suspects, vec![slots[1], slots[3]]);
        assert!(plan.all_states);
        // Known in between: it starts over.
        let mut later = known.clone();
        later[3] = Known::Open;
        audit.plan(&slots, &later);
        assert!(!audit.plan(&slots, &known).all_states);
        // Nothing to check: no suspects, no dump.
        assert_eq!(audit.plan(&slots, &[Known::Open; 4]), Plan::default());
    }

    #[test]
    fn namespaces_list_each_owner_once() {
        let mut slots = vec![slot(0, 11, 7), slot(1, 12, 7), slot(2, 13, 8)];
        slots[1].owner_pid = slots[0].owner_pid;
        let ns = namespaces(&slots);
        assert_eq!(ns[&7], vec![100]);
        assert_eq!(ns[&8], vec![102]);
    }
}
