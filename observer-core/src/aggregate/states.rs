//! State changes of sockets: where a socket is counted when it is first seen, how its live
//! counts and its connection's figures follow its states, and what its close reports. A close
//! from FIN_WAIT2 or CLOSING leaves the socket in TIME_WAIT, counted in the [`TimeWaitTable`].

use super::{Aggregator, PeerKey, PeerStats, SocketRec, Tombstone};
use crate::event::SocketEvent;
use crate::model::{Direction, FailureReason, ProcessKey, TcpState};
use crate::timewait::{KernelTimeWait, TimeWaitTable, TwKey, TwOwner};
use crate::tls;

/// What one state change changes in the figures of the socket's bucket.
struct Transition {
    at: PeerKey,
    /// The state the socket was counted in, and when it had entered CLOSE_WAIT.
    prev: Option<TcpState>,
    prev_since: Option<u64>,
    /// The state it is counted in now, and when it entered CLOSE_WAIT.
    state: Option<TcpState>,
    since: Option<u64>,
    /// An outbound connection was established.
    opened: bool,
    /// The connection's close was counted: by the local end (true) or by the peer (false).
    closed_by_local: Option<bool>,
    /// The peer closed an outbound connection that had been idle this long.
    idle_ns: Option<u64>,
}

impl SocketRec {
    /// What `ev` tells of the socket's identity: its cookie, its addresses.
    fn take_identity(&mut self, ev: &SocketEvent) {
        if ev.cookie != 0 {
            self.cookie = ev.cookie;
        }
        if ev.has_tuple {
            // Complete now if it was not at creation (an accepted connection's peer, a failed
            // connect's port): its close comes without addresses.
            (self.local, self.remote) = (ev.local, ev.remote);
        } else if ev.local_port != 0 {
            // A connect's port, which its first record could not have.
            self.local.0.set_port(ev.local_port);
        }
    }

    /// The socket went from `old` to `new` at `ev`: the record follows, and the change to its
    /// bucket's figures is returned.
    fn enter(&mut self, ev: &SocketEvent, old: TcpState, new: TcpState) -> Transition {
        use TcpState::*;
        self.take_identity(ev);
        let (prev, prev_since) = (self.state, self.close_wait_since);
        self.state = (new != Close).then_some(new);
        self.close_wait_since = (new == CloseWait).then_some(ev.ts_ns);
        if new == Established {
            self.connected = true;
            self.established_ns.get_or_insert(ev.ts_ns);
        }
        let mut opened = false;
        let mut closed_by_local = None;
        match (old, new) {
            (SynSent, Established) if self.direction == Direction::Outbound => opened = true,
            (Established | SynRecv, FinWait1) if !self.close_counted => {
                self.close_counted = true;
                self.closed_locally = true;
                closed_by_local = Some(true);
            }
            (Established, CloseWait) if !self.close_counted => {
                self.close_counted = true;
                closed_by_local = Some(false);
            }
            _ => {}
        }
        let (state, since) = (self.state, self.close_wait_since);
        let peer_closed = closed_by_local == Some(false) && self.direction == Direction::Outbound;
        let idle_ns = ev.idle_ns.filter(|_| peer_closed);
        Transition { at: self.key(), prev, prev_since, state, since, opened, closed_by_local, idle_ns }
    }
}

impl Aggregator {
    pub fn timewait(&self) -> &TimeWaitTable {
        &self.timewait
    }

    pub fn reconcile_time_wait(&mut self, netns: u32, dump_started_ns: u64, kernel: &[KernelTimeWait], now_ns: u64) {
        self.timewait.reconcile(netns, dump_started_ns, kernel, now_ns);
    }

