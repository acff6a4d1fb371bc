//! Tests of the exposition: peer folding, the protobuf histogram, and a golden text exposition
//! that pins every family's name, type, help, labels and values.

use super::*;

use crate::diagnosis::Thresholds;
use crate::event::{EventKind, Owner, SocketEvent};
use crate::model::{Endpoint, IoCounts, ProcessKey, TcpState};

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
        idle_ns: None,
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
        registry(agg.clone(), Arc::new(Mutex::new(KernelStatus::default())), max_peers, Thresholds::default(), || {
            1_000_000_000
        });
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

const SECOND: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

/// Events for one socket of process `pid`, in network namespace 7.
struct Sock {
    sk: u64,
    pid: u32,
    local: &'static str,
    remote: &'static str,
}

impl Sock {
    fn ev(&self, ts_ns: u64, kind: EventKind, error: i32, io: IoCounts) -> SocketEvent {
        let comm = if self.pid == 100 { "client" } else { "server" };
        SocketEvent {
            ts_ns,
            sk: self.sk,
            owner: Some(Owner { key: ProcessKey { pid: self.pid, start_ns: 1 }, comm: comm.into() }),
            kind,
            family: 2,
            local: Endpoint(self.local.parse().unwrap()),
            remote: Endpoint(self.remote.parse().unwrap()),
            error,
            netns: Some(7),
            io,
            has_tuple: true,
            local_port: 0,
            idle_ns: None,
            first: false,
            cookie: self.sk,
        }
    }

    /// State changes from `t`, 1 ms apart.
    fn states(&self, agg: &mut Aggregator, t: u64, changes: &[(TcpState, TcpState)]) {
        for (i, (old, new)) in changes.iter().enumerate() {
            agg.apply(&self.ev(t + i as u64 * MS, EventKind::State { old: *old, new: *new }, 0, IoCounts::default()));
        }
    }

    fn close(&self, agg: &mut Aggregator, t: u64, old: TcpState, error: i32, io: IoCounts) {
        agg.apply(&self.ev(t, EventKind::State { old, new: TcpState::Close }, error, io));
    }
}

fn io(requests: u64, bytes: u64) -> IoCounts {
    IoCounts { bytes_sent: bytes, bytes_received: 2 * bytes, send_runs: requests, recv_runs: requests }
}

/// A client (pid 100) with four peers, two admitted and two folded into "other", and a server
/// (pid 200, in a container) with a listener, an accepted connection and a connect under way,
/// TIME_WAIT sockets and observer's own counters: every family gets at least one series with a
/// non-trivial value.
fn representative(agg: &mut Aggregator) {
    client(agg);
    server(agg);
    // The kernel's TIME_WAIT sockets: the client's, and one of nobody's.
    let tw = |local: &str, remote: &str| crate::timewait::KernelTimeWait {
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        substate: TcpState::TimeWait,
    };
    let kernel = [tw("192.168.1.10:40001", "10.0.0.1:80"), tw("192.168.1.10:45000", "10.0.0.9:80")];
    agg.reconcile_time_wait(7, 50 * SECOND, &kernel, 50 * SECOND);
    agg.tick(50 * SECOND);
    agg.stats.decode_errors = 2;
    agg.stats.tls_dropped = 1;
    agg.stats.closes_not_seen = 4;
    agg.stats.closes_without_final_counters = 3;
    agg.stats.stale_slots_freed = 5;
}

