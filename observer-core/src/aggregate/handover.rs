//! Ownership that follows the socket. A process can exit while others still hold its sockets: a
//! launcher that listens, forks a daemon and exits; a double fork; a socket passed to a child
//! that the parent then leaves. The daemon finds who holds them now (see `holders`), and they are
//! charged to that process from then on. What happened before the exit stays with the exited
//! process; the live sockets and everything after move.

use super::{Aggregator, Tuple};
use crate::event::Owner;
use crate::model::{Direction, Endpoint, ProcessKey, TcpState};

/// Which socket of the aggregation: a tracked one (by its kernel address) or one from the
/// start-up snapshot not seen in an event yet (by its endpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketId {
    Tracked(u64),
    Seed(Tuple),
}

/// A live socket charged to an exited process, to look for among the files of live processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldSocket {
    pub id: SocketId,
    pub netns: u32,
    /// The kernel's cookie (0 if unknown: it is then found by its endpoints).
    pub cookie: u64,
    /// As the kernel has them.
    pub local: Endpoint,
    pub remote: Endpoint,
}

/// A listener that changed hands: the kernel's listener map must charge its new connections to
/// the new owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerMove {
    pub netns: u32,
    /// The listening endpoint as bound.
    pub local: Endpoint,
    pub owner: Owner,
}

/// What one handed-over socket was: its entry, and for a listener its network namespace and
/// endpoint as bound.
struct Moved {
    direction: Direction,
    peer: Endpoint,
    listener: Option<(u32, Endpoint)>,
}

/// Where the live sockets of a peer entry came from, when an exited process left them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inherited {
    pub from: ProcessKey,
    pub comm: String,
    /// Sockets this entry took over from that process.
    pub sockets: u64,
}

/// States in which a file may still hold a socket after its process exited. A socket the
/// process had closed (FIN_WAIT1 and after, LAST_ACK) is an orphan of the kernel's and stays
/// with it; so does a child not accepted yet (it follows its listener instead).
fn holdable(state: Option<TcpState>, listener: bool) -> bool {
    use TcpState::*;
    listener || matches!(state, Some(SynSent | Established | CloseWait))
}

impl Aggregator {
    /// Exited processes that may have left live sockets to others, since the last call.
    pub fn take_exits(&mut self) -> Vec<ProcessKey> {
        std::mem::take(&mut self.exits)
    }

    /// The live sockets charged to `key` that a file of another process may hold now.
    pub fn held_sockets(&self, key: ProcessKey) -> Vec<HeldSocket> {
        let tracked =
            self.sockets.iter().filter(|(_, r)| r.owner == key && holdable(r.state, r.listener)).map(|(sk, r)| {
                HeldSocket {
                    id: SocketId::Tracked(*sk),
                    netns: r.netns.unwrap_or(0),
                    cookie: r.cookie,
                    local: r.local,
                    remote: r.remote,
                }
            });
        let seeds =
            self.seeds.iter().filter(|(_, s)| s.owner == key && holdable(Some(s.state), s.listener)).map(|(t, _)| {
                HeldSocket {
                    id: SocketId::Seed(*t),
                    netns: t.0,
                    cookie: 0,
                    local: Endpoint(t.1),
                    remote: Endpoint(t.2),
                }
            });
        tracked.chain(seeds).collect()
    }

    /// The sockets of the exited process `from` that `found` says another process holds now:
    /// charge them to it from now on, and the children of its listeners that nobody accepted
    /// yet with them. Returns the listeners that changed hands.
    pub fn hand_over(&mut self, from: ProcessKey, found: &[(SocketId, Owner)], now_ns: u64) -> Vec<ListenerMove> {
        let Some(comm) = self.processes.get(&from.pid).filter(|p| p.key == from).map(|p| p.comm.clone()) else {
            return Vec::new();
        };
        let mut moves = Vec::new();
        for (id, owner) in found {
            if owner.key.same_process(&from) {
                continue;
            }
            let Some(to) = self.ensure_process(owner, now_ns) else { continue };
            let moved = match id {
                SocketId::Tracked(sk) => self.hand_over_socket(*sk, from, to),
                SocketId::Seed(tuple) => self.hand_over_seed(tuple, from, to),
            };
            let Some(m) = moved else { continue };
            self.note_inherited(to, m.direction, m.peer, from, &comm);
            if let Some((netns, local)) = m.listener {
                moves.push(ListenerMove { netns, local, owner: owner.clone() });
            }
        }
        self.hand_over_unaccepted(from, &moves, &comm);
        moves
    }