    pub(super) fn on_state(&mut self, ev: &SocketEvent, old: TcpState, new: TcpState) {
        use TcpState::*;
        let creation = ev.first || matches!((old, new), (Close, SynSent) | (_, Listen) | (Listen, SynRecv));
        if creation {
            // A record for this address is stale: the kernel reused the memory of a socket
            // whose end we did not see.
            self.set_aside_unreported(ev.sk, ev.ts_ns);
        }
        let tracked = self.sockets.contains_key(&ev.sk)
            || (!creation && ev.has_tuple && self.adopt_seed(ev))
            || self.start_tracking(ev, old, new, creation);
        if !tracked {
            return;
        }
        self.follow_kernel_owner(ev);
        let rec = self.sockets.get_mut(&ev.sk).expect("tracked above");
        let change = rec.enter(ev, old, new);
        if !self.charge(&change, ev.ts_ns) {
            return;
        }
        if new == Close {
            let rec = self.sockets.remove(&ev.sk).expect("tracked above");
            self.on_close(ev, old, rec);
        }
    }

    /// The kernel's owner record is authoritative (it follows accept()), unless it still names
    /// the exited process the socket was taken over from.
    fn follow_kernel_owner(&mut self, ev: &SocketEvent) {
        let Some(owner) = &ev.owner else { return };
        let rec = &self.sockets[&ev.sk];
        if owner.key != rec.owner
            && rec.inherited_from != Some(owner.key)
            && let Some(key) = self.ensure_process(owner, ev.ts_ns)
        {
            self.move_socket(ev.sk, key);
        }
    }

    /// Count a state change in its bucket's figures. False if the bucket's process is gone.
    fn charge(&mut self, t: &Transition, ts_ns: u64) -> bool {
        let (owner, direction, peer) = t.at;
        let Some(stats) = self.peer_mut(owner, direction, peer) else { return false };
        if let Some(s) = t.prev {
            stats.remove_live(s, t.prev_since);
        }
        if let Some(s) = t.state {
            stats.add_live(s, t.since);
        }
        if t.opened {
            stats.count_connection(ts_ns);
        }
        match t.closed_by_local {
            Some(true) => stats.closed_by_local += 1,
            Some(false) => stats.closed_by_peer += 1,
            None => {}
        }
        if let Some(idle) = t.idle_ns {
            stats.idle_closes.observe(idle);
        }
        true
    }

    /// Start tracking a socket seen for the first time. Returns false if it cannot be
    /// attributed.
    fn start_tracking(&mut self, ev: &SocketEvent, old: TcpState, new: TcpState, creation: bool) -> bool {
        let Some(key) = self.attribute(ev, new) else { return false };
        if new == TcpState::Close {
            // The end of a socket we never saw: only a failed connect is worth counting.
            if old == TcpState::SynSent
                && let Some(stats) = self.peer_mut(key, Direction::Outbound, ev.remote.canonical())
            {
                stats.connect_failed(FailureReason::of_connect(ev.error, ev.local.port()), ev.ts_ns);
            }
            return false;
        }
        let (at, listener, inherited_from) = self.place(ev, key, old, new, creation);
        let rec = SocketRec::new(ev, at, listener, (!creation).then_some(old), inherited_from);
        let (owner, direction, peer) = at;
        let process = self.processes.get_mut(&owner.pid).expect("ensured");
        if listener {
            process.listeners.push((ev.netns, peer));
        }
        process.peers_mut(direction).entry(peer).or_default();
        self.sockets.insert(ev.sk, rec);
        true
    }

    /// The process the kernel names as the owner of a socket seen for the first time. None if
    /// the event cannot be attributed.
    fn attribute(&mut self, ev: &SocketEvent, new: TcpState) -> Option<ProcessKey> {
        if !ev.has_tuple {
            // A compact transition of a socket whose first record was lost.
            self.stats.unattributed_events += 1;
            return None;
        }
        let Some(owner) = &ev.owner else {
            self.stats.unattributed_events += 1;
            if new == TcpState::Close {
                self.remember_closed(ev);
            }
            return None;
        };
        self.ensure_process(owner, ev.ts_ns)
    }