/// pid 100's peers: 10.0.0.1:80 and 10.0.0.2:443 admitted, 10.0.0.3:80 and 10.0.0.4:80 folded.
fn client(agg: &mut Aggregator) {
    use TcpState::*;
    let opened = [(Close, SynSent), (SynSent, Established)];
    // 10.0.0.1:80: one connection closed by the client (lifetime, TIME_WAIT), one closed by the
    // peer and left in CLOSE_WAIT, with an error report and a reset received.
    let s = Sock { sk: 1, pid: 100, local: "192.168.1.10:40001", remote: "10.0.0.1:80" };
    s.states(agg, SECOND, &opened);
    s.states(agg, 2 * SECOND, &[(Established, FinWait1), (FinWait1, FinWait2)]);
    s.close(agg, 3 * SECOND, FinWait2, 0, io(3, 1000));
    let s = Sock { sk: 2, pid: 100, local: "192.168.1.10:40002", remote: "10.0.0.1:80" };
    s.states(agg, 4 * SECOND, &opened);
    agg.apply(&s.ev(5 * SECOND, EventKind::ErrorReport, libc::ECONNRESET, IoCounts::default()));
    agg.apply(&s.ev(5 * SECOND, EventKind::ResetReceived, 0, IoCounts::default()));
    s.states(agg, 6 * SECOND, &[(Established, CloseWait)]);
    // 10.0.0.2:443: two failed connects, and a TLS connection that sent a reset at its close.
    for (sk, error) in [(3, libc::ECONNREFUSED), (4, libc::ETIMEDOUT)] {
        let s = Sock { sk, pid: 100, local: "192.168.1.10:0", remote: "10.0.0.2:443" };
        s.states(agg, 7 * SECOND, &[(Close, SynSent)]);
        s.close(agg, 8 * SECOND, SynSent, error, IoCounts::default());
    }
    let s = Sock { sk: 5, pid: 100, local: "192.168.1.10:40005", remote: "10.0.0.2:443" };
    s.states(agg, 9 * SECOND, &opened);
    let chunks = crate::tls::tests::recorded("tls13_full");
    for (i, (dir, data)) in chunks.into_iter().enumerate() {
        let ts_ns = 10 * SECOND + i as u64 * 3 * MS;
        agg.apply_tls(&crate::tls::Chunk { ts_ns, sk: 5, dir, len: data.len() as u32, data });
    }
    agg.apply(&s.ev(11 * SECOND, EventKind::ResetSent, 0, IoCounts::default()));
    s.close(agg, 11 * SECOND, Established, 0, io(7, 5000));
    // 10.0.0.3:80, folded: twelve sockets in CLOSE_WAIT since 20 s (a leak by 60 s).
    for sk in 10..22 {
        let s = Sock { sk, pid: 100, local: "192.168.1.10:41000", remote: "10.0.0.3:80" };
        s.states(agg, 19 * SECOND, &opened);
        s.states(agg, 20 * SECOND, &[(Established, CloseWait)]);
    }
    // 10.0.0.4:80, folded: one connection that ended, one still open.
    let s = Sock { sk: 30, pid: 100, local: "192.168.1.10:42000", remote: "10.0.0.4:80" };
    s.states(agg, 30 * SECOND, &opened);
    s.close(agg, 31 * SECOND, Established, 0, io(2, 300));
    let s = Sock { sk: 31, pid: 100, local: "192.168.1.10:42001", remote: "10.0.0.4:80" };
    s.states(agg, 32 * SECOND, &opened);
}

fn server(agg: &mut Aggregator) {
    use TcpState::*;
    // pid 200 listens on 8080 and accepts a connection.
    let l = Sock { sk: 50, pid: 200, local: "0.0.0.0:8080", remote: "0.0.0.0:0" };
    l.states(agg, SECOND, &[(Close, Listen)]);
    let s = Sock { sk: 51, pid: 200, local: "192.168.1.20:8080", remote: "192.168.1.10:50000" };
    let mut first = s.ev(40 * SECOND, EventKind::State { old: SynRecv, new: Established }, 0, IoCounts::default());
    first.first = true;
    agg.apply(&first);
    agg.apply(&s.ev(40 * SECOND + MS, EventKind::Claim, 0, IoCounts::default()));
    let container = crate::container::Container {
        container_id: Some("ab".repeat(32)),
        pod_uid: Some("0f3c5a8e-1111-2222-3333-444455556666".into()),
    };
    agg.set_process_info(ProcessKey { pid: 200, start_ns: 1 }, None, None, Some(container));
    // And connects to a database that has not answered yet: no reuse ratio before a connection.
    let s = Sock { sk: 52, pid: 200, local: "192.168.1.20:43000", remote: "10.1.0.1:5432" };
    s.states(agg, 41 * SECOND, &[(Close, SynSent)]);
}

