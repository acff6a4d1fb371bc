//! The sockets found in the kernel's table at start-up: counted in their owners' figures at
//! once, and turned into tracked sockets by their first event. Unattributed sockets seen
//! closing are remembered for a while, so that a snapshot taken just before does not bring
//! them back.

use hashbrown::HashSet;
use std::net::SocketAddr;

use super::{Aggregator, SECOND, SocketRec};
use crate::event::{Owner, SocketEvent};
use crate::model::{Direction, Endpoint, ProcessKey, TcpState};

/// How long the 4-tuple of an unattributed socket that closed is remembered, so that a
/// start-up snapshot taken just before does not resurrect it.
const RECENTLY_CLOSED_TTL_NS: u64 = 30 * SECOND;

/// A socket found in the kernel's table at start-up, with the process that holds it.
#[derive(Clone, Debug)]
pub struct SeedSocket {
    pub netns: u32,
    /// Local and remote endpoints as the kernel has them (not canonical).
    pub local: Endpoint,
    pub remote: Endpoint,
    pub state: TcpState,
    pub owner: Owner,
}

/// Network namespace, local and remote endpoint: how a socket is known before its address is.
pub type Tuple = (u32, SocketAddr, SocketAddr);

/// A seeded socket, counted in its owner's figures until its first event turns it into a
/// tracked socket.
#[derive(Clone, Debug)]
pub(super) struct Seed {
    pub(super) owner: ProcessKey,
    pub(super) direction: Direction,
    pub(super) peer: Endpoint,
    pub(super) listener: bool,
    pub(super) state: TcpState,
    /// When the seed was taken (a CLOSE_WAIT seed has been in CLOSE_WAIT at least since).
    pub(super) seeded_ns: u64,
}

impl Aggregator {
    /// Seed the table with the sockets found at start-up. Sockets already tracked through
    /// events, or seen closing without an owner, are skipped.
    pub fn seed(&mut self, sockets: &[SeedSocket], now_ns: u64) {
        let tracked: HashSet<Tuple> =
            self.sockets.values().map(|r| (r.netns.unwrap_or(0), r.local.0, r.remote.0)).collect();
        // Listeners first, so that accepted sockets find theirs.
        let mut ordered: Vec<&SeedSocket> = sockets.iter().filter(|s| s.state == TcpState::Listen).collect();
        ordered.extend(sockets.iter().filter(|s| s.state != TcpState::Listen));
        for s in ordered {
            let tuple = (s.netns, s.local.0, s.remote.0);
            if tracked.contains(&tuple) || self.recently_closed.contains_key(&tuple) || self.seeds.contains_key(&tuple)
            {
                continue;
            }
            let Some(key) = self.ensure_process(&s.owner, 0) else { continue };
            let listener = s.state == TcpState::Listen;
            let (direction, peer) = if listener {
                (Direction::Inbound, s.local.canonical())
            } else {
                match self.find_listener(key, Some(s.netns), s.local) {
                    Some(l) => (Direction::Inbound, l),
                    None => (Direction::Outbound, s.remote.canonical()),
                }
            };
            let process = self.processes.get_mut(&key.pid).expect("ensured");
            if listener {
                process.listeners.push((Some(s.netns), peer));
            }
            process.peers_mut(direction).entry(peer).or_default().add_live(s.state, Some(now_ns));
            self.seeds.insert(tuple, Seed { owner: key, direction, peer, listener, state: s.state, seeded_ns: now_ns });
        }
    }

    /// Turn the seed of this event's socket, if any, into a tracked socket.
    pub(super) fn adopt_seed(&mut self, ev: &SocketEvent) -> bool {
        let tuple = (ev.netns.unwrap_or(0), ev.local.0, ev.remote.0);
        let Some(seed) = self.seeds.remove(&tuple) else { return false };
        let Some(p) = self.processes.get_mut(&seed.owner.pid).filter(|p| p.key == seed.owner) else { return false };
        if let Some(stats) = p.peers_mut(seed.direction).get_mut(&seed.peer) {
            stats.remove_live(seed.state, Some(seed.seeded_ns));
        }
        let at = (seed.owner, seed.direction, seed.peer);
        self.sockets.insert(ev.sk, SocketRec::new(ev, at, seed.listener, Some(seed.state), None));
        true
    }

    /// An unattributed socket closed: a snapshot must not seed it.
    pub(super) fn remember_closed(&mut self, ev: &SocketEvent) {
        self.recently_closed.insert((ev.netns.unwrap_or(0), ev.local.0, ev.remote.0), ev.ts_ns);
    }

    pub(super) fn expire_recently_closed(&mut self, now_ns: u64) {
        self.recently_closed.retain(|_, t| now_ns.saturating_sub(*t) < RECENTLY_CLOSED_TTL_NS);
    }

    /// Forget the seeds of a pruned process.
    pub(super) fn forget_seeds_of(&mut self, key: ProcessKey) {
        self.seeds.retain(|_, seed| seed.owner != key);
    }
}
