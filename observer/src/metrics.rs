//! Prometheus exposition of the aggregation, built fresh at each scrape (so that series of
//! pruned processes disappear with them).
//!
//! Per peer, labels are `pid`, `comm`, `direction` (`outbound`/`inbound`) and `peer`: the remote
//! endpoint for outbound sockets, the local listening endpoint for inbound ones.

use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder as _, TextEncoder};

use crate::aggregate::{Aggregator, PeerStats, Process};
use crate::model::{Direction, Endpoint, FAILURE_REASONS, errno_name};
use crate::probes::{Features, KernelCounters};
use crate::timewait::TwOwner;
use crate::views::process_totals;

/// What the kernel side reports about itself, refreshed in the background.
#[derive(Clone, Debug, Default)]
pub struct KernelStatus {
    pub counters: KernelCounters,
    /// Entries in the socket-owner map at the last count.
    pub socket_map_entries: u64,
    /// Owner records the LRU map dropped to make room (see [`eviction_lower_bound`]).
    pub socket_map_evictions: u64,
    pub features: Features,
}

/// Evictions from an LRU map that counts its own inserts and deletes: `inserted_before` read
/// before walking the map, `entries` found by the walk, `deleted_after` read after it.
///
/// Every record inserted before the walk is either still there, deleted, or evicted; records
/// inserted during the walk can only make `entries` larger. So `inserted_before - deleted_after
/// - entries` never exceeds the true number of evictions, and is exact when the map is quiet.
pub fn eviction_lower_bound(inserted_before: u64, entries: u64, deleted_after: u64) -> u64 {
    inserted_before.saturating_sub(deleted_after).saturating_sub(entries)
}

struct Family {
    mf: MetricFamily,
}

impl Family {
    fn new(name: &str, help: &str, ty: MetricType) -> Family {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_string());
        mf.set_help(help.to_string());
        mf.set_field_type(ty);
        Family { mf }
    }

    fn labels(labels: &[(&str, &str)]) -> Vec<LabelPair> {
        labels
            .iter()
            .map(|(k, v)| {
                let mut l = LabelPair::default();
                l.set_name(k.to_string());
                l.set_value(v.to_string());
                l
            })
            .collect()
    }

    fn gauge(&mut self, labels: &[(&str, &str)], v: f64) {
        let mut g = Gauge::default();
        g.set_value(v);
        let mut m = Metric::from_label(Self::labels(labels));
        m.set_gauge(g);
        self.mf.mut_metric().push(m);
    }

    fn counter(&mut self, labels: &[(&str, &str)], v: f64) {
        let mut c = Counter::default();
        c.set_value(v);
        let mut m = Metric::from_label(Self::labels(labels));
        m.set_counter(c);
        self.mf.mut_metric().push(m);
    }

    fn histogram(&mut self, labels: &[(&str, &str)], h: Histogram) {
        let mut m = Metric::from_label(Self::labels(labels));
        m.set_histogram(h);
        self.mf.mut_metric().push(m);
    }
}

struct Families {
    sockets: Family,
    process_sockets: Family,
    opened: Family,
    accepted: Family,
    closed: Family,
    failures: Family,
    resets_sent: Family,
    resets_received: Family,
    socket_errors: Family,
    lifetime: Family,
}

