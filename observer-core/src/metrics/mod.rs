//! Prometheus exposition of the aggregation, built fresh at each scrape (so that series of
//! pruned processes disappear with them), with prometheus-client: OpenMetrics text by default,
//! the Prometheus protobuf format (with native histograms) when the scraper asks for it.
//!
//! Per peer, labels are `pid`, `comm`, `container_id`, `pod_uid`, `direction`
//! (`outbound`/`inbound`) and `peer`: the remote endpoint for outbound sockets, the local
//! listening endpoint for inbound ones.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NativeHistogram, NativeHistogramBuckets};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::aggregate::{Aggregator, PeerStats, Process};
use crate::closewait::{CloseWaitConfig, Status as CloseWaitStatus, Verdict};
use crate::event::EventKind;
use crate::exphist::ExpHistogram;
use crate::kernel_status::KernelStatus;
use crate::lifetime::{Bounds, Durations, Lifetimes};
use crate::model::{Direction, Endpoint, FAILURE_REASONS, FailureCounts, ProcessKey, StateCounts, errno_name};
use crate::timewait::TwOwner;
use crate::tls::TlsStats;
use crate::views::process_totals;

pub const TEXT_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Whether an `Accept` header asks for the protobuf format (Prometheus does, with native
/// histograms enabled).
pub fn wants_protobuf(accept: &str) -> bool {
    accept.contains("application/vnd.google.protobuf") && accept.contains("io.prometheus.client.MetricFamily")
}

/// The registry serving observer's metrics; each process gets per-peer series for at most
/// `max_peers` peers, the others are folded into `peer="other"`. `clock` gives the time of a
/// scrape (CLOCK_MONOTONIC in ns, the kernel records' clock).
pub fn registry(
    agg: Arc<Mutex<Aggregator>>,
    kernel: Arc<Mutex<KernelStatus>>,
    max_peers: usize,
    clock: fn() -> u64,
) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(ObserverCollector { agg, kernel, admitted: Mutex::default(), max_peers, clock }));
    r
}

pub fn render_text(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("text encoding to memory");
    out
}

pub fn render_protobuf(registry: &Registry) -> Vec<u8> {
    prometheus_client::encoding::prometheus_protobuf::encode_to_vec(registry).expect("protobuf encoding to memory")
}

struct ObserverCollector {
    agg: Arc<Mutex<Aggregator>>,
    kernel: Arc<Mutex<KernelStatus>>,
    /// Peers with series of their own, per process (sticky: a peer keeps its series for the
    /// life of the process, so that every counter, the folded ones included, only grows).
    admitted: Mutex<HashMap<ProcessKey, HashSet<(Direction, Endpoint)>>>,
    max_peers: usize,
    clock: fn() -> u64,
}

impl std::fmt::Debug for ObserverCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObserverCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

/// The figures behind one set of per-peer series: one peer, or the peers of a process folded
/// into `peer="other"`.
#[derive(Clone)]
struct Row {
    labels: Labels,
    direction: Direction,
    sockets: StateCounts,
    connections: u64,
    closed_by_local: u64,
    closed_by_peer: u64,
    connect_failures: FailureCounts,
    resets_sent: u64,
    resets_received: u64,
    socket_errors: BTreeMap<i32, u64>,
    lifetimes: Lifetimes,
    requests: u64,
    bytes_sent: u64,
    bytes_received: u64,
    new_connections_per_second: f64,
    requests_per_connection: ExpHistogram,
    close_wait: CloseWaitStatus,
    tls: TlsStats,
}

impl Row {
    fn new(
        labels: Labels,
        direction: Direction,
        st: &PeerStats,
        sockets: StateCounts,
        now: u64,
        cw: &CloseWaitConfig,
    ) -> Row {
        Row {
            labels,
            direction,
            sockets,
            connections: st.connections,
            closed_by_local: st.closed_by_local,
            closed_by_peer: st.closed_by_peer,
            connect_failures: st.connect_failures,
            resets_sent: st.resets_sent,
            resets_received: st.resets_received,
            socket_errors: st.socket_errors.clone(),
            lifetimes: st.lifetimes.clone(),
            requests: st.requests,
            bytes_sent: st.bytes_sent,
            bytes_received: st.bytes_received,
            new_connections_per_second: st.new_connections_per_second(now),
            requests_per_connection: st.requests_per_connection.clone(),
            close_wait: st.close_wait.status(now, cw),
            tls: st.tls.as_deref().cloned().unwrap_or_default(),
        }
    }

