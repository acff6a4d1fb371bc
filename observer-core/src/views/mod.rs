//! The JSON documents of the API, built from the aggregation. Field names here are the API
//! contract (docs/openapi.json describes them; a test checks the two agree).

use std::collections::BTreeMap;

use serde::Serialize;
use serde::ser::SerializeMap as _;

use crate::aggregate::{Aggregator, Finding, Inherited, PeerStats, Process};
use crate::closewait::{Status as CloseWaitStatus, Verdict};
use crate::exphist::ExpHistogram;
use crate::lifetime::Lifetimes;
use crate::model::{Direction, Endpoint, FailureCounts, FailureReason, StateCounts, errno_name};
use crate::timewait::TwOwner;
use crate::tls::{self, TlsStats};

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

/// Handshake counts for one server name.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct TlsCounts {
    pub handshakes: u64,
    pub resumed: u64,
    pub failed: u64,
}

impl From<&tls::Counts> for TlsCounts {
    fn from(c: &tls::Counts) -> Self {
        TlsCounts { handshakes: c.handshakes, resumed: c.resumed, failed: c.failed }
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MsBucket {
    /// Upper bound in milliseconds (inclusive).
    pub le: f64,
    pub count: u64,
}

/// Durations of the handshakes that completed, from the ClientHello to the end of the
/// handshake.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HandshakeMs {
    pub count: u64,
    pub sum: f64,
    pub mean: f64,
    /// Non-empty buckets (non-cumulative); durations above the last bound only count in `count`.
    pub buckets: Vec<MsBucket>,
}

/// TLS handshakes of a peer, recognised on the wire bytes (any TLS library).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Tls {
    pub handshakes: u64,
    pub resumed: u64,
    pub failed: u64,
    /// By SNI server name ("" for handshakes without one).
    pub server_names: BTreeMap<String, TlsCounts>,
    /// By negotiated version ("TLS1.3", "TLS1.2"...).
    pub versions: BTreeMap<String, u64>,
    pub handshake_ms: HandshakeMs,
}

impl From<&TlsStats> for Tls {
    fn from(t: &TlsStats) -> Self {
        let d = &t.durations;
        let sum = d.sum_ns as f64 / 1e6;
        Tls {
            handshakes: t.counts.handshakes,
            resumed: t.counts.resumed,
            failed: t.counts.failed,
            server_names: t.server_names.iter().map(|(n, c)| (n.clone(), c.into())).collect(),
            versions: t.versions.iter().map(|(v, n)| (v.to_string(), *n)).collect(),
            handshake_ms: HandshakeMs {
                count: d.count,
                sum,
                mean: if d.count == 0 { 0.0 } else { sum / d.count as f64 },
                buckets: d
                    .buckets()
                    .filter(|(_, n)| *n > 0)
                    .map(|(le, count)| MsBucket { le: le * 1e3, count })
                    .collect(),
            },
        }
    }
}

/// The exited process an entry took live sockets over from (they are charged to the process
/// that holds them now; what happened before the exit stays with the exited process).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct InheritedFrom {
    pub pid: u32,
    pub comm: String,
    /// Sockets taken over.
    pub sockets: u64,
}

