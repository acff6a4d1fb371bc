//! The JSON documents of the API, built from the aggregation. Field names here are the API
//! contract (docs/openapi.yaml describes them; a test checks the two agree).

use std::collections::BTreeMap;

use serde::Serialize;
use serde::ser::SerializeMap as _;

use crate::aggregate::{Aggregator, PeerStats, Process};
use crate::exphist::ExpHistogram;
use crate::lifetime::Lifetimes;
use crate::model::{Direction, Endpoint, FailureCounts, FailureReason, StateCounts, errno_name};
use crate::timewait::TwOwner;

/// Live sockets by state: every reported state, in a fixed order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sockets(pub StateCounts);

impl Serialize for Sockets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.iter().count()))?;
        for (state, n) in self.0.iter() {
            m.serialize_entry(state.name(), &n)?;
        }
        m.end()
    }
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectFailures {
    pub refused: u64,
    pub timeout: u64,
    pub unreachable: u64,
    pub reset: u64,
    pub other: u64,
}

impl From<&FailureCounts> for ConnectFailures {
    fn from(f: &FailureCounts) -> Self {
        ConnectFailures {
            refused: f.get(FailureReason::Refused),
            timeout: f.get(FailureReason::Timeout),
            unreachable: f.get(FailureReason::Unreachable),
            reset: f.get(FailureReason::Reset),
            other: f.get(FailureReason::Other),
        }
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LifetimeSeconds {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl From<&Lifetimes> for LifetimeSeconds {
    fn from(l: &Lifetimes) -> Self {
        let s = |ns: u64| ns as f64 / 1e9;
        LifetimeSeconds {
            count: l.count,
            mean: if l.count == 0 { 0.0 } else { s(l.sum_ns) / l.count as f64 },
            min: s(l.min_ns),
            max: s(l.max_ns),
        }
    }
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Upper bound (inclusive): 0, then powers of two.
    pub le: u64,
    pub count: u64,
}

/// Requests carried by each closed connection (whose opening was seen).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct RequestsPerConnection {
    pub count: u64,
    pub sum: u64,
    pub max: u64,
    /// Non-empty buckets; bucket `le` holds the values in (le/2, le].
    pub buckets: Vec<Bucket>,
}

impl From<&ExpHistogram> for RequestsPerConnection {
    fn from(h: &ExpHistogram) -> Self {
        RequestsPerConnection {
            count: h.count,
            sum: h.sum,
            max: h.max,
            buckets: h.buckets().map(|(le, count)| Bucket { le, count }).collect(),
        }
    }
}

/// Connection reuse figures of a peer.
#[derive(Serialize, Debug, Clone)]
pub struct Reuse {
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Requests per connection; 1.0 means no reuse. Null before the first connection.
    pub reuse_ratio: Option<f64>,
    pub new_connections_per_second: f64,
    pub requests_per_connection: RequestsPerConnection,
}

fn reuse(st: &PeerStats, now_ns: u64) -> Reuse {
    Reuse {
        requests: st.requests,
        bytes_sent: st.bytes_sent,
        bytes_received: st.bytes_received,
        reuse_ratio: (st.connections > 0).then(|| st.requests as f64 / st.connections as f64),
        new_connections_per_second: st.new_connections_per_second(now_ns),
        requests_per_connection: (&st.requests_per_connection).into(),
    }
}

#[derive(Serialize, Debug, Clone)]
pub struct Outbound {
    pub remote: String,
    pub sockets: Sockets,
    pub connections_opened: u64,
    pub closed_by_local: u64,
    pub closed_by_peer: u64,
    pub connect_failures: ConnectFailures,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub socket_errors: BTreeMap<String, u64>,
    pub connection_lifetime_seconds: LifetimeSeconds,
    #[serde(flatten)]
    pub reuse: Reuse,
}

#[derive(Serialize, Debug, Clone)]
pub struct Inbound {
    pub local: String,
    pub sockets: Sockets,
    pub connections_accepted: u64,
    pub closed_by_local: u64,
    pub closed_by_peer: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub socket_errors: BTreeMap<String, u64>,
    pub connection_lifetime_seconds: LifetimeSeconds,
    #[serde(flatten)]
    pub reuse: Reuse,
}

#[derive(Serialize, Debug, Clone)]
pub struct ProcessDetail {
    pub pid: u32,
    pub comm: String,
    pub cmdline: String,
    /// The process has exited; it is kept for the retention period, then pruned.
    pub exited: bool,
    pub sockets: Sockets,
    pub connections_opened: u64,
    pub connections_accepted: u64,
    pub outbound: Vec<Outbound>,
    pub inbound: Vec<Inbound>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    pub exited: bool,
    pub sockets: Sockets,
    pub connections_opened: u64,
    pub connections_accepted: u64,
}

fn errors(p: &PeerStats) -> BTreeMap<String, u64> {
    p.socket_errors.iter().map(|(e, n)| (errno_name(*e), *n)).collect()
}

/// Live sockets of a peer: the tracked ones plus its timewait entries.
fn peer_sockets(agg: &Aggregator, p: &Process, direction: Direction, peer: Endpoint, stats: &PeerStats) -> StateCounts {
    let mut s = stats.sockets;
    if let Some(tw) = agg.timewait().counts().get(&TwOwner { process: p.key, direction, peer }) {
        s.merge(tw);
    }
    s
}

fn sorted(m: &std::collections::HashMap<Endpoint, PeerStats>) -> Vec<(&Endpoint, &PeerStats)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by_key(|(e, _)| **e);
    v
}

/// The document of one process, with rates as of `now_ns` (CLOCK_MONOTONIC).
pub fn process_detail(agg: &Aggregator, p: &Process, now_ns: u64) -> ProcessDetail {
    let mut total = StateCounts::default();
    let mut outbound = Vec::new();
    for (peer, st) in sorted(&p.outbound) {
        let sockets = peer_sockets(agg, p, Direction::Outbound, *peer, st);
        total.merge(&sockets);
        outbound.push(Outbound {
            remote: peer.to_string(),
            sockets: Sockets(sockets),
            connections_opened: st.connections,
            closed_by_local: st.closed_by_local,
            closed_by_peer: st.closed_by_peer,
            connect_failures: (&st.connect_failures).into(),
            resets_sent: st.resets_sent,
            resets_received: st.resets_received,
            socket_errors: errors(st),
            connection_lifetime_seconds: (&st.lifetimes).into(),
            reuse: reuse(st, now_ns),
        });
    }
    let mut inbound = Vec::new();
    for (local, st) in sorted(&p.inbound) {
        let sockets = peer_sockets(agg, p, Direction::Inbound, *local, st);
        total.merge(&sockets);
        inbound.push(Inbound {
            local: local.to_string(),
            sockets: Sockets(sockets),
            connections_accepted: st.connections,
            closed_by_local: st.closed_by_local,
            closed_by_peer: st.closed_by_peer,
            resets_sent: st.resets_sent,
            resets_received: st.resets_received,
            socket_errors: errors(st),
            connection_lifetime_seconds: (&st.lifetimes).into(),
            reuse: reuse(st, now_ns),
        });
    }
    ProcessDetail {
        pid: p.key.pid,
        comm: p.comm.clone(),
        cmdline: p.cmdline.clone().unwrap_or_default(),
        exited: p.exited_ns.is_some(),
        sockets: Sockets(total),
        connections_opened: outbound.iter().map(|o| o.connections_opened).sum(),
        connections_accepted: inbound.iter().map(|i| i.connections_accepted).sum(),
        outbound,
        inbound,
    }
}

/// Live sockets, connections opened and connections accepted over all peers of a process.
pub fn process_totals(agg: &Aggregator, p: &Process) -> (StateCounts, u64, u64) {
    let mut total = StateCounts::default();
    let (mut opened, mut accepted) = (0, 0);
    for (peer, st) in &p.outbound {
        total.merge(&peer_sockets(agg, p, Direction::Outbound, *peer, st));
        opened += st.connections;
    }
    for (local, st) in &p.inbound {
        total.merge(&peer_sockets(agg, p, Direction::Inbound, *local, st));
        accepted += st.connections;
    }
    (total, opened, accepted)
}

pub fn process_summary(agg: &Aggregator, p: &Process) -> ProcessSummary {
    let (sockets, connections_opened, connections_accepted) = process_totals(agg, p);
    ProcessSummary {
        pid: p.key.pid,
        comm: p.comm.clone(),
        exited: p.exited_ns.is_some(),
        sockets: Sockets(sockets),
        connections_opened,
        connections_accepted,
    }
}

pub fn process_list(agg: &Aggregator) -> Vec<ProcessSummary> {
    let mut v: Vec<ProcessSummary> = agg.processes().map(|p| process_summary(agg, p)).collect();
    v.sort_by_key(|s| s.pid);
    v
}