    /// Fold another peer's figures into this one.
    fn add(&mut self, o: &Row) {
        self.sockets.merge(&o.sockets);
        self.connections += o.connections;
        self.closed_by_local += o.closed_by_local;
        self.closed_by_peer += o.closed_by_peer;
        self.connect_failures.merge(&o.connect_failures);
        self.resets_sent += o.resets_sent;
        self.resets_received += o.resets_received;
        for (e, n) in &o.socket_errors {
            *self.socket_errors.entry(*e).or_default() += n;
        }
        self.lifetimes.merge(&o.lifetimes);
        self.requests += o.requests;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.new_connections_per_second += o.new_connections_per_second;
        self.requests_per_connection.merge(&o.requests_per_connection);
        self.tls.merge(&o.tls);
        let (a, b) = (self.close_wait, o.close_wait);
        self.close_wait = CloseWaitStatus {
            count: a.count + b.count,
            oldest_ns: a.oldest_ns.max(b.oldest_ns),
            growth_per_minute: a.growth_per_minute + b.growth_per_minute,
            verdict: if a.verdict == Verdict::Leak || b.verdict == Verdict::Leak { Verdict::Leak } else { a.verdict },
        };
    }
}

fn with(labels: &Labels, key: &'static str, value: impl Into<String>) -> Labels {
    let mut l = labels.clone();
    l.push((key, value.into()));
    l
}

/// pid, comm, and the container and pod (empty for a process outside any).
fn process_labels(p: &Process) -> Labels {
    vec![
        ("pid", p.key.pid.to_string()),
        ("comm", p.comm.clone()),
        ("container_id", p.container.container_id.clone().unwrap_or_default()),
        ("pod_uid", p.container.pod_uid.clone().unwrap_or_default()),
    ]
}

fn peer_labels(p: &Process, direction: Direction, peer: &str) -> Labels {
    let mut l = process_labels(p);
    l.push(("direction", direction.name().to_string()));
    l.push(("peer", peer.to_string()));
    l
}

impl ObserverCollector {
    /// One row per admitted peer, plus one `peer="other"` row per process and direction for the
    /// peers beyond the limit.
    fn rows(&self, agg: &Aggregator, now: u64) -> Vec<Row> {
        let mut admitted = self.admitted.lock().expect("admission lock");
        let live: HashSet<ProcessKey> = agg.processes().map(|p| p.key).collect();
        admitted.retain(|k, _| live.contains(k));
        let cw = agg.close_wait_config();
        let mut procs: Vec<&Process> = agg.processes().collect();
        procs.sort_by_key(|p| p.key.pid);
        let mut rows = Vec::new();
        for p in procs {
            let mut peers: Vec<(Direction, &Endpoint, &PeerStats)> =
                p.outbound.iter().map(|(e, s)| (Direction::Outbound, e, s)).collect();
            peers.extend(p.inbound.iter().map(|(e, s)| (Direction::Inbound, e, s)));
            peers.sort_by_key(|(d, e, _)| (*d, **e));
            let set = admitted.entry(p.key).or_default();
            let mut other: [Option<Row>; 2] = [None, None];
            for (direction, peer, stats) in peers {
                let mut sockets = stats.sockets;
                if let Some(tw) = agg.timewait().counts(&TwOwner { process: p.key, direction, peer: *peer }) {
                    sockets.merge(tw);
                }
                let key = (direction, *peer);
                if set.contains(&key) || set.len() < self.max_peers {
                    set.insert(key);
                    rows.push(Row::new(
                        peer_labels(p, direction, &peer.to_string()),
                        direction,
                        stats,
                        sockets,
                        now,
                        cw,
                    ));
                } else {
                    let row = Row::new(peer_labels(p, direction, OTHER_PEER), direction, stats, sockets, now, cw);
                    match &mut other[direction as usize] {
                        Some(o) => o.add(&row),
                        slot => *slot = Some(row),
                    }
                }
            }
            rows.extend(other.into_iter().flatten());
        }
        rows
    }
}

