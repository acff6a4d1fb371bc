//! `GET /api/v1/processes/{pid}`: one process, peer by peer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::nullable;
use super::parts::{
    CloseWait, ConnectFailures, IdleCloseSeconds, InheritedFrom, LifetimeSeconds, RequestsPerConnection, Sockets, Tls,
};
use crate::aggregate::{Aggregator, PeerStats, Process};
use crate::closewait::Verdict;
use crate::model::{Direction, Endpoint, StateCounts, errno_name};

/// Connection reuse figures of a peer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Reuse {
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Requests per connection; 1.0 means no reuse. Null before the first connection.
    #[serde(deserialize_with = "nullable")]
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

/// The summary over peers: counts and growth add up, the oldest is the oldest, and the
/// process leaks if any of its peers does.
fn close_wait_summary<'a>(peers: impl Iterator<Item = &'a CloseWait>) -> CloseWait {
    let mut sum = CloseWait { count: 0, oldest_seconds: 0.0, growth_per_minute: 0.0, verdict: Verdict::None };
    for c in peers {
        sum.count += c.count;
        sum.oldest_seconds = sum.oldest_seconds.max(c.oldest_seconds);
        sum.growth_per_minute += c.growth_per_minute;
        sum.verdict = match (sum.verdict, c.verdict) {
            (Verdict::Leak, _) | (_, Verdict::Leak) => Verdict::Leak,
            _ if sum.count > 0 => Verdict::PooledIdle,
            _ => Verdict::None,
        };
    }
    sum
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
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
    pub close_wait: CloseWait,
    /// How long connections had been idle when this peer closed them.
    pub idle_close_seconds: IdleCloseSeconds,
    /// TLS handshakes; null if none was seen.
    #[serde(deserialize_with = "nullable")]
    pub tls: Option<Tls>,
    /// The exited process whose live sockets this entry took over; null if none.
    #[serde(deserialize_with = "nullable")]
    pub inherited_from: Option<InheritedFrom>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
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
    pub close_wait: CloseWait,
    /// TLS handshakes; null if none was seen.
    #[serde(deserialize_with = "nullable")]
    pub tls: Option<Tls>,
    /// The exited process whose live sockets this entry took over; null if none.
    #[serde(deserialize_with = "nullable")]
    pub inherited_from: Option<InheritedFrom>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProcessDetail {
    pub pid: u32,
    pub comm: String,
    pub cmdline: String,
    /// The container it runs in (from its cgroup), or null.
    #[serde(deserialize_with = "nullable")]
    pub container_id: Option<String>,
    /// The Kubernetes pod it belongs to (from its cgroup), or null.
    #[serde(deserialize_with = "nullable")]
    pub pod_uid: Option<String>,
    /// The process has exited; it is kept for the retention period, then pruned.
    pub exited: bool,
    pub sockets: Sockets,
    pub connections_opened: u64,
    pub connections_accepted: u64,
    /// CLOSE_WAIT over all peers.
    pub close_wait: CloseWait,
    pub outbound: Vec<Outbound>,
    pub inbound: Vec<Inbound>,
}

fn errors(p: &PeerStats) -> BTreeMap<String, u64> {
    p.socket_errors.iter().map(|(e, n)| (errno_name(*e), *n)).collect()
}

fn sorted(m: &hashbrown::HashMap<Endpoint, PeerStats>) -> Vec<(&Endpoint, &PeerStats)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by_key(|(e, _)| **e);
    v
}

fn outbound(agg: &Aggregator, p: &Process, peer: Endpoint, st: &PeerStats, now_ns: u64) -> Outbound {
    Outbound {
        remote: peer.to_string(),
        sockets: Sockets(agg.peer_sockets(p, Direction::Outbound, peer, st)),
        connections_opened: st.connections,
        closed_by_local: st.closed_by_local,
        closed_by_peer: st.closed_by_peer,
        connect_failures: (&st.connect_failures).into(),
        resets_sent: st.resets_sent,
        resets_received: st.resets_received,
        socket_errors: errors(st),
        connection_lifetime_seconds: (&st.lifetimes).into(),
        reuse: reuse(st, now_ns),
        close_wait: st.close_wait.status(now_ns, agg.close_wait_config()).into(),
        idle_close_seconds: (&st.idle_closes).into(),
        tls: st.tls.as_deref().map(Tls::from),
        inherited_from: st.inherited.as_ref().map(InheritedFrom::from),
    }
}

fn inbound(agg: &Aggregator, p: &Process, local: Endpoint, st: &PeerStats, now_ns: u64) -> Inbound {
    Inbound {
        local: local.to_string(),
        sockets: Sockets(agg.peer_sockets(p, Direction::Inbound, local, st)),
        connections_accepted: st.connections,
        closed_by_local: st.closed_by_local,
        closed_by_peer: st.closed_by_peer,
        resets_sent: st.resets_sent,
        resets_received: st.resets_received,
        socket_errors: errors(st),
        connection_lifetime_seconds: (&st.lifetimes).into(),
        reuse: reuse(st, now_ns),
        close_wait: st.close_wait.status(now_ns, agg.close_wait_config()).into(),
        tls: st.tls.as_deref().map(Tls::from),
        inherited_from: st.inherited.as_ref().map(InheritedFrom::from),
    }
}

/// The document of one process, with rates as of `now_ns` (CLOCK_MONOTONIC).
pub fn process_detail(agg: &Aggregator, p: &Process, now_ns: u64) -> ProcessDetail {
    let outbound: Vec<Outbound> =
        sorted(&p.outbound).into_iter().map(|(peer, st)| outbound(agg, p, *peer, st, now_ns)).collect();
    let inbound: Vec<Inbound> =
        sorted(&p.inbound).into_iter().map(|(local, st)| inbound(agg, p, *local, st, now_ns)).collect();
    let mut total = StateCounts::default();
    for s in outbound.iter().map(|o| &o.sockets).chain(inbound.iter().map(|i| &i.sockets)) {
        total.merge(&s.0);
    }
    let close_wait =
        close_wait_summary(outbound.iter().map(|o| &o.close_wait).chain(inbound.iter().map(|i| &i.close_wait)));
    ProcessDetail {
        pid: p.key.pid,
        comm: p.comm.clone(),
        cmdline: p.cmdline.clone().unwrap_or_default(),
        container_id: p.container.container_id.clone(),
        pod_uid: p.container.pod_uid.clone(),
        exited: p.exited_ns.is_some(),
        sockets: Sockets(total),
        connections_opened: outbound.iter().map(|o| o.connections_opened).sum(),
        connections_accepted: inbound.iter().map(|i| i.connections_accepted).sum(),
        close_wait,
        outbound,
        inbound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cw(count: u64, oldest: f64, growth: f64, verdict: Verdict) -> CloseWait {
        CloseWait { count, oldest_seconds: oldest, growth_per_minute: growth, verdict }
    }

    #[test]
    fn a_process_leaks_if_any_peer_does() {
        let peers =
            [cw(2, 5.0, 0.0, Verdict::PooledIdle), cw(30, 40.0, 12.0, Verdict::Leak), cw(0, 0.0, -1.0, Verdict::None)];
        assert_eq!(close_wait_summary(peers.iter()), cw(32, 40.0, 11.0, Verdict::Leak));
        let healthy = [cw(1, 500.0, 0.0, Verdict::PooledIdle), cw(0, 0.0, 0.0, Verdict::None)];
        assert_eq!(close_wait_summary(healthy.iter()).verdict, Verdict::PooledIdle);
        assert_eq!(close_wait_summary([].iter()).verdict, Verdict::None);
    }
}