    /// Move a tracked socket of `from` to `to` (None if `from` no longer owns it).
    fn hand_over_socket(&mut self, sk: u64, from: ProcessKey, to: ProcessKey) -> Option<Moved> {
        let rec = self.sockets.get_mut(&sk).filter(|r| r.owner == from)?;
        rec.inherited_from = Some(from);
        let (direction, peer, netns, local, listener) = (rec.direction, rec.peer, rec.netns, rec.local, rec.listener);
        self.move_socket(sk, to);
        if listener {
            self.move_listener(from, to, netns, peer);
        }
        Some(Moved { direction, peer, listener: listener.then_some((netns.unwrap_or(0), local)) })
    }

    /// The same for a socket of the start-up snapshot.
    fn hand_over_seed(&mut self, tuple: &Tuple, from: ProcessKey, to: ProcessKey) -> Option<Moved> {
        let seed = self.seeds.get_mut(tuple).filter(|s| s.owner == from)?;
        seed.owner = to;
        let (direction, peer, state, since, listener) =
            (seed.direction, seed.peer, seed.state, seed.seeded_ns, seed.listener);
        if let Some(stats) = self.peer_mut(from, direction, peer) {
            stats.remove_live(state, Some(since));
        }
        if let Some(stats) = self.peer_mut(to, direction, peer) {
            stats.add_live(state, Some(since));
        }
        if listener {
            self.move_listener(from, to, Some(tuple.0), peer);
        }
        Some(Moved { direction, peer, listener: listener.then_some((tuple.0, Endpoint(tuple.1))) })
    }

    /// The listening endpoint `peer` in `netns` is `to`'s now, no longer `from`'s.
    fn move_listener(&mut self, from: ProcessKey, to: ProcessKey, netns: Option<u32>, peer: Endpoint) {
        if let Some(p) = self.processes.get_mut(&from.pid).filter(|p| p.key == from)
            && let Some(i) = p.listeners.iter().position(|(_, l)| *l == peer)
        {
            p.listeners.swap_remove(i);
        }
        if let Some(p) = self.processes.get_mut(&to.pid).filter(|p| p.key == to) {
            p.listeners.push((netns, peer));
        }
    }

    fn note_inherited(&mut self, to: ProcessKey, direction: Direction, peer: Endpoint, from: ProcessKey, comm: &str) {
        let Some(stats) = self.peer_mut(to, direction, peer) else { return };
        match &mut stats.inherited {
            Some(i) if i.from == from => i.sockets += 1,
            i => *i = Some(Inherited { from, comm: comm.to_string(), sockets: 1 }),
        }
    }

    /// Connections that arrived on a listener of `from` and that no process accepted yet (none
    /// has sent or received on them): they follow the listener to its new owner.
    fn hand_over_unaccepted(&mut self, from: ProcessKey, moves: &[ListenerMove], comm: &str) {
        let follow: Vec<(u64, ProcessKey, Endpoint)> = self
            .sockets
            .iter()
            .filter(|(_, r)| r.owner == from && r.direction == Direction::Inbound && !r.listener && !r.accept_counted)
            .filter(|(_, r)| r.state.is_some())
            .filter_map(|(sk, r)| {
                let m =
                    moves.iter().find(|m| m.local.canonical() == r.peer && r.netns.is_none_or(|ns| ns == m.netns))?;
                Some((*sk, m.owner.key, r.peer))
            })
            .collect();
        for (sk, to, peer) in follow {
            if let Some(rec) = self.sockets.get_mut(&sk) {
                rec.inherited_from = Some(from);
            }
            self.move_socket(sk, to);
            self.note_inherited(to, Direction::Inbound, peer, from, comm);
        }
    }

    /// A new connection on a listener that the kernel still charges to `key`, an exited process
    /// whose listener another process has taken over (until the kernel's listener map says so):
    /// that process, with the listening endpoint.
    pub(super) fn heir_of_listener(
        &self,
        key: ProcessKey,
        netns: Option<u32>,
        local: Endpoint,
    ) -> Option<(ProcessKey, Endpoint)> {
        let p = self.processes.get(&key.pid).filter(|p| p.key == key)?;
        if p.exited_ns.is_none() || p.listener_for(netns, local).is_some() {
            return None;
        }
        self.processes
            .values()
            .filter(|h| h.exited_ns.is_none())
            .find_map(|h| h.listener_for(netns, local).map(|l| (h.key, l)))
    }
}
