//! The rows the metric families read their figures from: one per admitted peer (or per
//! process and direction for the peers folded into `peer="other"`), one per process, and
//! observer itself. Rows borrow the aggregation; figures of folded peers are summed when read.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::aggregate::{Aggregator, PeerStats, Process};
use crate::closewait::{CloseWaitConfig, Status as CloseWaitStatus, Verdict};
use crate::diagnosis::{self, Kind, Thresholds};
use crate::exphist::ExpHistogram;
use crate::idle::IdleCloses;
use crate::kernel_status::KernelStatus;
use crate::lifetime::Lifetimes;
use crate::model::{Direction, Endpoint, FailureCounts, ProcessKey, StateCounts};
use crate::tls::TlsStats;
use crate::views::process_totals;

use super::OTHER_PEER;

/// Peers with series of their own, per process (sticky: a peer keeps its series for the life of
/// the process, so that every counter, the folded ones included, only grows).
pub(super) type Admitted = HashMap<ProcessKey, HashSet<(Direction, Endpoint)>>;

/// A row's label values, in the order of its family's `labels`.
pub(super) trait Row {
    fn label_values(&self) -> &[String];
}

/// One peer of a process, with its live sockets including its TIME_WAIT entries, and the
/// kinds of its findings.
struct Peer<'a> {
    stats: &'a PeerStats,
    sockets: StateCounts,
    findings: Vec<Kind>,
}

/// The series of one admitted peer, or of the peers of a process and direction folded into
/// `peer="other"`. Labels: pid, comm, container_id, pod_uid, direction, peer.
pub(super) struct PeerRow<'a> {
    labels: Vec<String>,
    pub direction: Direction,
    /// In endpoint order; never empty.
    peers: Vec<Peer<'a>>,
    now: u64,
    close_wait: &'a CloseWaitConfig,
}

/// A process's series. Labels: pid, comm, container_id, pod_uid.
pub(super) struct ProcessRow {
    labels: Vec<String>,
    /// Live sockets over all its peers, TIME_WAIT included.
    pub sockets: StateCounts,
}

/// Observer's own figures (no labels of its own).
pub(super) struct Observer<'a> {
    pub agg: &'a Aggregator,
    pub kernel: &'a KernelStatus,
}

impl Row for PeerRow<'_> {
    fn label_values(&self) -> &[String] {
        &self.labels
    }
}

impl Row for ProcessRow {
    fn label_values(&self) -> &[String] {
        &self.labels
    }
}

impl Row for Observer<'_> {
    fn label_values(&self) -> &[String] {
        &[]
    }
}

/// pid, comm, and the container and pod (empty for a process outside any).
fn process_labels(p: &Process) -> Vec<String> {
    vec![
        p.key.pid.to_string(),
        p.comm.clone(),
        p.container.container_id.clone().unwrap_or_default(),
        p.container.pod_uid.clone().unwrap_or_default(),
    ]
}

fn by_pid(agg: &Aggregator) -> Vec<&Process> {
    let mut procs: Vec<&Process> = agg.processes().collect();
    procs.sort_by_key(|p| p.key.pid);
    procs
}

pub(super) fn process_rows(agg: &Aggregator) -> Vec<ProcessRow> {
    by_pid(agg)
        .into_iter()
        .map(|p| ProcessRow { labels: process_labels(p), sockets: process_totals(agg, p).0 })
        .collect()
}

/// One row per admitted peer, then one `peer="other"` row per direction for the peers beyond
/// `max_peers`, process by process in pid order. Processes gone from the aggregation leave
/// `admitted`.
pub(super) fn peer_rows<'a>(
    agg: &'a Aggregator,
    admitted: &mut Admitted,
    limits: (usize, &Thresholds),
    now: u64,
) -> Vec<PeerRow<'a>> {
    let live: HashSet<ProcessKey> = agg.processes().map(|p| p.key).collect();
    admitted.retain(|k, _| live.contains(k));
    let mut rows = Vec::new();
    for p in by_pid(agg) {
        let set = admitted.entry(p.key).or_default();
        rows.extend(process_peer_rows(agg, p, set, limits, now));
    }
    rows
}