/// The `peer` label of the folded series.
pub const OTHER_PEER: &str = "other";

fn gauge(m: &mut MetricEncoder, labels: &Labels, v: f64) -> Result<(), std::fmt::Error> {
    m.encode_family(labels)?.encode_gauge(&v)
}

/// A gauge that counts things (printed as an integer).
fn gauge_count(m: &mut MetricEncoder, labels: &Labels, v: u64) -> Result<(), std::fmt::Error> {
    if labels.is_empty() {
        return m.encode_gauge(&v);
    }
    m.encode_family(labels)?.encode_gauge(&v)
}

fn counter(m: &mut MetricEncoder, labels: &Labels, v: u64) -> Result<(), std::fmt::Error> {
    if labels.is_empty() {
        return m.encode_counter::<Labels, u64, u64>(&v, None);
    }
    m.encode_family(labels)?.encode_counter::<Labels, u64, u64>(&v, None)
}

/// A duration histogram in seconds, with the `+Inf` bucket for what lies above its bounds.
fn durations<B: Bounds>(m: &mut MetricEncoder, labels: &Labels, d: &Durations<B>) -> Result<(), std::fmt::Error> {
    let mut buckets: Vec<(f64, u64)> = d.buckets().collect();
    let above = d.count - buckets.iter().map(|(_, n)| n).sum::<u64>();
    buckets.push((f64::INFINITY, above));
    m.encode_family(labels)?.encode_histogram::<Labels>(d.sum_ns as f64 / 1e9, d.count, &buckets, None)
}