    /// Where a socket seen for the first time is counted: its bucket, whether it listens, and
    /// the exited process it was taken over from (a connection on an inherited listener).
    fn place(
        &self,
        ev: &SocketEvent,
        key: ProcessKey,
        old: TcpState,
        new: TcpState,
        creation: bool,
    ) -> (PeerKey, bool, Option<ProcessKey>) {
        use TcpState::*;
        match (old, new) {
            (Close, SynSent) => ((key, Direction::Outbound, ev.remote.canonical()), false, None),
            (_, Listen) => ((key, Direction::Inbound, ev.local.canonical()), true, None),
            // An accepted connection, at its creation or (as the kernel reports it) at the end of
            // SYN_RECV.
            (Listen, SynRecv) | (SynRecv, _) if creation => {
                if let Some((heir, l)) = self.heir_of_listener(key, ev.netns, ev.local) {
                    ((heir, Direction::Inbound, l), false, Some(key))
                } else {
                    let l = self.find_listener(key, ev.netns, ev.local);
                    ((key, Direction::Inbound, l.unwrap_or(ev.local.canonical())), false, None)
                }
            }
            // Adopted in mid-life (it existed before the daemon started tracking it).
            _ => match self.find_listener(key, ev.netns, ev.local) {
                Some(l) => ((key, Direction::Inbound, l), false, None),
                None => ((key, Direction::Outbound, ev.remote.canonical()), false, None),
            },
        }
    }

    fn on_close(&mut self, ev: &SocketEvent, old: TcpState, rec: SocketRec) {
        let handshake = self.tls.remove(&ev.sk).and_then(|mut c| c.close(ev.ts_ns));
        let (owner, direction, peer) = rec.key();
        self.report_close(ev, old, rec, handshake);
        self.tombstones.insert(ev.sk, Tombstone { owner, direction, peer, closed_ns: ev.ts_ns });
    }

    /// A connection ended (`ev` is its close, `old` the state it left): its figures.
    pub(super) fn report_close(
        &mut self,
        ev: &SocketEvent,
        old: TcpState,
        mut rec: SocketRec,
        handshake: Option<tls::Outcome>,
    ) {
        let Some(stats) = self.peer_mut(rec.owner, rec.direction, rec.peer) else { return };
        if let Some(o) = handshake {
            stats.tls.get_or_insert_default().add(&o);
        }
        // The kernel handed the socket's final I/O counters over with its close.
        let (requests, delta) = rec.io_update(&ev.io);
        stats.add_io(requests, &delta);
        stats.reused_connections += u64::from(rec.newly_reused());
        if rec.established_ns.is_some() && !rec.listener {
            stats.requests_per_connection.observe(rec.requests_total(&ev.io));
        }
        count_end(stats, ev, old, &mut rec);
        if matches!(old, TcpState::FinWait2 | TcpState::Closing) {
            let key = TwKey { netns: rec.netns.unwrap_or(0), local: rec.local.0, remote: rec.remote.0 };
            let owner = TwOwner { process: rec.owner, direction: rec.direction, peer: rec.peer };
            self.timewait.add(key, owner, ev.ts_ns);
        }
        self.uncharge(&rec);
    }
}

/// How a connection ended, in its bucket's figures: a failed connect, or (if it was connected)
/// who closed it, its acceptance if never seen, and how long it lived.
fn count_end(stats: &mut PeerStats, ev: &SocketEvent, old: TcpState, rec: &mut SocketRec) {
    match old {
        TcpState::SynSent => stats.connect_failed(FailureReason::of_connect(ev.error, ev.local.port()), ev.ts_ns),
        _ if rec.connected => {
            if !rec.close_counted {
                // Abortive close straight from a connected state.
                if rec.reset_received || ev.error != 0 {
                    stats.closed_by_peer += 1;
                } else {
                    stats.closed_by_local += 1;
                    rec.closed_locally = true;
                }
            }
            if rec.closed_locally
                && rec.direction == Direction::Outbound
                && rec.established_ns.is_some()
                && rec.requests_total(&ev.io) <= 2
            {
                // What a full pool does with the connection it cannot keep.
                stats.discarded += 1;
                stats.last_discard_ns = stats.last_discard_ns.max(ev.ts_ns);
            }
            if rec.direction == Direction::Inbound && !rec.listener && !rec.accept_counted {
                // Never seen accepted: charged to whoever owned it when it closed.
                stats.count_connection(rec.established_ns.unwrap_or(ev.ts_ns));
            }
            if let Some(t) = rec.established_ns {
                stats.lifetimes.observe_ns(ev.ts_ns.saturating_sub(t));
            }
        }
        _ => {}
    }
}
