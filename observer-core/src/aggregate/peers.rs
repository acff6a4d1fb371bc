//! The figures of one peer of one process: live sockets by state, connections opened and
//! closed, failures, resets, errors, lifetimes, I/O, CLOSE_WAIT and TLS.

use std::collections::BTreeMap;

use super::{Aggregator, Inherited};
use crate::bursts::FailureLog;
use crate::closewait::CloseWaitTracker;
use crate::exphist::ExpHistogram;
use crate::idle::IdleCloses;
use crate::lifetime::Lifetimes;
use crate::model::{Direction, Endpoint, FailureCounts, FailureReason, IoCounts, ProcessKey, StateCounts, TcpState};
use crate::rate::RateWindow;
use crate::tls::TlsStats;

/// A bucket: the owner, the direction and the peer a socket is counted under.
pub(super) type PeerKey = (ProcessKey, Direction, Endpoint);

/// Figures for one peer of one process.
#[derive(Clone, Debug, Default)]
pub struct PeerStats {
    /// Live sockets by state (TIME_WAIT comes from the [`crate::timewait::TimeWaitTable`]).
    pub sockets: StateCounts,
    /// Connections opened (outbound) or accepted (inbound).
    pub connections: u64,
    pub closed_by_local: u64,
    pub closed_by_peer: u64,
    pub connect_failures: FailureCounts,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Errors the kernel reported on these sockets, by errno.
    pub socket_errors: BTreeMap<i32, u64>,
    /// From established to closed.
    pub lifetimes: Lifetimes,
    /// Request/response exchanges (see [`IoCounts::requests`]), on open and closed connections.
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Requests carried by each closed connection whose opening was seen.
    pub requests_per_connection: ExpHistogram,
    /// Connections opened (outbound) or accepted (inbound) over the last minute.
    pub new_connections: Option<Box<RateWindow>>,
    /// Live sockets in CLOSE_WAIT with their entry times, and the trend of their count.
    pub close_wait: CloseWaitTracker,
    /// TLS handshakes (None until the first).
    pub tls: Option<Box<TlsStats>>,
    /// The exited process whose live sockets this entry took over, if any (see `handover`).
    pub inherited: Option<Inherited>,
    /// How long connections had been idle when the peer closed them (outbound).
    pub idle_closes: IdleCloses,
    /// Resets received on connections the peer had already closed (in CLOSE_WAIT): the process
    /// sent on a connection the server had closed. With the time of the last one.
    pub resets_after_peer_close: u64,
    pub last_reset_after_peer_close_ns: u64,
    /// Outbound connections the process closed after at most two requests (what a full pool
    /// discards), with the time of the last one.
    pub discarded: u64,
    pub last_discard_ns: u64,
    /// Connections that carried three requests or more, open or closed.
    pub reused_connections: u64,
    /// The most ESTABLISHED sockets at once.
    pub peak_established: u64,
    /// The recent failed connects, in time (None until the first).
    pub failure_log: Option<Box<FailureLog>>,
    /// When the last connection was opened or accepted (0: none).
    pub last_connected_ns: u64,
}

impl PeerStats {
    /// A live socket is counted in `state` (`close_wait_since`: when it entered CLOSE_WAIT).
    pub(super) fn add_live(&mut self, state: TcpState, close_wait_since: Option<u64>) {
        self.sockets.add(state, 1);
        if let (TcpState::CloseWait, Some(t)) = (state, close_wait_since) {
            self.close_wait.enter(t);
        }
        if state == TcpState::Established {
            self.peak_established = self.peak_established.max(self.sockets.get(TcpState::Established));
        }
    }

    pub(super) fn remove_live(&mut self, state: TcpState, close_wait_since: Option<u64>) {
        self.sockets.sub(state, 1);
        if let (TcpState::CloseWait, Some(t)) = (state, close_wait_since) {
            self.close_wait.leave(t);
        }
    }

    pub(super) fn add_io(&mut self, requests: i64, delta: &IoCounts) {
        self.requests = self.requests.saturating_add_signed(requests);
        self.bytes_sent += delta.bytes_sent;
        self.bytes_received += delta.bytes_received;
    }

    pub(super) fn count_connection(&mut self, ts_ns: u64) {
        self.connections += 1;
        self.new_connections.get_or_insert_default().add(ts_ns);
        self.last_connected_ns = self.last_connected_ns.max(ts_ns);
    }

    pub(crate) fn connect_failed(&mut self, reason: FailureReason, ts_ns: u64) {
        self.connect_failures.add(reason);
        self.failure_log.get_or_insert_default().add(ts_ns, reason);
    }

    /// New connections per second over the last minute.
    pub fn new_connections_per_second(&self, now_ns: u64) -> f64 {
        self.new_connections.as_ref().map_or(0.0, |w| w.per_second(now_ns))
    }
}

impl Aggregator {
    /// Live sockets by state of `process`'s peer `stats` (`direction`, `peer`), with the
    /// TIME_WAIT sockets the TIME_WAIT table holds for it: what the API and the metrics show.
    pub fn peer_sockets(
        &self,
        process: &super::Process,
        direction: Direction,
        peer: Endpoint,
        stats: &PeerStats,
    ) -> StateCounts {
        let mut sockets = stats.sockets;
        let owner = crate::timewait::TwOwner { process: process.key, direction, peer };
        if let Some(tw) = self.timewait().counts(&owner) {
            sockets.merge(tw);
        }
        sockets
    }

    /// The figures of a bucket, created on first use; None if its process is gone (or is
    /// another holder of the pid).
    pub(super) fn peer_mut(
        &mut self,
        owner: ProcessKey,
        direction: Direction,
        peer: Endpoint,
    ) -> Option<&mut PeerStats> {
        let p = self.processes.get_mut(&owner.pid).filter(|p| p.key == owner)?;
        Some(p.peers_mut(direction).entry(peer).or_default())
    }
}