impl From<&Inherited> for InheritedFrom {
    fn from(i: &Inherited) -> Self {
        InheritedFrom { pid: i.from.pid, comm: i.comm.clone(), sockets: i.sockets }
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

/// CLOSE_WAIT of a peer or a process: how many, since when, the trend, and the verdict.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct CloseWait {
    pub count: u64,
    pub oldest_seconds: f64,
    pub growth_per_minute: f64,
    pub verdict: Verdict,
}

impl From<CloseWaitStatus> for CloseWait {
    fn from(s: CloseWaitStatus) -> Self {
        CloseWait {
            count: s.count,
            oldest_seconds: s.oldest_ns as f64 / 1e9,
            growth_per_minute: s.growth_per_minute,
            verdict: s.verdict,
        }
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
    pub close_wait: CloseWait,
    /// TLS handshakes; null if none was seen.
    pub tls: Option<Tls>,
    /// The exited process whose live sockets this entry took over; null if none.
    pub inherited_from: Option<InheritedFrom>,
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
    pub close_wait: CloseWait,
    /// TLS handshakes; null if none was seen.
    pub tls: Option<Tls>,
    /// The exited process whose live sockets this entry took over; null if none.
    pub inherited_from: Option<InheritedFrom>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ProcessDetail {
    pub pid: u32,
    pub comm: String,
    pub cmdline: String,
    /// The container it runs in (from its cgroup), or null.
    pub container_id: Option<String>,
    /// The Kubernetes pod it belongs to (from its cgroup), or null.
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

#[derive(Serialize, Debug, Clone)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    /// The container it runs in (from its cgroup), or null.
    pub container_id: Option<String>,
    /// The Kubernetes pod it belongs to (from its cgroup), or null.
    pub pod_uid: Option<String>,
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
    if let Some(tw) = agg.timewait().counts(&TwOwner { process: p.key, direction, peer }) {
        s.merge(tw);
    }
    s
}

fn sorted(m: &hashbrown::HashMap<Endpoint, PeerStats>) -> Vec<(&Endpoint, &PeerStats)> {
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
            close_wait: st.close_wait.status(now_ns, agg.close_wait_config()).into(),
            tls: st.tls.as_deref().map(Tls::from),
            inherited_from: st.inherited.as_ref().map(InheritedFrom::from),
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
            close_wait: st.close_wait.status(now_ns, agg.close_wait_config()).into(),
            tls: st.tls.as_deref().map(Tls::from),
            inherited_from: st.inherited.as_ref().map(InheritedFrom::from),
        });
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

/// An active finding, as `GET /api/v1/alerts` lists it.
#[derive(Serialize, Debug, Clone)]
pub struct Alert {
    pub kind: &'static str,
    pub pid: u32,
    pub comm: String,
    pub direction: &'static str,
    /// The remote endpoint (outbound) or the listening endpoint (inbound).
    pub peer: String,
    pub count: u64,
    pub oldest_seconds: f64,
    pub growth_per_minute: f64,
    /// When the finding started, RFC 3339 (UTC).
    pub since: String,
}

/// The active alerts; `now_ns` (CLOCK_MONOTONIC) and `now` (wall clock) are the same instant.
pub fn alerts(findings: &[Finding], now_ns: u64, now: std::time::SystemTime) -> Vec<Alert> {
    findings
        .iter()
        .map(|f| {
            let since = now - std::time::Duration::from_nanos(now_ns.saturating_sub(f.since_ns));
            Alert {
                kind: "close_wait_leak",
                pid: f.process.pid,
                comm: f.comm.clone(),
                direction: f.direction.name(),
                peer: f.peer.to_string(),
                count: f.status.count,
                oldest_seconds: f.status.oldest_ns as f64 / 1e9,
                growth_per_minute: f.status.growth_per_minute,
                since: humantime::format_rfc3339_seconds(since).to_string(),
            }
        })
        .collect()
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
        container_id: p.container.container_id.clone(),
        pod_uid: p.container.pod_uid.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ProcessKey};

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

    #[test]
    fn alerts_carry_wall_clock_start_times() {
        let f = Finding {
            process: ProcessKey { pid: 42, start_ns: 0 },
            comm: "python3".into(),
            direction: Direction::Outbound,
            peer: Endpoint("10.0.0.1:80".parse().unwrap()),
            status: CloseWaitStatus {
                count: 30,
                oldest_ns: 35_000_000_000,
                growth_per_minute: 0.0,
                verdict: Verdict::Leak,
            },
            since_ns: 100_000_000_000,
        };
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let a = alerts(&[f], 130_000_000_000, now);
        assert_eq!(a[0].since, "2026-11-18T11:06:10Z", "30 s before now (1795000000 s)");
        assert_eq!(a[0].kind, "close_wait_leak");
        assert_eq!(a[0].oldest_seconds, 35.0);
    }
}
