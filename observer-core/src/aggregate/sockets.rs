//! The records of live sockets, one per kernel address, each charged to one bucket: moving them
//! between processes, dropping them, their periodic I/O flushes, and the tombstones closed ones
//! leave for late events.

use hashbrown::HashMap;

use super::{Aggregator, PeerKey, SECOND};
use crate::event::SocketEvent;
use crate::model::{Direction, Endpoint, IoCounts, ProcessKey, TcpState};

/// How long a closed socket is remembered, for events that arrive after its CLOSE (a RST sent
/// by close(), an error reported after the state change).
const TOMBSTONE_TTL_NS: u64 = 10 * SECOND;

/// What the aggregation knows of one live socket.
#[derive(Clone, Debug)]
pub(super) struct SocketRec {
    /// The socket's cookie, its key in the kernel's socket table (0 if unknown).
    pub(super) cookie: u64,
    pub(super) owner: ProcessKey,
    pub(super) direction: Direction,
    /// Aggregation key: remote endpoint (outbound) or listening endpoint (inbound).
    pub(super) peer: Endpoint,
    pub(super) listener: bool,
    /// As the kernel has them (for the 4-tuple of timewait entries and seeds).
    pub(super) local: Endpoint,
    pub(super) remote: Endpoint,
    /// State the socket is counted in (None before its first state or after CLOSE).
    pub(super) state: Option<TcpState>,
    /// When it entered CLOSE_WAIT, while it is there.
    pub(super) close_wait_since: Option<u64>,
    pub(super) netns: Option<u32>,
    pub(super) established_ns: Option<u64>,
    /// Seen in a connected state (also for sockets adopted mid-life).
    pub(super) connected: bool,
    pub(super) reset_received: bool,
    pub(super) close_counted: bool,
    /// The process closed it (sent the first FIN, or aborted it).
    pub(super) closed_locally: bool,
    /// Counted among the peer's reused connections (it carried three requests or more).
    pub(super) reuse_counted: bool,
    pub(super) accept_counted: bool,
    /// I/O counters already added to the peer's figures.
    pub(super) io: IoCounts,
    /// Requests already added to the peer's figures.
    pub(super) requests_counted: u64,
    /// Exchanges that were the TLS handshake, not requests.
    pub(super) handshake_runs: u32,
    /// The exited process this socket was taken over from: the kernel's records may still name
    /// it as the owner.
    pub(super) inherited_from: Option<ProcessKey>,
}

impl SocketRec {
    /// The record of the socket of `ev`, counted in bucket `at`. `seen` is the state it was in
    /// when first seen if it existed before (adopted mid-life, or from the start-up snapshot);
    /// None for a socket seen from its creation.
    pub(super) fn new(
        ev: &SocketEvent,
        at: PeerKey,
        listener: bool,
        seen: Option<TcpState>,
        inherited_from: Option<ProcessKey>,
    ) -> SocketRec {
        use TcpState::*;
        let (owner, direction, peer) = at;
        SocketRec {
            cookie: ev.cookie,
            owner,
            direction,
            peer,
            listener,
            local: ev.local,
            remote: ev.remote,
            state: None,
            close_wait_since: None,
            netns: ev.netns,
            established_ns: None,
            // Connected before it was seen, unless it was still connecting (or listening).
            connected: !listener && seen.is_some_and(|s| !matches!(s, SynSent | SynRecv)),
            reset_received: false,
            closed_locally: false,
            reuse_counted: false,
            // Already closing when seen: who closed it is not known.
            close_counted: seen.is_some_and(|s| matches!(s, FinWait1 | FinWait2 | Closing | CloseWait | LastAck)),
            // An adopted inbound socket was accepted before we looked.
            accept_counted: seen.is_some(),
            io: IoCounts::default(),
            requests_counted: 0,
            handshake_runs: 0,
            inherited_from,
        }
    }

    /// The bucket it is counted in.
    pub(super) fn key(&self) -> PeerKey {
        (self.owner, self.direction, self.peer)
    }

    /// The kernel's counters are now `io`: what to add to the peer's figures (requests, and the
    /// counters' growth), the handshake's exchanges left out.
    pub(super) fn io_update(&mut self, io: &IoCounts) -> (i64, IoCounts) {
        let delta = io.since(&self.io);
        let total = self.requests_total(io);
        // Negative when a read came before the TLS records that say how many exchanges were
        // the handshake: the requests counted then are taken back.
        let requests = total as i64 - self.requests_counted as i64;
        self.requests_counted = total;
        self.io = *io;
        (requests, delta)
    }

    /// Whether the connection has just become a reused one (three requests or more): true
    /// once.
    pub(super) fn newly_reused(&mut self) -> bool {
        let reused = !self.reuse_counted && !self.listener && self.requests_counted >= 3;
        self.reuse_counted |= reused;
        reused
    }

    /// Requests carried by the connection so far.
    pub(super) fn requests_total(&self, io: &IoCounts) -> u64 {
        io.requests(self.direction).saturating_sub(u64::from(self.handshake_runs))
    }
}

