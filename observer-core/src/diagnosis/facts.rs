//! What the checks read of one peer of one process: its figures, and what the aggregation
//! derives from them at the time of the query.

use crate::aggregate::{Aggregator, PeerStats, Process};
use crate::closewait::Status as CloseWaitStatus;
use crate::model::{Direction, Endpoint, PortRange, StateCounts, TcpState};

/// The facts of one peer of one process at `now_ns`.
pub struct Facts<'a> {
    pub now_ns: u64,
    pub comm: &'a str,
    pub direction: Direction,
    pub peer: Endpoint,
    pub stats: &'a PeerStats,
    /// Live sockets by state, TIME_WAIT included.
    pub sockets: StateCounts,
    pub new_connections_per_second: f64,
    pub close_wait: CloseWaitStatus,
    /// The process's ephemeral port range, if known.
    pub port_range: Option<PortRange>,
}

impl Facts<'_> {
    pub fn time_wait(&self) -> u64 {
        self.sockets.get(TcpState::TimeWait)
    }

    /// Requests per connection opened; None before the first connection.
    pub fn requests_per_connection(&self) -> Option<f64> {
        (self.stats.connections > 0).then(|| self.stats.requests as f64 / self.stats.connections as f64)
    }
}

pub fn facts_of<'a>(
    agg: &Aggregator,
    process: &'a Process,
    direction: Direction,
    peer: Endpoint,
    stats: &'a PeerStats,
    now_ns: u64,
) -> Facts<'a> {
    Facts {
        now_ns,
        comm: &process.comm,
        direction,
        peer,
        stats,
        sockets: agg.peer_sockets(process, direction, peer, stats),
        new_connections_per_second: stats.new_connections_per_second(now_ns),
        close_wait: stats.close_wait.status(now_ns, agg.close_wait_config()),
        port_range: process.port_range,
    }
}
