//! Every metric family observer exposes, as data: name, type, help, labels, and where its
//! values come from. `encode` walks [`FAMILIES`] in order; the exposition lists the families in
//! this order.
//!
//! A family's `labels` are the label names of each series, in order: the labels of its rows
//! (pid, comm, container_id, pod_uid, then direction and peer for per-peer families), then,
//! for the `ByLabel` values, the label that tells the family's series of a row apart.

use prometheus_client::metrics::MetricType::{self, Counter, Gauge, Histogram as HistogramType};

use crate::closewait::Verdict;
use crate::event::EventKind;
use crate::model::{FAILURE_REASONS, StateCounts, errno_name};

use super::encode::Histogram;
use super::rows::{Observer, PeerRow, ProcessRow};

pub(super) struct Family {
    pub name: &'static str,
    pub kind: MetricType,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    pub series: Series,
}

/// The rows a family has series for, and how to read a row's figures.
pub(super) enum Series {
    /// Per peer row: all of them, or only the outbound or inbound ones.
    Peers(Rows, PeerValue),
    /// Per process: one series per value of the last label.
    Processes(fn(&ProcessRow) -> ByLabel),
    /// Observer itself.
    Observer(OwnValue),
}

#[derive(Clone, Copy)]
pub(super) enum Rows {
    All,
    Outbound,
    Inbound,
}

/// (value of the last label, figure) for each series of a row.
pub(super) type ByLabel = Vec<(String, u64)>;