/// The bucket of a socket that closed, for its late events.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tombstone {
    pub(super) owner: ProcessKey,
    pub(super) direction: Direction,
    pub(super) peer: Endpoint,
    pub(super) closed_ns: u64,
}

impl Aggregator {
    /// Sockets currently tracked (not counting timewait entries).
    pub fn tracked_sockets(&self) -> usize {
        self.sockets.len()
    }

    /// I/O counters of live sockets read from the kernel's map (the periodic flush for
    /// long-lived connections; closing sockets hand theirs over with their CLOSE).
    ///
    /// An address with more than one record in the kernel's table is skipped: the socket it
    /// names now has one, the others are left by sockets whose close the kernel never reported
    /// (see `Stats::closes_not_seen`), and nothing here tells them apart. Applied in turn, they
    /// would add each other's counters to the live socket at every flush; skipped, the live
    /// socket's counters arrive with its close.
    pub fn flush_io(&mut self, counters: &[(u64, IoCounts)]) {
        let mut seen: HashMap<u64, u32> = HashMap::with_capacity(counters.len());
        for (sk, _) in counters {
            *seen.entry(*sk).or_default() += 1;
        }
        for (sk, io) in counters {
            if seen[sk] > 1 {
                continue;
            }
            let Some(rec) = self.sockets.get_mut(sk) else { continue };
            if *io == rec.io {
                continue;
            }
            let (requests, delta) = rec.io_update(io);
            let reused = rec.newly_reused();
            let (owner, direction, peer) = rec.key();
            if let Some(stats) = self.peer_mut(owner, direction, peer) {
                stats.add_io(requests, &delta);
                stats.reused_connections += u64::from(reused);
            }
        }
    }

    /// A process started using a connection accepted from a listener: it owns it, and it is
    /// the one that accepted it.
    pub(super) fn on_claim(&mut self, ev: &SocketEvent) {
        let Some(owner) = &ev.owner else { return };
        if !self.sockets.contains_key(&ev.sk) {
            self.stats.unattributed_events += 1;
            return;
        }
        let Some(key) = self.ensure_process(owner, ev.ts_ns) else { return };
        self.move_socket(ev.sk, key);
        let rec = self.sockets.get_mut(&ev.sk).expect("checked above");
        if rec.direction != Direction::Inbound || rec.listener || rec.accept_counted {
            return;
        }
        rec.accept_counted = true;
        let (owner, direction, peer) = rec.key();
        if let Some(stats) = self.peer_mut(owner, direction, peer) {
            stats.count_connection(ev.ts_ns);
        }
    }

    /// Charge a live socket to another process (it was accepted, or the kernel says so).
    pub(super) fn move_socket(&mut self, sk: u64, to: ProcessKey) {
        let Some(rec) = self.sockets.get_mut(&sk) else { return };
        let from = rec.owner;
        if from == to {
            return;
        }
        rec.owner = to;
        let (direction, peer, state, since) = (rec.direction, rec.peer, rec.state, rec.close_wait_since);
        if let Some(p) = self.processes.get_mut(&from.pid).filter(|p| p.key == from)
            && let (Some(s), Some(stats)) = (state, p.peers_mut(direction).get_mut(&peer))
        {
            stats.remove_live(s, since);
        }
        if let Some(p) = self.processes.get_mut(&to.pid).filter(|p| p.key == to) {
            let stats = p.peers_mut(direction).entry(peer).or_default();
            if let Some(s) = state {
                stats.add_live(s, since);
            }
        }
    }

    /// Take a socket out of the live counts (it closed, or its record is stale).
    pub(super) fn drop_socket(&mut self, sk: u64) -> Option<SocketRec> {
        self.tls.remove(&sk);
        let rec = self.sockets.remove(&sk)?;
        self.uncharge(&rec);
        Some(rec)
    }

    /// Take a socket that left the table out of its process's figures.
    pub(super) fn uncharge(&mut self, rec: &SocketRec) {
        if !rec.listener && rec.state.is_none() {
            return;
        }
        if let Some(p) = self.processes.get_mut(&rec.owner.pid).filter(|p| p.key == rec.owner) {
            if rec.listener
                && let Some(i) = p.listeners.iter().position(|(_, l)| *l == rec.peer)
            {
                p.listeners.swap_remove(i);
            }
            if let (Some(s), Some(stats)) = (rec.state, p.peers_mut(rec.direction).get_mut(&rec.peer)) {
                stats.remove_live(s, rec.close_wait_since);
            }
        }
    }

    /// Forget the sockets (with their handshakes) and tombstones of a pruned process.
    pub(super) fn forget_sockets_of(&mut self, key: ProcessKey) {
        let tls = &mut self.tls;
        self.sockets.retain(|sk, r| {
            let keep = r.owner != key;
            if !keep {
                tls.remove(sk);
            }
            keep
        });
        self.tombstones.retain(|_, t| t.owner != key);
    }

    pub(super) fn expire_tombstones(&mut self, now_ns: u64) {
        self.tombstones.retain(|_, t| now_ns.saturating_sub(t.closed_ns) < TOMBSTONE_TTL_NS);
    }
}