impl Collector for ObserverCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kernel = self.kernel.lock().expect("kernel status lock").clone();
        let agg = self.agg.lock().expect("aggregator lock");
        let now = (self.clock)();
        let rows = self.rows(&agg, now);
        use MetricType::{Counter, Gauge, Histogram};

        let mut m = enc.encode_descriptor(
            "observer_sockets",
            "Live TCP sockets of a process by peer and state (TIME_WAIT reconciled with the kernel's table)",
            None,
            Gauge,
        )?;
        for r in &rows {
            for (state, n) in r.sockets.iter() {
                gauge_count(&mut m, &with(&r.labels, "state", state.name()), n)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "observer_process_sockets",
            "Live TCP sockets of a process by state, over all peers",
            None,
            Gauge,
        )?;
        let mut procs: Vec<&Process> = agg.processes().collect();
        procs.sort_by_key(|p| p.key.pid);
        for p in &procs {
            let (total, _, _) = process_totals(&agg, p);
            let labels = process_labels(p);
            for (state, n) in total.iter() {
                gauge_count(&mut m, &with(&labels, "state", state.name()), n)?;
            }
        }

        let outbound = || rows.iter().filter(|r| r.direction == Direction::Outbound);
        let inbound = || rows.iter().filter(|r| r.direction == Direction::Inbound);
        let mut m =
            enc.encode_descriptor("observer_connections_opened", "Outbound connections established", None, Counter)?;
        for r in outbound() {
            counter(&mut m, &r.labels, r.connections)?;
        }
        let mut m = enc.encode_descriptor(
            "observer_connections_accepted",
            "Inbound connections accepted, by listening endpoint",
            None,
            Counter,
        )?;
        for r in inbound() {
            counter(&mut m, &r.labels, r.connections)?;
        }
        let mut m = enc.encode_descriptor(
            "observer_connections_closed",
            "Connections closed, by the side that closed first (local or peer)",
            None,
            Counter,
        )?;
        for r in &rows {
            counter(&mut m, &with(&r.labels, "by", "local"), r.closed_by_local)?;
            counter(&mut m, &with(&r.labels, "by", "peer"), r.closed_by_peer)?;
        }
        let mut m = enc.encode_descriptor(
            "observer_connect_failures",
            "Outbound connects that failed, by reason (refused, timeout, unreachable, reset, other)",
            None,
            Counter,
        )?;
        for r in outbound() {
            for reason in FAILURE_REASONS {
                counter(&mut m, &with(&r.labels, "reason", reason.name()), r.connect_failures.get(reason))?;
            }
        }
        let mut m = enc.encode_descriptor("observer_resets_sent", "TCP resets sent", None, Counter)?;
        for r in &rows {
            counter(&mut m, &r.labels, r.resets_sent)?;
        }
        let mut m = enc.encode_descriptor("observer_resets_received", "TCP resets received", None, Counter)?;
        for r in &rows {
            counter(&mut m, &r.labels, r.resets_received)?;
        }
        let mut m = enc.encode_descriptor(
            "observer_socket_errors",
            "Errors the kernel reported on sockets, by errno",
            None,
            Counter,
        )?;
        for r in &rows {
            for (errno, n) in &r.socket_errors {
                counter(&mut m, &with(&r.labels, "errno", errno_name(*errno)), *n)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "observer_requests",
            "Request/response exchanges: sends after a receive on client sockets, receives after a send on server sockets",
            None,
            Counter,
        )?;
        for r in &rows {
            counter(&mut m, &r.labels, r.requests)?;
        }
        let mut m = enc.encode_descriptor("observer_bytes_sent", "Bytes the application sent", None, Counter)?;
        for r in &rows {
            counter(&mut m, &r.labels, r.bytes_sent)?;
        }
        let mut m =
            enc.encode_descriptor("observer_bytes_received", "Bytes the application received", None, Counter)?;
        for r in &rows {
            counter(&mut m, &r.labels, r.bytes_received)?;
        }
        let mut m = enc.encode_descriptor(
            "observer_reuse_ratio",
            "Requests per connection opened or accepted (1 means no reuse); absent before the first connection",
            None,
            Gauge,
        )?;
        for r in rows.iter().filter(|r| r.connections > 0) {
            gauge(&mut m, &r.labels, r.requests as f64 / r.connections as f64)?;
        }
        let mut m = enc.encode_descriptor(
            "observer_new_connections_per_second",
            "Connections opened or accepted per second over the last 60 s",
            None,
            Gauge,
        )?;
        for r in &rows {
            gauge(&mut m, &r.labels, r.new_connections_per_second)?;
        }
        let mut m = enc.encode_descriptor(
            "observer_requests_per_connection",
            "Requests carried by each closed connection (native histogram, schema 0, with classic buckets)",
            None,
            Histogram,
        )?;
        for r in &rows {
            let h = &r.requests_per_connection;
            let mut classic = h.classic();
            let above: u64 = h.count - classic.iter().map(|(_, n)| n).sum::<u64>();
            classic.push((f64::INFINITY, above));
            let (spans, deltas) = h.native_spans();
            let native = NativeHistogram {
                schema: 0,
                zero_threshold: 0.0,
                zero_count: h.zero,
                negative: NativeHistogramBuckets { spans: &[], deltas: &[] },
                positive: NativeHistogramBuckets { spans: &spans, deltas: &deltas },
                created: None,
            };
            m.encode_family(&r.labels)?.encode_histogram_with_native::<Labels>(
                h.sum as f64,
                h.count,
                &classic,
                None,
                native,
            )?;
        }
        let mut m = enc.encode_descriptor(
            "observer_connection_lifetime_seconds",
            "Time from established to closed",
            None,
            Histogram,
        )?;
        for r in &rows {
            durations(&mut m, &r.labels, &r.lifetimes)?;
        }

        type TlsCount = fn(&crate::tls::Counts) -> u64;
        let tls_counters: [(&str, &str, TlsCount); 3] = [
            (
                "observer_tls_handshakes",
                "TLS handshakes (ClientHello seen), by peer and SNI server name (\"\" when none)",
                |c| c.handshakes,
            ),
            ("observer_tls_handshakes_resumed", "TLS handshakes that resumed a session", |c| c.resumed),
            (
                "observer_tls_handshakes_failed",
                "TLS handshakes that failed: an alert, or the connection closed before the handshake completed",
                |c| c.failed,
            ),
        ];
        for (name, help, get) in tls_counters {
            let mut m = enc.encode_descriptor(name, help, None, Counter)?;
            for r in &rows {
                for (sni, c) in &r.tls.server_names {
                    counter(&mut m, &with(&r.labels, "server_name", sni.clone()), get(c))?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "observer_tls_handshake_seconds",
            "Time from the ClientHello to the end of the TLS handshake, for handshakes that completed",
            None,
            Histogram,
        )?;
        for r in rows.iter().filter(|r| r.tls.counts.handshakes > 0) {
            durations(&mut m, &r.labels, &r.tls.durations)?;
        }

        let mut m = enc.encode_descriptor(
            "observer_close_wait_oldest_seconds",
            "Time the oldest socket has been in CLOSE_WAIT (0 when none is)",
            None,
            Gauge,
        )?;
        for r in &rows {
            gauge(&mut m, &r.labels, r.close_wait.oldest_ns as f64 / 1e9)?;
        }
        let mut m = enc.encode_descriptor(
            "observer_close_wait_growth_per_minute",
            "Change of the CLOSE_WAIT count per minute, over the last minute",
            None,
            Gauge,
        )?;
        for r in &rows {
            gauge(&mut m, &r.labels, r.close_wait.growth_per_minute)?;
        }
        let mut m = enc.encode_descriptor(
            "observer_close_wait_leak",
            "1 while the CLOSE_WAIT sockets of this process and peer are judged a leak (count above the floor, rising or old), else 0",
            None,
            Gauge,
        )?;
        for r in &rows {
            gauge_count(&mut m, &r.labels, u64::from(r.close_wait.verdict == Verdict::Leak))?;
        }

        // About observer itself.
        let mut m = enc.encode_descriptor("observer_events", "Kernel events applied, by kind", None, Counter)?;
        for (kind, n) in EventKind::NAMES.iter().zip(&agg.stats.events) {
            if *n > 0 {
                counter(&mut m, &vec![("kind", kind.to_string())], *n)?;
            }
        }
        let c = &kernel.counters;
        let none: Labels = Vec::new();
        let single = |enc: &mut DescriptorEncoder, name: &str, help: &str, ty: MetricType, v: u64| {
            let mut m = enc.encode_descriptor(name, help, None, ty)?;
            match ty {
                Counter => counter(&mut m, &none, v),
                _ => gauge_count(&mut m, &none, v),
            }
        };
        single(
            &mut enc,
            "observer_events_lost",
            "Events the kernel could not queue because the ring buffer was full",
            Counter,
            c.events_lost,
        )?;
        let mut m = enc.encode_descriptor(
            "observer_map_evictions",
            "Records the kernel's LRU maps dropped to make room",
            None,
            Counter,
        )?;
        counter(&mut m, &vec![("map", "listeners".into())], kernel.listener_map_evictions)?;
        let mut m = enc.encode_descriptor(
            "observer_map_insert_failures",
            "Records the kernel could not insert into a map",
            None,
            Counter,
        )?;
        counter(&mut m, &vec![("map", "listeners".to_string())], c.listener_insert_failed)?;
        single(
            &mut enc,
            "observer_socket_storage_failures",
            "Sockets not tracked because the kernel's socket table was full (--max-sockets)",
            Counter,
            c.storage_failed,
        )?;
        single(
            &mut enc,
            "observer_socket_table_overflows",
            "Sockets kept in the kernel socket table's overflow map because their bucket was full (a table \
             near its size, --max-sockets)",
            Counter,
            c.sock_overflow,
        )?;
        single(
            &mut enc,
            "observer_nested_state_changes",
            "TCP state changes the kernel skipped observer's state program for (they interrupted it on the \
             same CPU), handled by another of its programs",
            Counter,
            c.state_nested,
        )?;
        single(
            &mut enc,
            "observer_unattributed_events",
            "Socket events whose owner was unknown (sockets older than the daemon, or evicted)",
            Counter,
            agg.stats.unattributed_events,
        )?;
        single(
            &mut enc,
            "observer_closes_not_seen",
            "Sockets whose end the kernel never reported, found closed by the daemon (a new socket took their \
             address, or the audit of the socket table found them gone); their connections are reported",
            Counter,
            agg.stats.closes_not_seen,
        )?;
        single(
            &mut enc,
            "observer_closes_without_final_counters",
            "Of observer_closes_not_seen_total, the connections reported with the counters of the last read \
             of the socket table instead of their final ones",
            Counter,
            agg.stats.closes_without_final_counters,
        )?;
        single(
            &mut enc,
            "observer_stale_slots_freed",
            "Slots of the kernel's socket table freed by the daemon's audit: their socket was gone",
            Counter,
            agg.stats.stale_slots_freed,
        )?;
        single(
            &mut enc,
            "observer_decode_errors",
            "Ring-buffer records that could not be decoded",
            Counter,
            agg.stats.decode_errors,
        )?;
        single(
            &mut enc,
            "observer_tls_connections_dropped",
            "Connections whose TLS handshake was not followed because too many were under way at once",
            Counter,
            agg.stats.tls_dropped,
        )?;
        single(
            &mut enc,
            "observer_time_wait_unattributed",
            "Kernel TIME_WAIT sockets not charged to any process",
            Gauge,
            agg.timewait().unattributed(),
        )?;
        single(
            &mut enc,
            "observer_tracked_processes",
            "Processes in the table",
            Gauge,
            agg.processes().count() as u64,
        )?;
        single(
            &mut enc,
            "observer_tracked_sockets",
            "Live sockets tracked (TIME_WAIT not included)",
            Gauge,
            agg.tracked_sockets() as u64,
        )?;
        single(
            &mut enc,
            "observer_tracked_time_wait",
            "Timewait entries charged to processes",
            Gauge,
            agg.timewait().len() as u64,
        )?;
        single(
            &mut enc,
            "observer_listener_map_entries",
            "Entries in the kernel's listener map",
            Gauge,
            kernel.listener_map_entries,
        )?;
        let mut m = enc.encode_descriptor(
            "observer_feature_enabled",
            "Whether an optional kernel feature is working (1) or degraded (0)",
            None,
            Gauge,
        )?;
        for (name, on) in kernel.features.list() {
            gauge_count(&mut m, &vec![("feature", name.to_string())], u64::from(on))?;
        }
        let mut m = enc.encode_descriptor("observer_build_info", "Build information", None, Gauge)?;
        gauge_count(&mut m, &vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::event::{EventKind, Owner, SocketEvent};
    use crate::model::{IoCounts, TcpState};

    /// A state change of pid 100's connection `sk` to `remote`, with the I/O counters it carries.
    fn state(agg: &mut Aggregator, sk: u64, remote: &str, (old, new): (TcpState, TcpState), io: IoCounts) {
        agg.apply(&SocketEvent {
            ts_ns: 1,
            sk,
            owner: Some(Owner { key: ProcessKey { pid: 100, start_ns: 1 }, comm: "client".into() }),
            kind: EventKind::State { old, new },
            family: 2,
            local: Endpoint(format!("127.0.0.1:{}", 40000 + sk).parse().unwrap()),
            remote: Endpoint(remote.parse().unwrap()),
            error: 0,
            netns: Some(1),
            io,
            has_tuple: true,
            local_port: 0,
            first: false,
            cookie: 0,
        });
    }

    /// One connection from pid 100 to `remote`, established.
    fn connect(agg: &mut Aggregator, sk: u64, remote: &str) {
        for change in [(TcpState::Close, TcpState::SynSent), (TcpState::SynSent, TcpState::Established)] {
            state(agg, sk, remote, change, IoCounts::default());
        }
    }

    /// An empty aggregator and the registry over it, `max_peers` series per process.
    fn empty_registry(max_peers: usize) -> (Arc<Mutex<Aggregator>>, Registry) {
        let agg = Arc::new(Mutex::new(Aggregator::default()));
        let registry =
            registry(agg.clone(), Arc::new(Mutex::new(KernelStatus::default())), max_peers, || 1_000_000_000);
        (agg, registry)
    }

    fn sample(text: &str, name: &str, peer: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("peer=\"{peer}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    }

    #[test]
    fn peers_beyond_the_limit_fold_into_other_and_admission_sticks() {
        let (agg, registry) = empty_registry(2);
        {
            let mut a = agg.lock().unwrap();
            connect(&mut a, 1, "10.0.0.3:80");
            connect(&mut a, 2, "10.0.0.2:80");
            connect(&mut a, 3, "10.0.0.1:80");
        }
        let text = render_text(&registry);
        // Admitted in endpoint order: 10.0.0.1 and 10.0.0.2; 10.0.0.3 folds into "other".
        assert_eq!(sample(&text, "observer_connections_opened_total", "10.0.0.1:80").as_deref(), Some("1"));
        assert_eq!(sample(&text, "observer_connections_opened_total", "10.0.0.2:80").as_deref(), Some("1"));
        assert_eq!(sample(&text, "observer_connections_opened_total", "10.0.0.3:80"), None);
        assert_eq!(sample(&text, "observer_connections_opened_total", "other").as_deref(), Some("1"));
        // A new peer that sorts first does not take an admitted peer's series away.
        connect(&mut agg.lock().unwrap(), 4, "10.0.0.0:80");
        connect(&mut agg.lock().unwrap(), 5, "10.0.0.3:80");
        let text = render_text(&registry);
        assert_eq!(sample(&text, "observer_connections_opened_total", "10.0.0.1:80").as_deref(), Some("1"));
        assert_eq!(sample(&text, "observer_connections_opened_total", "10.0.0.0:80"), None);
        assert_eq!(sample(&text, "observer_connections_opened_total", "other").as_deref(), Some("3"), "only grows");
        assert_eq!(text.matches("observer_connections_opened_total{").count(), 3);
    }

    /// Connection `sk` of pid 100 ends, from ESTABLISHED, having carried `requests` requests.
    fn close(agg: &mut Aggregator, sk: u64, remote: &str, requests: u64) {
        let io = IoCounts { send_runs: requests, recv_runs: requests, ..IoCounts::default() };
        state(agg, sk, remote, (TcpState::Established, TcpState::Close), io);
    }

    #[test]
    fn the_protobuf_exposition_carries_the_native_histogram_exactly() {
        let (agg, registry) = empty_registry(100);
        {
            let mut a = agg.lock().unwrap();
            for (sk, requests) in [0u64, 1, 1, 2, 100, 100, 100].into_iter().enumerate() {
                let sk = sk as u64 + 1;
                connect(&mut a, sk, "10.0.0.1:80");
                close(&mut a, sk, "10.0.0.1:80", requests);
            }
        }
        let families = prometheus_client::encoding::prometheus_protobuf::encode(&registry).unwrap();
        let family = families.iter().find(|f| f.name == "observer_requests_per_connection").expect("the family");
        assert_eq!(family.metric.len(), 1, "one series: pid 100 to 10.0.0.1:80");
        let h = family.metric[0].histogram.as_ref().expect("a histogram");
        assert_eq!((h.sample_count, h.sample_sum), (7, 304.0));
        // Schema 0: bucket i is (2^(i-1), 2^i]; 0 requests go to the zero bucket.
        assert_eq!((h.schema, h.zero_threshold, h.zero_count), (0, 0.0, 1));
        let spans: Vec<(i32, u32)> = h.positive_span.iter().map(|s| (s.offset, s.length)).collect();
        // Buckets 0 (1 request: 2), 1 (2 requests: 1) and 7 (65 to 128: 3).
        assert_eq!(spans, [(0, 2), (5, 1)]);
        assert_eq!(h.positive_delta, [2, -1, 2]);
        assert!(h.negative_span.is_empty() && h.negative_delta.is_empty());
        // The classic buckets, for scrapers without native histograms: cumulative, ending at +Inf.
        let last = h.bucket.last().expect("classic buckets");
        assert_eq!((last.upper_bound, last.cumulative_count), (f64::INFINITY, 7));
    }

    #[test]
    fn prometheus_asks_for_protobuf_with_native_histograms() {
        // The Accept header Prometheus sends with native histograms enabled.
        let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        assert!(wants_protobuf(accept));
        assert!(!wants_protobuf("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"));
        assert!(!wants_protobuf("*/*"));
    }
}