fn lifetime_histogram(st: &PeerStats) -> Histogram {
    let mut h = Histogram::default();
    h.set_sample_count(st.lifetimes.count);
    h.set_sample_sum(st.lifetimes.sum_ns as f64 / 1e9);
    h.set_bucket(
        st.lifetimes
            .cumulative()
            .map(|(le, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(le);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    h
}

fn peer_metrics(
    f: &mut Families,
    agg: &Aggregator,
    p: &Process,
    direction: Direction,
    peer: &Endpoint,
    st: &PeerStats,
) {
    let pid = p.key.pid.to_string();
    let dir = direction.name();
    let peer_s = peer.to_string();
    let base = [("pid", pid.as_str()), ("comm", p.comm.as_str()), ("direction", dir), ("peer", peer_s.as_str())];
    let mut sockets = st.sockets;
    if let Some(tw) = agg.timewait().counts().get(&TwOwner { process: p.key, direction, peer: *peer }) {
        sockets.merge(tw);
    }
    for (state, n) in sockets.iter() {
        let mut l = base.to_vec();
        l.push(("state", state.name()));
        f.sockets.gauge(&l, n as f64);
    }
    match direction {
        Direction::Outbound => {
            f.opened.counter(&base, st.connections as f64);
            for r in FAILURE_REASONS {
                let mut l = base.to_vec();
                l.push(("reason", r.name()));
                f.failures.counter(&l, st.connect_failures.get(r) as f64);
            }
        }
        Direction::Inbound => f.accepted.counter(&base, st.connections as f64),
    }
    for (by, n) in [("local", st.closed_by_local), ("peer", st.closed_by_peer)] {
        let mut l = base.to_vec();
        l.push(("by", by));
        f.closed.counter(&l, n as f64);
    }
    f.resets_sent.counter(&base, st.resets_sent as f64);
    f.resets_received.counter(&base, st.resets_received as f64);
    for (errno, n) in &st.socket_errors {
        let name = errno_name(*errno);
        let mut l = base.to_vec();
        l.push(("errno", name.as_str()));
        f.socket_errors.counter(&l, *n as f64);
    }
    f.lifetime.histogram(&base, lifetime_histogram(st));
}

/// Every metric family, in exposition order.
pub fn families(agg: &Aggregator, kernel: &KernelStatus) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let mut f = Families {
        sockets: Family::new(
            "observer_sockets",
            "Live TCP sockets of a process by peer and state (TIME_WAIT reconciled with the kernel's table).",
            GAUGE,
        ),
        process_sockets: Family::new(
            "observer_process_sockets",
            "Live TCP sockets of a process by state, over all peers.",
            GAUGE,
        ),
        opened: Family::new("observer_connections_opened_total", "Outbound connections established.", COUNTER),
        accepted: Family::new(
            "observer_connections_accepted_total",
            "Inbound connections accepted, by listening endpoint.",
            COUNTER,
        ),
        closed: Family::new(
            "observer_connections_closed_total",
            "Connections closed, by the side that closed first (local or peer).",
            COUNTER,
        ),
        failures: Family::new(
            "observer_connect_failures_total",
            "Outbound connects that failed, by reason (refused, timeout, unreachable, reset, other).",
            COUNTER,
        ),
        resets_sent: Family::new("observer_resets_sent_total", "TCP resets sent.", COUNTER),
        resets_received: Family::new("observer_resets_received_total", "TCP resets received.", COUNTER),
        socket_errors: Family::new(
            "observer_socket_errors_total",
            "Errors the kernel reported on sockets, by errno.",
            COUNTER,
        ),
        lifetime: Family::new("observer_connection_lifetime_seconds", "Time from established to closed.", HISTOGRAM),
    };
    let mut procs: Vec<&Process> = agg.processes().collect();
    procs.sort_by_key(|p| p.key.pid);
    for p in procs {
        let mut peers: Vec<_> = p.outbound.iter().map(|(e, s)| (Direction::Outbound, e, s)).collect();
        peers.extend(p.inbound.iter().map(|(e, s)| (Direction::Inbound, e, s)));
        peers.sort_by_key(|(d, e, _)| (*d, **e));
        for (d, e, s) in peers {
            peer_metrics(&mut f, agg, p, d, e, s);
        }
        let (total, _, _) = process_totals(agg, p);
        let pid = p.key.pid.to_string();
        for (state, n) in total.iter() {
            f.process_sockets.gauge(&[("pid", &pid), ("comm", &p.comm), ("state", state.name())], n as f64);
        }
    }

    let mut out: Vec<MetricFamily> = [
        f.sockets,
        f.process_sockets,
        f.opened,
        f.accepted,
        f.closed,
        f.failures,
        f.resets_sent,
        f.resets_received,
        f.socket_errors,
        f.lifetime,
    ]
    .into_iter()
    .map(|f| f.mf)
    .collect();

    let mut events = Family::new("observer_events_total", "Kernel events applied, by kind.", COUNTER);
    for (kind, n) in &agg.stats.events {
        events.counter(&[("kind", kind)], *n as f64);
    }
    let single = |name: &str, help: &str, ty: MetricType, v: u64| {
        let mut fam = Family::new(name, help, ty);
        match ty {
            COUNTER => fam.counter(&[], v as f64),
            _ => fam.gauge(&[], v as f64),
        }
        fam.mf
    };
    out.push(events.mf);
    let c = &kernel.counters;
    out.push(single(
        "observer_events_lost_total",
        "Events the kernel could not queue because the ring buffer was full.",
        COUNTER,
        c.events_lost,
    ));
    let mut evictions =
        Family::new("observer_map_evictions_total", "Records the kernel's LRU maps dropped to make room.", COUNTER);
    evictions.counter(&[("map", "sockets")], kernel.socket_map_evictions as f64);
    out.push(evictions.mf);
    let mut failures =
        Family::new("observer_map_insert_failures_total", "Records the kernel could not insert into a map.", COUNTER);
    failures.counter(&[("map", "sockets")], c.socket_insert_failed as f64);
    failures.counter(&[("map", "listeners")], c.listener_insert_failed as f64);
    failures.counter(&[("map", "connects")], c.connect_insert_failed as f64);
    out.push(failures.mf);
    out.push(single(
        "observer_unattributed_events_total",
        "Socket events whose owner was unknown (sockets older than the daemon, or evicted).",
        COUNTER,
        agg.stats.unattributed_events,
    ));
    out.push(single(
        "observer_decode_errors_total",
        "Ring-buffer records that could not be decoded.",
        COUNTER,
        agg.stats.decode_errors,
    ));
    out.push(single(
        "observer_time_wait_unattributed",
        "Kernel TIME_WAIT sockets not charged to any process.",
        GAUGE,
        agg.timewait().unattributed(),
    ));
    out.push(single("observer_tracked_processes", "Processes in the table.", GAUGE, agg.processes().count() as u64));
    out.push(single(
        "observer_tracked_sockets",
        "Live sockets tracked (TIME_WAIT not included).",
        GAUGE,
        agg.tracked_sockets() as u64,
    ));
    out.push(single(
        "observer_tracked_time_wait",
        "Timewait entries charged to processes.",
        GAUGE,
        agg.timewait().len() as u64,
    ));
    out.push(single(
        "observer_socket_map_entries",
        "Entries in the kernel's socket-owner map.",
        GAUGE,
        kernel.socket_map_entries,
    ));
    let mut feat = Family::new(
        "observer_feature_enabled",
        "Whether an optional kernel feature is working (1) or degraded (0).",
        GAUGE,
    );
    let fs = &kernel.features;
    for (name, on) in [
        ("kernel_offsets", fs.kernel_offsets),
        ("accept_attribution", fs.accept_attribution),
        ("early_connect_errors", fs.early_connect_errors),
        ("error_reports", fs.error_reports),
        ("resets", fs.resets),
        ("socket_cleanup", fs.socket_cleanup),
        ("process_exits", fs.process_exits),
    ] {
        feat.gauge(&[("feature", name)], if on { 1.0 } else { 0.0 });
    }
    out.push(feat.mf);
    let mut build = Family::new("observer_build_info", "Build information.", GAUGE);
    build.gauge(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    out.push(build.mf);
    out.retain(|f| !f.get_metric().is_empty());
    out
}

/// The Prometheus text exposition.
pub fn render(agg: &Aggregator, kernel: &KernelStatus) -> String {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&families(agg, kernel), &mut buf).expect("text encoding to memory");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_bound_is_exact_when_quiet_and_never_over_counts() {
        // 100 inserted, 60 deleted, 30 present: 10 evicted.
        assert_eq!(eviction_lower_bound(100, 30, 60), 10);
        // Inserts during the walk show up as entries: the bound goes down, never up.
        assert_eq!(eviction_lower_bound(100, 35, 60), 5);
        // Deletes during the walk (counted after) lower it too.
        assert_eq!(eviction_lower_bound(100, 30, 65), 5);
        assert_eq!(eviction_lower_bound(10, 30, 60), 0);
    }
}