fn representative_kernel() -> KernelStatus {
    let mut k = KernelStatus::default();
    k.counters.events_lost = 11;
    k.counters.storage_failed = 12;
    k.counters.sock_overflow = 13;
    k.counters.state_nested = 14;
    k.counters.listener_insert_failed = 15;
    k.listener_map_entries = 16;
    k.listener_map_evictions = 17;
    k.features.error_reports = true;
    k.features.resets = true;
    k.features.tls = true;
    k
}

const GOLDEN: &str = "src/metrics/testdata/representative.txt";
const GOLDEN_PROTOBUF: &str = "src/metrics/testdata/representative_protobuf.txt";

/// The whole text exposition of a representative aggregation, byte for byte. Set
/// `OBSERVER_BLESS=1` to rewrite the file after an intended change of the output.
#[test]
fn the_text_exposition_of_a_representative_aggregation_is_unchanged() {
    let mut agg = Aggregator::default();
    representative(&mut agg);
    let agg = Arc::new(Mutex::new(agg));
    let registry =
        registry(agg, Arc::new(Mutex::new(representative_kernel())), 2, Thresholds::default(), || 60 * SECOND);
    // The version changes with every release: not part of what is pinned.
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    let scrape = || render_text(&registry).replace(&version, "version=\"VERSION\"");
    let text = scrape();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var_os("OBSERVER_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&path).expect("the recorded exposition");
    if text != expected {
        let diff = text.lines().zip(expected.lines()).position(|(a, b)| a != b);
        panic!("exposition changed (first differing line: {diff:?}):\n{text}");
    }
    // A second scrape sees the same figures: admission is sticky, nothing is consumed.
    assert_eq!(scrape(), expected);
}

/// The same aggregation in the protobuf format, as the decoded message families: it pins what
/// the text format cannot show (the native histograms). `OBSERVER_BLESS=1` rewrites it too.
#[test]
fn the_protobuf_exposition_of_a_representative_aggregation_is_unchanged() {
    let mut agg = Aggregator::default();
    representative(&mut agg);
    let agg = Arc::new(Mutex::new(agg));
    let registry =
        registry(agg, Arc::new(Mutex::new(representative_kernel())), 2, Thresholds::default(), || 60 * SECOND);
    let families = prometheus_client::encoding::prometheus_protobuf::encode(&registry).unwrap();
    let version = format!("\"{}\"", env!("CARGO_PKG_VERSION"));
    let text = format!("{families:#?}\n").replace(&version, "\"VERSION\"");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN_PROTOBUF);
    if std::env::var_os("OBSERVER_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&path).expect("the recorded exposition");
    assert!(text == expected, "protobuf exposition changed:\n{text}");
}

/// The table's label lists match the rows they read: 6 labels per peer, 4 per process, none for
/// observer itself, and one more for the values split by a label. Names are unique.
#[test]
fn every_family_declares_the_labels_its_rows_give() {
    use families::{FAMILIES, OwnValue, PeerValue, Series};
    let mut names = std::collections::HashSet::new();
    for f in FAMILIES {
        assert!(names.insert(f.name), "{} declared twice", f.name);
        let expected = match &f.series {
            Series::Peers(_, PeerValue::ByLabel(_) | PeerValue::FloatByLabel(_)) => 7,
            Series::Peers(..) => 6,
            Series::Processes(_) => 5,
            Series::Observer(OwnValue::ByLabel(_)) => 1,
            Series::Observer(OwnValue::Single(_)) => 0,
        };
        assert_eq!(f.labels.len(), expected, "labels of {}", f.name);
    }
}