pub(super) enum PeerValue {
    /// A count: a counter, or a gauge printed as an integer.
    Int(fn(&PeerRow<'_>) -> u64),
    /// A gauge; a row without a value has no series.
    Float(fn(&PeerRow<'_>) -> Option<f64>),
    ByLabel(fn(&PeerRow<'_>) -> ByLabel),
    /// A row without a histogram has no series.
    Histogram(fn(&PeerRow<'_>) -> Option<Histogram>),
    /// Gauges, one per value of the last label.
    FloatByLabel(fn(&PeerRow<'_>) -> Vec<(String, f64)>),
}

pub(super) enum OwnValue {
    /// A single series without labels.
    Single(fn(&Observer<'_>) -> u64),
    ByLabel(fn(&Observer<'_>) -> ByLabel),
}

/// The labels of a per-peer family, then `extra`.
macro_rules! peer_labels {
    ($($extra:literal)?) => {
        &["pid", "comm", "container_id", "pod_uid", "direction", "peer", $($extra)?]
    };
}

use OwnValue::Single;
use PeerValue::{Float, Int};
use Rows::{All, Inbound, Outbound};
use Series::{Observer as Own, Peers, Processes};

pub(super) static FAMILIES: &[Family] = &[
    Family {
        name: "observer_sockets",
        kind: Gauge,
        help: "Live TCP sockets of a process by peer and state (TIME_WAIT reconciled with the kernel's table)",
        labels: peer_labels!("state"),
        series: Peers(All, PeerValue::ByLabel(|r| by_state(&r.sockets()))),
    },
    Family {
        name: "observer_process_sockets",
        kind: Gauge,
        help: "Live TCP sockets of a process by state, over all peers",
        labels: &["pid", "comm", "container_id", "pod_uid", "state"],
        series: Processes(|p| by_state(&p.sockets)),
    },
    Family {
        name: "observer_connections_opened",
        kind: Counter,
        help: "Outbound connections established",
        labels: peer_labels!(),
        series: Peers(Outbound, Int(|r| r.sum(|s| s.connections))),
    },
    Family {
        name: "observer_connections_accepted",
        kind: Counter,
        help: "Inbound connections accepted, by listening endpoint",
        labels: peer_labels!(),
        series: Peers(Inbound, Int(|r| r.sum(|s| s.connections))),
    },
    Family {
        name: "observer_connections_closed",
        kind: Counter,
        help: "Connections closed, by the side that closed first (local or peer)",
        labels: peer_labels!("by"),
        series: Peers(
            All,
            PeerValue::ByLabel(|r| {
                vec![("local".into(), r.sum(|s| s.closed_by_local)), ("peer".into(), r.sum(|s| s.closed_by_peer))]
            }),
        ),
    },
    Family {
        name: "observer_connect_failures",
        kind: Counter,
        help: "Outbound connects that failed, by reason (refused, timeout, unreachable, reset, other)",
        labels: peer_labels!("reason"),
        series: Peers(
            Outbound,
            PeerValue::ByLabel(|r| {
                let f = r.connect_failures();
                FAILURE_REASONS.iter().map(|reason| (reason.name().to_string(), f.get(*reason))).collect()
            }),
        ),
    },
    Family {
        name: "observer_resets_sent",
        kind: Counter,
        help: "TCP resets sent",
        labels: peer_labels!(),
        series: Peers(All, Int(|r| r.sum(|s| s.resets_sent))),
    },
    Family {
        name: "observer_resets_received",
        kind: Counter,
        help: "TCP resets received",
        labels: peer_labels!(),
        series: Peers(All, Int(|r| r.sum(|s| s.resets_received))),
    },
    Family {
        name: "observer_socket_errors",
        kind: Counter,
        help: "Errors the kernel reported on sockets, by errno",
        labels: peer_labels!("errno"),
        series: Peers(
            All,
            PeerValue::ByLabel(|r| r.socket_errors().iter().map(|(e, n)| (errno_name(*e), *n)).collect()),
        ),
    },
    Family {
        name: "observer_requests",
        kind: Counter,
        help: "Request/response exchanges: sends after a receive on client sockets, receives after a send on server sockets",
        labels: peer_labels!(),
        series: Peers(All, Int(|r| r.sum(|s| s.requests))),
    },
    Family {
        name: "observer_bytes_sent",
        kind: Counter,
        help: "Bytes the application sent",
        labels: peer_labels!(),
        series: Peers(All, Int(|r| r.sum(|s| s.bytes_sent))),
    },
    Family {
        name: "observer_bytes_received",
        kind: Counter,
        help: "Bytes the application received",
        labels: peer_labels!(),
        series: Peers(All, Int(|r| r.sum(|s| s.bytes_received))),
    },
    Family {
        name: "observer_reuse_ratio",
        kind: Gauge,
        help: "Requests per connection opened or accepted (1 means no reuse); absent before the first connection",
        labels: peer_labels!(),
        series: Peers(
            All,
            Float(|r| {
                let connections = r.sum(|s| s.connections);
                (connections > 0).then(|| r.sum(|s| s.requests) as f64 / connections as f64)
            }),
        ),
    },
    Family {
        name: "observer_new_connections_per_second",
        kind: Gauge,
        help: "Connections opened or accepted per second over the last 60 s",
        labels: peer_labels!(),
        series: Peers(All, Float(|r| Some(r.new_connections_per_second()))),
    },
    Family {
        name: "observer_requests_per_connection",
        kind: HistogramType,
        help: "Requests carried by each closed connection (native histogram, schema 0, with classic buckets)",
        labels: peer_labels!(),
        series: Peers(All, PeerValue::Histogram(|r| Some(Histogram::native(&r.requests_per_connection())))),
    },
    Family {
        name: "observer_connection_lifetime_seconds",
        kind: HistogramType,
        help: "Time from established to closed",
        labels: peer_labels!(),
        series: Peers(All, PeerValue::Histogram(|r| Some(Histogram::durations(&r.lifetimes())))),
    },
    Family {
        name: "observer_tls_handshakes",
        kind: Counter,
        help: "TLS handshakes (ClientHello seen), by peer and SNI server name (\"\" when none)",
        labels: peer_labels!("server_name"),
        series: Peers(All, PeerValue::ByLabel(|r| by_server_name(r, |c| c.handshakes))),
    },
    Family {
        name: "observer_tls_handshakes_resumed",
        kind: Counter,
        help: "TLS handshakes that resumed a session",
        labels: peer_labels!("server_name"),
        series: Peers(All, PeerValue::ByLabel(|r| by_server_name(r, |c| c.resumed))),
    },
    Family {
        name: "observer_tls_handshakes_failed",
        kind: Counter,
        help: "TLS handshakes that failed: an alert, or the connection closed before the handshake completed",
        labels: peer_labels!("server_name"),
        series: Peers(All, PeerValue::ByLabel(|r| by_server_name(r, |c| c.failed))),
    },
    Family {
        name: "observer_tls_handshake_seconds",
        kind: HistogramType,
        help: "Time from the ClientHello to the end of the TLS handshake, for handshakes that completed",
        labels: peer_labels!(),
        series: Peers(
            All,
            PeerValue::Histogram(|r| {
                let tls = r.tls();
                (tls.counts.handshakes > 0).then(|| Histogram::durations(&tls.durations))
            }),
        ),
    },
    Family {
        name: "observer_close_wait_oldest_seconds",
        kind: Gauge,
        help: "Time the oldest socket has been in CLOSE_WAIT (0 when none is)",
        labels: peer_labels!(),
        series: Peers(All, Float(|r| Some(r.close_wait().oldest_ns as f64 / 1e9))),
    },
    Family {
        name: "observer_close_wait_growth_per_minute",
        kind: Gauge,
        help: "Change of the CLOSE_WAIT count per minute, over the last minute",
        labels: peer_labels!(),
        series: Peers(All, Float(|r| Some(r.close_wait().growth_per_minute))),
    },
    Family {
        name: "observer_close_wait_leak",
        kind: Gauge,
        help: "1 while the CLOSE_WAIT sockets of this process and peer are judged a leak (count above the floor, rising or old), else 0",
        labels: peer_labels!(),
        series: Peers(All, Int(|r| u64::from(r.close_wait().verdict == Verdict::Leak))),
    },
    // About observer itself.
    Family {
        name: "observer_idle_close_seconds",
        kind: Gauge,
        help: "How long connections had been idle when the peer closed them (the peer's idle timeout): quantile 0 is the shortest, 0.5 the median of the last 256, 1 the longest; absent before the first",
        labels: peer_labels!("quantile"),
        series: Peers(Outbound, PeerValue::FloatByLabel(idle_close_quantiles)),
    },
    Family {
        name: "observer_idle_closes",
        kind: Counter,
        help: "Connections the peer closed after they had been idle (samples of observer_idle_close_seconds)",
        labels: peer_labels!(),
        series: Peers(Outbound, Int(|r| r.sum(|s| s.idle_closes.samples))),
    },
    Family {
        name: "observer_findings",
        kind: Gauge,
        help: "1 while a connection-pool finding of this kind is active for the peer (see GET /api/v1/processes/{pid}/diagnosis); absent otherwise",
        labels: peer_labels!("kind"),
        series: Peers(
            All,
            PeerValue::ByLabel(|r| r.findings().into_iter().map(|k| (k.name().to_string(), 1)).collect()),
        ),
    },
    Family {
        name: "observer_events",
        kind: Counter,
        help: "Kernel events applied, by kind",
        labels: &["kind"],
        series: Own(OwnValue::ByLabel(|o| {
            let counts = EventKind::NAMES.iter().zip(&o.agg.stats.events);
            counts.filter(|(_, n)| **n > 0).map(|(kind, n)| (kind.to_string(), *n)).collect()
        })),
    },
    Family {
        name: "observer_events_lost",
        kind: Counter,
        help: "Events the kernel could not queue because the ring buffer was full",
        labels: &[],
        series: Own(Single(|o| o.kernel.counters.events_lost)),
    },
    Family {
        name: "observer_map_evictions",
        kind: Counter,
        help: "Records the kernel's LRU maps dropped to make room",
        labels: &["map"],
        series: Own(OwnValue::ByLabel(|o| vec![("listeners".into(), o.kernel.listener_map_evictions)])),
    },
    Family {
        name: "observer_map_insert_failures",
        kind: Counter,
        help: "Records the kernel could not insert into a map",
        labels: &["map"],
        series: Own(OwnValue::ByLabel(|o| vec![("listeners".into(), o.kernel.counters.listener_insert_failed)])),
    },
    Family {
        name: "observer_socket_storage_failures",
        kind: Counter,
        help: "Sockets not tracked because the kernel's socket table was full (--max-sockets)",
        labels: &[],
        series: Own(Single(|o| o.kernel.counters.storage_failed)),
    },
    Family {
        name: "observer_socket_table_overflows",
        kind: Counter,
        help: "Sockets kept in the kernel socket table's overflow map because their bucket was full (a table \
               near its size, --max-sockets)",
        labels: &[],
        series: Own(Single(|o| o.kernel.counters.sock_overflow)),
    },
    Family {
        name: "observer_nested_state_changes",
        kind: Counter,
        help: "TCP state changes the kernel skipped observer's state program for (they interrupted it on the \
               same CPU), handled by another of its programs",
        labels: &[],
        series: Own(Single(|o| o.kernel.counters.state_nested)),
    },
    Family {
        name: "observer_unattributed_events",
        kind: Counter,
        help: "Socket events whose owner was unknown (sockets older than the daemon, or evicted)",
        labels: &[],
        series: Own(Single(|o| o.agg.stats.unattributed_events)),
    },
    Family {
        name: "observer_closes_not_seen",
        kind: Counter,
        help: "Sockets whose end the kernel never reported, found closed by the daemon (a new socket took their \
               address, or the audit of the socket table found them gone); their connections are reported",
        labels: &[],
        series: Own(Single(|o| o.agg.stats.closes_not_seen)),
    },
    Family {
        name: "observer_closes_without_final_counters",
        kind: Counter,
        help: "Of observer_closes_not_seen_total, the connections reported with the counters of the last read \
               of the socket table instead of their final ones",
        labels: &[],
        series: Own(Single(|o| o.agg.stats.closes_without_final_counters)),
    },
    Family {
        name: "observer_stale_slots_freed",
        kind: Counter,
        help: "Slots of the kernel's socket table freed by the daemon's audit: their socket was gone",
        labels: &[],
        series: Own(Single(|o| o.agg.stats.stale_slots_freed)),
    },
    Family {
        name: "observer_decode_errors",
        kind: Counter,
        help: "Ring-buffer records that could not be decoded",
        labels: &[],
        series: Own(Single(|o| o.agg.stats.decode_errors)),
    },
    Family {
        name: "observer_tls_connections_dropped",
        kind: Counter,
        help: "Connections whose TLS handshake was not followed because too many were under way at once",
        labels: &[],
        series: Own(Single(|o| o.agg.stats.tls_dropped)),
    },
    Family {
        name: "observer_time_wait_unattributed",
        kind: Gauge,
        help: "Kernel TIME_WAIT sockets not charged to any process",
        labels: &[],
        series: Own(Single(|o| o.agg.timewait().unattributed())),
    },
    Family {
        name: "observer_tracked_processes",
        kind: Gauge,
        help: "Processes in the table",
        labels: &[],
        series: Own(Single(|o| o.agg.processes().count() as u64)),
    },
    Family {
        name: "observer_tracked_sockets",
        kind: Gauge,
        help: "Live sockets tracked (TIME_WAIT not included)",
        labels: &[],
        series: Own(Single(|o| o.agg.tracked_sockets() as u64)),
    },
    Family {
        name: "observer_tracked_time_wait",
        kind: Gauge,
        help: "Timewait entries charged to processes",
        labels: &[],
        series: Own(Single(|o| o.agg.timewait().len() as u64)),
    },
    Family {
        name: "observer_listener_map_entries",
        kind: Gauge,
        help: "Entries in the kernel's listener map",
        labels: &[],
        series: Own(Single(|o| o.kernel.listener_map_entries)),
    },
    Family {
        name: "observer_feature_enabled",
        kind: Gauge,
        help: "Whether an optional kernel feature is working (1) or degraded (0)",
        labels: &["feature"],
        series: Own(OwnValue::ByLabel(|o| {
            o.kernel.features.list().into_iter().map(|(name, on)| (name.to_string(), u64::from(on))).collect()
        })),
    },
    Family {
        name: "observer_build_info",
        kind: Gauge,
        help: "Build information",
        labels: &["version"],
        series: Own(OwnValue::ByLabel(|_| vec![(env!("CARGO_PKG_VERSION").to_string(), 1)])),
    },
];

fn by_state(sockets: &StateCounts) -> ByLabel {
    sockets.iter().map(|(state, n)| (state.name().to_string(), n)).collect()
}

/// One TLS count of a row, per SNI server name.
fn by_server_name(r: &PeerRow<'_>, get: fn(&crate::tls::Counts) -> u64) -> ByLabel {
    r.tls().server_names.iter().map(|(name, c)| (name.clone(), get(c))).collect()
}

/// Shortest, median and longest idle time at the peer's close, in seconds.
fn idle_close_quantiles(r: &PeerRow<'_>) -> Vec<(String, f64)> {
    let c = r.idle_closes();
    let Some(p50) = c.p50_ns() else { return Vec::new() };
    let s = |ns: u64| ns as f64 / 1e9;
    vec![("0".into(), s(c.min_ns)), ("0.5".into(), s(p50)), ("1".into(), s(c.max_ns))]
}