/// `limits`: the peers a process gets series for, and the thresholds of the findings.
fn process_peer_rows<'a>(
    agg: &'a Aggregator,
    p: &'a Process,
    admitted: &mut HashSet<(Direction, Endpoint)>,
    (max_peers, thresholds): (usize, &Thresholds),
    now: u64,
) -> Vec<PeerRow<'a>> {
    let mut peers: Vec<(Direction, &Endpoint, &PeerStats)> =
        p.outbound.iter().map(|(e, s)| (Direction::Outbound, e, s)).collect();
    peers.extend(p.inbound.iter().map(|(e, s)| (Direction::Inbound, e, s)));
    peers.sort_by_key(|(d, e, _)| (*d, **e));
    let row = |direction: Direction, peer: String| {
        let mut labels = process_labels(p);
        labels.extend([direction.name().to_string(), peer]);
        PeerRow { labels, direction, peers: Vec::new(), now, close_wait: agg.close_wait_config() }
    };
    let mut rows = Vec::new();
    let mut other: [Option<PeerRow<'a>>; 2] = [None, None];
    for (direction, peer, stats) in peers {
        let facts = diagnosis::facts_of(agg, p, direction, *peer, stats, now);
        let findings = diagnosis::diagnose_peer(&facts, thresholds).into_iter().map(|f| f.kind).collect();
        let one = Peer { stats, sockets: facts.sockets, findings };
        let key = (direction, *peer);
        if admitted.contains(&key) || admitted.len() < max_peers {
            admitted.insert(key);
            rows.push(PeerRow { peers: vec![one], ..row(direction, peer.to_string()) });
        } else {
            other[direction as usize].get_or_insert_with(|| row(direction, OTHER_PEER.to_string())).peers.push(one);
        }
    }
    rows.extend(other.into_iter().flatten());
    rows
}

impl PeerRow<'_> {
    /// A count, summed over the row's peers.
    pub fn sum(&self, get: fn(&PeerStats) -> u64) -> u64 {
        self.peers.iter().map(|p| get(p.stats)).sum()
    }

    /// A figure of the row's peers merged: borrowed for a single peer.
    fn merged<T: Clone>(&self, get: fn(&PeerStats) -> &T, merge: fn(&mut T, &T)) -> Cow<'_, T> {
        let (first, rest) = self.peers.split_first().expect("a row has a peer");
        if rest.is_empty() {
            return Cow::Borrowed(get(first.stats));
        }
        let mut all = get(first.stats).clone();
        for p in rest {
            merge(&mut all, get(p.stats));
        }
        Cow::Owned(all)
    }

    pub fn sockets(&self) -> StateCounts {
        let mut all = StateCounts::default();
        for p in &self.peers {
            all.merge(&p.sockets);
        }
        all
    }

    pub fn connect_failures(&self) -> FailureCounts {
        *self.merged(|s| &s.connect_failures, FailureCounts::merge)
    }

    pub fn socket_errors(&self) -> Cow<'_, BTreeMap<i32, u64>> {
        self.merged(
            |s| &s.socket_errors,
            |all, o| {
                for (e, n) in o {
                    *all.entry(*e).or_default() += n;
                }
            },
        )
    }

    pub fn lifetimes(&self) -> Cow<'_, Lifetimes> {
        self.merged(|s| &s.lifetimes, Lifetimes::merge)
    }

    pub fn requests_per_connection(&self) -> Cow<'_, ExpHistogram> {
        self.merged(|s| &s.requests_per_connection, ExpHistogram::merge)
    }

    /// TLS figures (empty before a peer's first handshake).
    pub fn tls(&self) -> Cow<'_, TlsStats> {
        fn tls<'a>(p: &Peer<'a>) -> Option<&'a TlsStats> {
            p.stats.tls.as_deref()
        }
        match &self.peers[..] {
            [one] => tls(one).map_or_else(Cow::default, Cow::Borrowed),
            peers => {
                let mut all = TlsStats::default();
                for t in peers.iter().filter_map(tls) {
                    all.merge(t);
                }
                Cow::Owned(all)
            }
        }
    }

    pub fn idle_closes(&self) -> Cow<'_, IdleCloses> {
        self.merged(|s| &s.idle_closes, IdleCloses::merge)
    }

    /// The kinds of the findings of the row's peers, each once.
    pub fn findings(&self) -> Vec<Kind> {
        let mut kinds: Vec<Kind> = self.peers.iter().flat_map(|p| p.findings.iter().copied()).collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    pub fn new_connections_per_second(&self) -> f64 {
        self.peers.iter().map(|p| p.stats.new_connections_per_second(self.now)).sum()
    }

    /// CLOSE_WAIT now: counts and growth add up, the oldest is the oldest of all, and the row
    /// leaks if any of its peers does.
    pub fn close_wait(&self) -> CloseWaitStatus {
        let mut statuses = self.peers.iter().map(|p| p.stats.close_wait.status(self.now, self.close_wait));
        let first = statuses.next().expect("a row has a peer");
        statuses.fold(first, |a, b| CloseWaitStatus {
            count: a.count + b.count,
            oldest_ns: a.oldest_ns.max(b.oldest_ns),
            growth_per_minute: a.growth_per_minute + b.growth_per_minute,
            verdict: if a.verdict == Verdict::Leak || b.verdict == Verdict::Leak { Verdict::Leak } else { a.verdict },
        })
    }
}
