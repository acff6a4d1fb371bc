//! The per-process, per-peer socket table: kernel events in, answers out.
//!
//! Pure: no kernel, no clock, no I/O. Every event carries its own timestamp and `tick` is given
//! the current time, so the whole lifecycle logic is unit-tested with synthetic events.
//!
//! Attribution: every event names the socket's owner as the kernel recorded it in process
//! context (connect, listen, accept). A socket is counted in exactly one bucket, keyed by its
//! owner, its direction and its peer: the remote endpoint for outbound sockets, the local
//! listening endpoint for inbound ones (never the client's ephemeral port).

use std::collections::BTreeMap;

use hashbrown::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::closewait::{CloseWaitConfig, CloseWaitTracker, Status as CloseWaitStatus, Verdict};
use crate::container::Container;
use crate::event::{self, EventKind, Owner, SocketEvent};
use crate::exphist::ExpHistogram;
use crate::lifetime::Lifetimes;
use crate::model::{Direction, Endpoint, FailureCounts, FailureReason, IoCounts, ProcessKey, StateCounts, TcpState};
use crate::rate::RateWindow;
use crate::table_audit::{Gone, Known, StaleSlot, TableSlot};
use crate::timewait::{KernelTimeWait, TimeWaitTable, TwKey, TwOwner};
use crate::tls::{self, TlsStats};

const SECOND: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
pub struct Config {
    /// How long an exited process stays visible (its last figures can still be read and
    /// scraped) before it is pruned.
    pub exited_retention_ns: u64,
    pub close_wait: CloseWaitConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config { exited_retention_ns: 30 * SECOND, close_wait: CloseWaitConfig::default() }
    }
}

/// How long a closed socket is remembered, for events that arrive after its CLOSE (a RST sent
/// by close(), an error reported after the state change).
const TOMBSTONE_TTL_NS: u64 = 10 * SECOND;
/// How long a pruned process is remembered, so that late events of its orphaned sockets do not
/// bring it back.
const PRUNED_TTL_NS: u64 = 600 * SECOND;
/// How long the 4-tuple of an unattributed socket that closed is remembered, so that a
/// start-up snapshot taken just before does not resurrect it.
const RECENTLY_CLOSED_TTL_NS: u64 = 30 * SECOND;
/// Connections whose handshake is followed at once (each until it closes): a bound on memory
/// if sockets are never seen closing.
const MAX_TLS_CONNS: usize = 65536;

/// A socket found in the kernel's table at start-up, with the process that holds it.
#[derive(Clone, Debug)]
pub struct SeedSocket {
    pub netns: u32,
    /// Local and remote endpoints as the kernel has them (not canonical).
    pub local: Endpoint,
    pub remote: Endpoint,
    pub state: TcpState,
    pub owner: Owner,
}

/// Network namespace, local and remote endpoint: how a socket is known before its address is.
pub type Tuple = (u32, SocketAddr, SocketAddr);

/// A seeded socket, counted in its owner's figures until its first event turns it into a
/// tracked socket.
#[derive(Clone, Debug)]
struct Seed {
    owner: ProcessKey,
    direction: Direction,
    peer: Endpoint,
    listener: bool,
    state: TcpState,
    /// When the seed was taken (a CLOSE_WAIT seed has been in CLOSE_WAIT at least since).
    seeded_ns: u64,
}

/// Figures for one peer of one process.
#[derive(Clone, Debug, Default)]
pub struct PeerStats {
    /// Live sockets by state (TIME_WAIT comes from the [`TimeWaitTable`]).
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
}

impl PeerStats {
    /// A live socket is counted in `state` (`close_wait_since`: when it entered CLOSE_WAIT).
    fn add_live(&mut self, state: TcpState, close_wait_since: Option<u64>) {
        self.sockets.add(state, 1);
        if let (TcpState::CloseWait, Some(t)) = (state, close_wait_since) {
            self.close_wait.enter(t);
        }
    }

    fn remove_live(&mut self, state: TcpState, close_wait_since: Option<u64>) {
        self.sockets.sub(state, 1);
        if let (TcpState::CloseWait, Some(t)) = (state, close_wait_since) {
            self.close_wait.leave(t);
        }
    }

    fn add_io(&mut self, requests: u64, delta: &IoCounts) {
        self.requests += requests;
        self.bytes_sent += delta.bytes_sent;
        self.bytes_received += delta.bytes_received;
    }

    fn count_connection(&mut self, ts_ns: u64) {
        self.connections += 1;
        self.new_connections.get_or_insert_default().add(ts_ns);
    }

    /// New connections per second over the last minute.
    pub fn new_connections_per_second(&self, now_ns: u64) -> f64 {
        self.new_connections.as_ref().map_or(0.0, |w| w.per_second(now_ns))
    }
}

#[derive(Clone, Debug)]
pub struct Process {
    pub key: ProcessKey,
    pub comm: String,
    pub cmdline: Option<String>,
    /// Its container and Kubernetes pod, from its cgroup.
    pub container: Container,
    /// When the last thread exited (CLOCK_MONOTONIC ns).
    pub exited_ns: Option<u64>,
    pub outbound: HashMap<Endpoint, PeerStats>,
    pub inbound: HashMap<Endpoint, PeerStats>,
    /// Endpoints this process listens on, with their network namespace.
    listeners: Vec<(Option<u32>, Endpoint)>,
}

impl Process {
    fn new(key: ProcessKey, comm: String) -> Process {
        Process {
            key,
            comm,
            cmdline: None,
            container: Container::default(),
            exited_ns: None,
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            listeners: Vec::new(),
        }
    }

    fn peers_mut(&mut self, direction: Direction) -> &mut HashMap<Endpoint, PeerStats> {
        match direction {
            Direction::Outbound => &mut self.outbound,
            Direction::Inbound => &mut self.inbound,
        }
    }

    /// The listening endpoint a child socket with local endpoint `local` came from.
    fn listener_for(&self, netns: Option<u32>, local: Endpoint) -> Option<Endpoint> {
        let local = local.canonical();
        self.listeners
            .iter()
            .find(|(ns, l)| {
                (ns.is_none() || netns.is_none() || *ns == netns)
                    && l.port() == local.port()
                    && (l.ip() == local.ip() || l.ip().is_unspecified())
            })
            .map(|(_, l)| *l)
    }
}

/// What the aggregation knows of one live socket.
#[derive(Clone, Debug)]
struct SocketRec {
    /// The socket's cookie, its key in the kernel's socket table (0 if unknown).
    cookie: u64,
    owner: ProcessKey,
    direction: Direction,
    /// Aggregation key: remote endpoint (outbound) or listening endpoint (inbound).
    peer: Endpoint,
    listener: bool,
    /// As the kernel has them (for the 4-tuple of timewait entries and seeds).
    local: Endpoint,
    remote: Endpoint,
    /// State the socket is counted in (None before its first state or after CLOSE).
    state: Option<TcpState>,
    /// When it entered CLOSE_WAIT, while it is there.
    close_wait_since: Option<u64>,
    netns: Option<u32>,
    established_ns: Option<u64>,
    /// Seen in a connected state (also for sockets adopted mid-life).
    connected: bool,
    reset_received: bool,
    close_counted: bool,
    accept_counted: bool,
    /// I/O counters already added to the peer's figures.
    io: IoCounts,
    /// Requests already added to the peer's figures.
    requests_counted: u64,
    /// Exchanges that were the TLS handshake, not requests.
    handshake_runs: u32,
    /// The exited process this socket was taken over from: the kernel's records may still name
    /// it as the owner.
    inherited_from: Option<ProcessKey>,
}

impl SocketRec {
    /// The kernel's counters are now `io`: what to add to the peer's figures (requests, and the
    /// counters' growth), the handshake's exchanges left out.
    fn io_update(&mut self, io: &IoCounts) -> (u64, IoCounts) {
        let delta = io.since(&self.io);
        let total = self.requests_total(io);
        let requests = total.saturating_sub(self.requests_counted);
        self.requests_counted = self.requests_counted.max(total);
        self.io = *io;
        (requests, delta)
    }

    /// Requests carried by the connection so far.
    fn requests_total(&self, io: &IoCounts) -> u64 {
        io.requests(self.direction).saturating_sub(u64::from(self.handshake_runs))
    }
}

/// A socket that closed without the kernel reporting it, waiting for its final counters.
struct Unreported {
    rec: SocketRec,
    /// The last state it was seen in.
    state: TcpState,
    /// When it was known to have closed (a new socket took its address).
    closed_ns: u64,
    handshake: Option<tls::Outcome>,
}

/// How long an [`Unreported`] socket waits for the audit of the kernel's table (passes every few
/// seconds, see `table_audit`) before it is reported with the counters it has.
pub const UNREPORTED_TTL_NS: u64 = 60 * SECOND;

/// Most [`Unreported`] sockets held at once (each is a few hundred bytes).
const MAX_UNREPORTED: usize = 65_536;

#[derive(Clone, Copy, Debug)]
struct Tombstone {
    owner: ProcessKey,
    direction: Direction,
    peer: Endpoint,
    closed_ns: u64,
}

/// An active finding: a CLOSE_WAIT leak of one process towards one peer.
#[derive(Clone, Debug)]
pub struct Finding {
    pub process: ProcessKey,
    pub comm: String,
    pub direction: Direction,
    pub peer: Endpoint,
    pub status: CloseWaitStatus,
    /// When the leak verdict started (CLOCK_MONOTONIC ns).
    pub since_ns: u64,
}

/// A finding that started or cleared, for the daemon's log.
#[derive(Clone, Debug)]
pub struct AlertChange {
    pub started: bool,
    pub finding: Finding,
}

type PeerKey = (ProcessKey, Direction, Endpoint);

/// Counters about the aggregation itself.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Events applied, by kind ([`EventKind::index`]).
    pub events: [u64; EventKind::NAMES.len()],
    /// Events about sockets whose owner the kernel did not know (created before the daemon
    /// started, or evicted from the kernel's socket map).
    pub unattributed_events: u64,
    /// Events of processes already pruned (orphaned sockets closing late).
    pub events_after_prune: u64,
    /// Sockets whose end the kernel never reported: a new socket took the same address while
    /// the daemon still held them, or the audit of the kernel's socket table found them gone
    /// (see `table_audit`). Seen on 6.18 for a small share of orphaned sockets in FIN_WAIT1.
    /// Their connections are reported all the same, with their final counters from the table.
    pub closes_not_seen: u64,
    /// Of those, the ones whose final counters could not be read from the kernel's table (not
    /// found there within [`UNREPORTED_TTL_NS`]): reported with the counters of the last read.
    pub closes_without_final_counters: u64,
    /// Slots of the kernel's socket table the audit freed: their socket was gone.
    pub stale_slots_freed: u64,
    /// Passes of the audit of the kernel's socket table (see `table_audit`).
    pub table_audits: u64,
    pub decode_errors: u64,
    /// Chunks of connections' first bytes applied (TLS recognition).
    pub tls_chunks: u64,
    /// Connections whose handshake was not followed: too many at once.
    pub tls_dropped: u64,
}

#[derive(Default)]
pub struct Aggregator {
    cfg: Config,
    processes: HashMap<u32, Process>,
    sockets: HashMap<u64, SocketRec>,
    tombstones: HashMap<u64, Tombstone>,
    pruned: HashMap<ProcessKey, u64>,
    timewait: TimeWaitTable,
    new_processes: Vec<ProcessKey>,
    /// Sockets from the start-up snapshot not seen in an event yet.
    seeds: HashMap<Tuple, Seed>,
    /// Unattributed sockets that closed recently (see [`RECENTLY_CLOSED_TTL_NS`]).
    recently_closed: HashMap<Tuple, u64>,
    /// Handshakes under way or done, by socket, until the socket closes.
    tls: HashMap<u64, tls::Conn>,
    /// Sockets that closed without the kernel reporting it (a new socket took their address),
    /// by cookie: their connection is reported when the audit of the kernel's table hands their
    /// final counters over (see [`Aggregator::close_unreported`]).
    unreported: HashMap<u64, Unreported>,
    /// Active CLOSE_WAIT leaks, with when each started.
    findings: HashMap<PeerKey, u64>,
    alert_changes: Vec<AlertChange>,
    /// Processes that exited since the daemon last looked for heirs of their sockets.
    exits: Vec<ProcessKey>,
    pub stats: Stats,
}

impl Aggregator {
    pub fn new(cfg: Config) -> Aggregator {
        Aggregator { cfg, ..Aggregator::default() }
    }

    // ----------------------------------------------------------------------------------------
    // Queries
    // ----------------------------------------------------------------------------------------

    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.processes.values()
    }

    pub fn timewait(&self) -> &TimeWaitTable {
        &self.timewait
    }

    /// Sockets currently tracked (not counting timewait entries).
    pub fn tracked_sockets(&self) -> usize {
        self.sockets.len()
    }

    /// Processes seen since the last call, for the daemon to read their command lines.
    pub fn take_new_processes(&mut self) -> Vec<ProcessKey> {
        std::mem::take(&mut self.new_processes)
    }

    pub fn has_new_processes(&self) -> bool {
        !self.new_processes.is_empty()
    }

    pub fn set_process_info(
        &mut self,
        key: ProcessKey,
        comm: Option<String>,
        cmdline: Option<String>,
        container: Option<Container>,
    ) {
        if let Some(p) = self.processes.get_mut(&key.pid).filter(|p| p.key.same_process(&key)) {
            if let Some(c) = container {
                p.container = c;
            }
            if let Some(c) = comm.filter(|c| !c.is_empty()) {
                p.comm = c;
            }
            if cmdline.is_some() {
                p.cmdline = cmdline;
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Time
    // ----------------------------------------------------------------------------------------

    /// Housekeeping at `now_ns` (CLOCK_MONOTONIC): prune exited processes past their retention,
    /// forget old tombstones, expire timewait entries.
    pub fn tick(&mut self, now_ns: u64) {
        let retention = self.cfg.exited_retention_ns;
        let expired: Vec<ProcessKey> = self
            .processes
            .values()
            .filter(|p| p.exited_ns.is_some_and(|t| now_ns.saturating_sub(t) >= retention))
            .map(|p| p.key)
            .collect();
        for key in expired {
            self.prune(key, now_ns);
        }
        self.tombstones.retain(|_, t| now_ns.saturating_sub(t.closed_ns) < TOMBSTONE_TTL_NS);
        self.pruned.retain(|_, t| now_ns.saturating_sub(*t) < PRUNED_TTL_NS);
        self.recently_closed.retain(|_, t| now_ns.saturating_sub(*t) < RECENTLY_CLOSED_TTL_NS);
        self.timewait.expire(now_ns);
        let late: Vec<Unreported> = self
            .unreported
            .extract_if(|_, u| now_ns.saturating_sub(u.closed_ns) >= UNREPORTED_TTL_NS)
            .map(|(_, u)| u)
            .collect();
        for u in late {
            let io = u.rec.io;
            self.stats.closes_without_final_counters += 1;
            self.report_unreported(u, io);
        }
        self.evaluate_close_wait(now_ns);
    }

    pub fn close_wait_config(&self) -> &CloseWaitConfig {
        &self.cfg.close_wait
    }

    /// Sample every peer's CLOSE_WAIT count and start or clear leak findings.
    fn evaluate_close_wait(&mut self, now_ns: u64) {
        let cfg = self.cfg.close_wait.clone();
        let mut leaking: Vec<(PeerKey, String, CloseWaitStatus)> = Vec::new();
        for p in self.processes.values_mut() {
            for (direction, peers) in [(Direction::Outbound, &mut p.outbound), (Direction::Inbound, &mut p.inbound)] {
                for (peer, stats) in peers.iter_mut() {
                    if stats.close_wait.is_idle() {
                        continue;
                    }
                    stats.close_wait.sample(now_ns, &cfg);
                    let status = stats.close_wait.status(now_ns, &cfg);
                    if status.verdict == Verdict::Leak {
                        leaking.push(((p.key, direction, *peer), p.comm.clone(), status));
                    }
                }
            }
        }
        let now_leaking: HashSet<PeerKey> = leaking.iter().map(|(k, _, _)| *k).collect();
        let cleared: Vec<PeerKey> = self.findings.keys().filter(|k| !now_leaking.contains(*k)).copied().collect();
        for key in cleared {
            let since_ns = self.findings.remove(&key).unwrap_or(now_ns);
            let comm = self.processes.get(&key.0.pid).map(|p| p.comm.clone()).unwrap_or_default();
            let status = self.peer_close_wait(&key, now_ns).unwrap_or(CloseWaitStatus {
                count: 0,
                oldest_ns: 0,
                growth_per_minute: 0.0,
                verdict: Verdict::None,
            });
            self.alert_changes.push(AlertChange {
                started: false,
                finding: Finding { process: key.0, comm, direction: key.1, peer: key.2, status, since_ns },
            });
        }
        for (key, comm, status) in leaking {
            if let hashbrown::hash_map::Entry::Vacant(e) = self.findings.entry(key) {
                e.insert(now_ns);
                self.alert_changes.push(AlertChange {
                    started: true,
                    finding: Finding { process: key.0, comm, direction: key.1, peer: key.2, status, since_ns: now_ns },
                });
            }
        }
    }

    fn peer_close_wait(&self, key: &PeerKey, now_ns: u64) -> Option<CloseWaitStatus> {
        let p = self.processes.get(&key.0.pid).filter(|p| p.key == key.0)?;
        let peers = match key.1 {
            Direction::Outbound => &p.outbound,
            Direction::Inbound => &p.inbound,
        };
        Some(peers.get(&key.2)?.close_wait.status(now_ns, &self.cfg.close_wait))
    }

    /// The active CLOSE_WAIT leaks, oldest first.
    pub fn alerts(&self, now_ns: u64) -> Vec<Finding> {
        let mut v: Vec<Finding> = self
            .findings
            .iter()
            .filter_map(|(key, since_ns)| {
                let status = self.peer_close_wait(key, now_ns)?;
                let comm = self.processes.get(&key.0.pid)?.comm.clone();
                Some(Finding { process: key.0, comm, direction: key.1, peer: key.2, status, since_ns: *since_ns })
            })
            .collect();
        v.sort_by_key(|f| (f.since_ns, f.process.pid, f.peer));
        v
    }

    /// Findings that started or cleared since the last call.
    pub fn take_alert_changes(&mut self) -> Vec<AlertChange> {
        std::mem::take(&mut self.alert_changes)
    }

    /// A process is gone (found dead in /proc, or its pid was reused).
    pub fn mark_exited(&mut self, key: ProcessKey, now_ns: u64) {
        if let Some(p) = self.processes.get_mut(&key.pid).filter(|p| p.key.same_process(&key))
            && p.exited_ns.is_none()
        {
            p.exited_ns = Some(now_ns);
            self.exits.push(p.key);
        }
    }

    fn prune(&mut self, key: ProcessKey, now_ns: u64) {
        let Some(p) = self.processes.remove(&key.pid) else { return };
        let tls = &mut self.tls;
        self.sockets.retain(|sk, r| {
            let keep = r.owner != key;
            if !keep {
                tls.remove(sk);
            }
            keep
        });
        self.tombstones.retain(|_, t| t.owner != key);
        self.seeds.retain(|_, seed| seed.owner != key);
        let gone: Vec<PeerKey> = self.findings.keys().filter(|k| k.0 == key).copied().collect();
        for k in gone {
            let since_ns = self.findings.remove(&k).unwrap_or(now_ns);
            let status = CloseWaitStatus { count: 0, oldest_ns: 0, growth_per_minute: 0.0, verdict: Verdict::None };
            let finding = Finding { process: key, comm: p.comm.clone(), direction: k.1, peer: k.2, status, since_ns };
            self.alert_changes.push(AlertChange { started: false, finding });
        }
        self.timewait.remove_process(&key);
        self.pruned.insert(key, now_ns);
    }

    /// A listening endpoint in `netns` that a socket with local endpoint `local` belongs to:
    /// one of `prefer`'s first, then any process's (accepted sockets are often held by another
    /// process than the one that listens, e.g. forked workers).
    fn find_listener(&self, prefer: ProcessKey, netns: Option<u32>, local: Endpoint) -> Option<Endpoint> {
        if let Some(l) = self.processes.get(&prefer.pid).and_then(|p| p.listener_for(netns, local)) {
            return Some(l);
        }
        self.processes.values().find_map(|p| p.listener_for(netns, local))
    }

    /// Seed the table with the sockets found at start-up. Sockets already tracked through
    /// events, or seen closing without an owner, are skipped.
    pub fn seed(&mut self, sockets: &[SeedSocket], now_ns: u64) {
        let tracked: HashSet<Tuple> =
            self.sockets.values().map(|r| (r.netns.unwrap_or(0), r.local.0, r.remote.0)).collect();
        // Listeners first, so that accepted sockets find theirs.
        let mut ordered: Vec<&SeedSocket> = sockets.iter().filter(|s| s.state == TcpState::Listen).collect();
        ordered.extend(sockets.iter().filter(|s| s.state != TcpState::Listen));
        for s in ordered {
            let tuple = (s.netns, s.local.0, s.remote.0);
            if tracked.contains(&tuple) || self.recently_closed.contains_key(&tuple) || self.seeds.contains_key(&tuple)
            {
                continue;
            }
            let Some(key) = self.ensure_process(&s.owner, 0) else { continue };
            let listener = s.state == TcpState::Listen;
            let (direction, peer) = if listener {
                (Direction::Inbound, s.local.canonical())
            } else {
                match self.find_listener(key, Some(s.netns), s.local) {
                    Some(l) => (Direction::Inbound, l),
                    None => (Direction::Outbound, s.remote.canonical()),
                }
            };
            let process = self.processes.get_mut(&key.pid).expect("ensured");
            if listener {
                process.listeners.push((Some(s.netns), peer));
            }
            process.peers_mut(direction).entry(peer).or_default().add_live(s.state, Some(now_ns));
            self.seeds.insert(tuple, Seed { owner: key, direction, peer, listener, state: s.state, seeded_ns: now_ns });
        }
    }

    /// Turn the seed of this event's socket, if any, into a tracked socket.
    fn adopt_seed(&mut self, ev: &SocketEvent) -> bool {
        let tuple = (ev.netns.unwrap_or(0), ev.local.0, ev.remote.0);
        let Some(seed) = self.seeds.remove(&tuple) else { return false };
        let Some(p) = self.processes.get_mut(&seed.owner.pid).filter(|p| p.key == seed.owner) else { return false };
        if let Some(stats) = p.peers_mut(seed.direction).get_mut(&seed.peer) {
            stats.remove_live(seed.state, Some(seed.seeded_ns));
        }
        use TcpState::*;
        let rec = SocketRec {
            cookie: ev.cookie,
            owner: seed.owner,
            direction: seed.direction,
            peer: seed.peer,
            listener: seed.listener,
            local: ev.local,
            remote: ev.remote,
            state: None,
            close_wait_since: None,
            netns: ev.netns,
            established_ns: None,
            connected: !matches!(seed.state, SynSent | SynRecv | Listen),
            reset_received: false,
            close_counted: matches!(seed.state, FinWait1 | FinWait2 | Closing | CloseWait | LastAck),
            accept_counted: true,
            io: IoCounts::default(),
            requests_counted: 0,
            handshake_runs: 0,
            inherited_from: None,
        };
        self.sockets.insert(ev.sk, rec);
        true
    }

    /// I/O counters of live sockets read from the kernel's map (the periodic flush for
    /// long-lived connections; closing sockets hand theirs over with their CLOSE).
    ///
    /// An address with more than one record in the kernel's table is skipped: the socket it
    /// names now has one, the others are left by sockets whose close the kernel never reported
    /// (see `Stats::closes_not_seen`), and nothing here tells them apart. Applied in turn, they
    /// would add each other's counters to the live socket at every flush; skipped, the live
    /// socket's counters arrive with its close.
    pub fn flush_io(&mut self, counters: &[(u64, IoCounts)]) {
        let mut seen: HashMap<u64, u32> = HashMap::with_capacity(counters.len());
        for (sk, _) in counters {
            *seen.entry(*sk).or_default() += 1;
        }
        for (sk, io) in counters {
            if seen[sk] > 1 {
                continue;
            }
            let Some(rec) = self.sockets.get_mut(sk) else { continue };
            if *io == rec.io {
                continue;
            }
            let (requests, delta) = rec.io_update(io);
            let (owner, direction, peer) = (rec.owner, rec.direction, rec.peer);
            if let Some(stats) = self.peer_mut(owner, direction, peer) {
                stats.add_io(requests, &delta);
            }
        }
    }

    pub fn reconcile_time_wait(&mut self, netns: u32, dump_started_ns: u64, kernel: &[KernelTimeWait], now_ns: u64) {
        self.timewait.reconcile(netns, dump_started_ns, kernel, now_ns);
    }

    // ----------------------------------------------------------------------------------------
    // Events
    // ----------------------------------------------------------------------------------------

    pub fn apply(&mut self, ev: &SocketEvent) {
        self.stats.events[ev.kind.index()] += 1;
        match ev.kind {
            EventKind::State { old, new } => self.on_state(ev, old, new),
            EventKind::Claim => self.on_claim(ev),
            EventKind::ErrorReport => self.on_error_report(ev),
            EventKind::ResetSent => self.on_reset(ev, false),
            EventKind::ResetReceived => self.on_reset(ev, true),
        }
    }

    /// The process an event names, created on first sight. None for pruned processes and for
    /// late events of a previous holder of a reused pid.
    fn ensure_process(&mut self, owner: &Owner, now_ns: u64) -> Option<ProcessKey> {
        if self.pruned.contains_key(&owner.key) {
            self.stats.events_after_prune += 1;
            return None;
        }
        if let Some(p) = self.processes.get_mut(&owner.key.pid) {
            if p.key.same_process(&owner.key) {
                if p.key.start_ns == 0 {
                    p.key.start_ns = owner.key.start_ns;
                }
                return Some(p.key);
            }
            if owner.key.start_ns < p.key.start_ns {
                // An older process that had this pid.
                self.stats.events_after_prune += 1;
                return None;
            }
            // The pid was reused: the previous process is gone.
            let old = p.key;
            self.prune(old, now_ns);
        }
        self.processes.insert(owner.key.pid, Process::new(owner.key, owner.comm.to_string()));
        self.new_processes.push(owner.key);
        Some(owner.key)
    }

    fn peer_mut(&mut self, owner: ProcessKey, direction: Direction, peer: Endpoint) -> Option<&mut PeerStats> {
        let p = self.processes.get_mut(&owner.pid).filter(|p| p.key == owner)?;
        Some(p.peers_mut(direction).entry(peer).or_default())
    }

    /// Charge a live socket to another process (it was accepted, or the kernel says so).
    fn move_socket(&mut self, sk: u64, to: ProcessKey) {
        let Some(rec) = self.sockets.get_mut(&sk) else { return };
        let from = rec.owner;
        if from == to {
            return;
        }
        rec.owner = to;
        let (direction, peer, state, since) = (rec.direction, rec.peer, rec.state, rec.close_wait_since);
        if let Some(p) = self.processes.get_mut(&from.pid).filter(|p| p.key == from)
            && let (Some(s), Some(stats)) = (state, p.peers_mut(direction).get_mut(&peer))
        {
            stats.remove_live(s, since);
        }
        if let Some(p) = self.processes.get_mut(&to.pid).filter(|p| p.key == to) {
            let stats = p.peers_mut(direction).entry(peer).or_default();
            if let Some(s) = state {
                stats.add_live(s, since);
            }
        }
    }

    /// Take a socket out of the live counts (it closed, or its record is stale).
    fn drop_socket(&mut self, sk: u64) -> Option<SocketRec> {
        self.tls.remove(&sk);
        let rec = self.sockets.remove(&sk)?;
        self.uncharge(&rec);
        Some(rec)
    }

    /// Take a socket that left the table out of its process's figures.
    fn uncharge(&mut self, rec: &SocketRec) {
        if !rec.listener && rec.state.is_none() {
            return;
        }
        if let Some(p) = self.processes.get_mut(&rec.owner.pid).filter(|p| p.key == rec.owner) {
            if rec.listener
                && let Some(i) = p.listeners.iter().position(|(_, l)| *l == rec.peer)
            {
                p.listeners.swap_remove(i);
            }
            if let (Some(s), Some(stats)) = (rec.state, p.peers_mut(rec.direction).get_mut(&rec.peer)) {
                stats.remove_live(s, rec.close_wait_since);
            }
        }
    }

    fn on_state(&mut self, ev: &SocketEvent, old: TcpState, new: TcpState) {
        use TcpState::*;
        let creation = ev.first || matches!((old, new), (Close, SynSent) | (_, Listen) | (Listen, SynRecv));
        if creation {
            // A record for this address is stale: the kernel reused the memory of a socket
            // whose end we did not see.
            self.set_aside_unreported(ev.sk, ev.ts_ns);
        }
        let tracked = self.sockets.contains_key(&ev.sk)
            || (!creation && ev.has_tuple && self.adopt_seed(ev))
            || self.start_tracking(ev, old, new, creation);
        if !tracked {
            return;
        }
        // The kernel's owner record is authoritative (it follows accept()), unless it still names
        // the exited process the socket was taken over from.
        if let Some(owner) = &ev.owner {
            let rec = &self.sockets[&ev.sk];
            if owner.key != rec.owner
                && rec.inherited_from != Some(owner.key)
                && let Some(key) = self.ensure_process(owner, ev.ts_ns)
            {
                self.move_socket(ev.sk, key);
            }
        }

        let rec = self.sockets.get_mut(&ev.sk).expect("tracked above");
        if ev.cookie != 0 {
            rec.cookie = ev.cookie;
        }
        if ev.has_tuple {
            // Complete now if it was not at creation (an accepted connection's peer, a failed
            // connect's port): its close comes without addresses.
            (rec.local, rec.remote) = (ev.local, ev.remote);
        } else if ev.local_port != 0 {
            // A connect's port, which its first record could not have.
            rec.local.0.set_port(ev.local_port);
        }
        let (prev, prev_since) = (rec.state, rec.close_wait_since);
        rec.state = (new != Close).then_some(new);
        rec.close_wait_since = (new == CloseWait).then_some(ev.ts_ns);
        if new == Established {
            rec.connected = true;
            rec.established_ns.get_or_insert(ev.ts_ns);
        }
        let mut counted_open = false;
        let mut close = None;
        match (old, new) {
            (SynSent, Established) if rec.direction == Direction::Outbound => counted_open = true,
            (Established | SynRecv, FinWait1) if !rec.close_counted => {
                rec.close_counted = true;
                close = Some(true);
            }
            (Established, CloseWait) if !rec.close_counted => {
                rec.close_counted = true;
                close = Some(false);
            }
            _ => {}
        }
        let (owner, direction, peer, state, since) =
            (rec.owner, rec.direction, rec.peer, rec.state, rec.close_wait_since);
        let Some(stats) = self.peer_mut(owner, direction, peer) else { return };
        if let Some(s) = prev {
            stats.remove_live(s, prev_since);
        }
        if let Some(s) = state {
            stats.add_live(s, since);
        }
        if counted_open {
            stats.count_connection(ev.ts_ns);
        }
        match close {
            Some(true) => stats.closed_by_local += 1,
            Some(false) => stats.closed_by_peer += 1,
            None => {}
        }
        if new == Close {
            let rec = self.sockets.remove(&ev.sk).expect("tracked above");
            self.on_close(ev, old, rec);
        }
    }

    /// Start tracking a socket seen for the first time. Returns false if it cannot be
    /// attributed.
    fn start_tracking(&mut self, ev: &SocketEvent, old: TcpState, new: TcpState, creation: bool) -> bool {
        use TcpState::*;
        if !ev.has_tuple {
            // A compact transition of a socket whose first record was lost.
            self.stats.unattributed_events += 1;
            return false;
        }
        let Some(owner) = &ev.owner else {
            self.stats.unattributed_events += 1;
            if new == Close {
                self.recently_closed.insert((ev.netns.unwrap_or(0), ev.local.0, ev.remote.0), ev.ts_ns);
            }
            return false;
        };
        let Some(mut key) = self.ensure_process(owner, ev.ts_ns) else { return false };
        let mut inherited_from = None;
        if new == Close {
            // The end of a socket we never saw: only a failed connect is worth counting.
            if old == SynSent
                && let Some(stats) = self.peer_mut(key, Direction::Outbound, ev.remote.canonical())
            {
                stats.connect_failures.add(FailureReason::of_connect(ev.error, ev.local.port()));
            }
            return false;
        }
        let (direction, peer, listener) = match (old, new) {
            (Close, SynSent) => (Direction::Outbound, ev.remote.canonical(), false),
            (_, Listen) => (Direction::Inbound, ev.local.canonical(), true),
            // An accepted connection, at its creation or (as the kernel reports it) at the end of
            // SYN_RECV.
            (Listen, SynRecv) | (SynRecv, _) if creation => {
                if let Some((heir, l)) = self.heir_of_listener(key, ev.netns, ev.local) {
                    inherited_from = Some(key);
                    key = heir;
                    (Direction::Inbound, l, false)
                } else {
                    let l = self.find_listener(key, ev.netns, ev.local);
                    (Direction::Inbound, l.unwrap_or(ev.local.canonical()), false)
                }
            }
            // Adopted in mid-life (it existed before the daemon started tracking it).
            _ => match self.find_listener(key, ev.netns, ev.local) {
                Some(l) => (Direction::Inbound, l, false),
                None => (Direction::Outbound, ev.remote.canonical(), false),
            },
        };
        let connected = !creation && !matches!(old, SynSent | SynRecv);
        let rec = SocketRec {
            cookie: ev.cookie,
            owner: key,
            direction,
            peer,
            listener,
            local: ev.local,
            remote: ev.remote,
            state: None,
            close_wait_since: None,
            netns: ev.netns,
            established_ns: None,
            connected,
            reset_received: false,
            close_counted: !creation && matches!(old, FinWait1 | FinWait2 | Closing | CloseWait | LastAck),
            // An adopted inbound socket was accepted before we looked.
            accept_counted: !creation,
            io: IoCounts::default(),
            requests_counted: 0,
            handshake_runs: 0,
            inherited_from,
        };
        let process = self.processes.get_mut(&key.pid).expect("ensured");
        if listener {
            process.listeners.push((ev.netns, peer));
        }
        process.peers_mut(direction).entry(peer).or_default();
        self.sockets.insert(ev.sk, rec);
        true
    }

    fn on_close(&mut self, ev: &SocketEvent, old: TcpState, rec: SocketRec) {
        let handshake = self.tls.remove(&ev.sk).and_then(|mut c| c.close(ev.ts_ns));
        let (owner, direction, peer) = (rec.owner, rec.direction, rec.peer);
        self.report_close(ev, old, rec, handshake);
        self.tombstones.insert(ev.sk, Tombstone { owner, direction, peer, closed_ns: ev.ts_ns });
    }

    /// A connection ended (`ev` is its close, `old` the state it left): its figures.
    fn report_close(&mut self, ev: &SocketEvent, old: TcpState, mut rec: SocketRec, handshake: Option<tls::Outcome>) {
        use TcpState::*;
        let cfg_peer = rec.peer;
        {
            let Some(stats) = self.peer_mut(rec.owner, rec.direction, cfg_peer) else { return };
            if let Some(o) = handshake {
                stats.tls.get_or_insert_default().add(&o);
            }
            // The kernel handed the socket's final I/O counters over with its close.
            let (requests, delta) = rec.io_update(&ev.io);
            stats.add_io(requests, &delta);
            if rec.established_ns.is_some() && !rec.listener {
                stats.requests_per_connection.observe(rec.requests_total(&ev.io));
            }
            match old {
                SynSent => stats.connect_failures.add(FailureReason::of_connect(ev.error, ev.local.port())),
                _ if rec.connected => {
                    if !rec.close_counted {
                        // Abortive close straight from a connected state.
                        if rec.reset_received || ev.error != 0 {
                            stats.closed_by_peer += 1;
                        } else {
                            stats.closed_by_local += 1;
                        }
                    }
                    if rec.direction == Direction::Inbound && !rec.listener && !rec.accept_counted {
                        // Never seen accepted: charged to whoever owned it when it closed.
                        stats.count_connection(rec.established_ns.unwrap_or(ev.ts_ns));
                    }
                    if let Some(t) = rec.established_ns {
                        stats.lifetimes.observe_ns(ev.ts_ns.saturating_sub(t));
                    }
                }
                _ => {}
            }
        }
        if matches!(old, FinWait2 | Closing) {
            let key = TwKey { netns: rec.netns.unwrap_or(0), local: rec.local.0, remote: rec.remote.0 };
            let owner = TwOwner { process: rec.owner, direction: rec.direction, peer: rec.peer };
            self.timewait.add(key, owner, ev.ts_ns);
        }
        self.uncharge(&rec);
    }

    // ----------------------------------------------------------------------------------------
    // Closes the kernel never reported
    // ----------------------------------------------------------------------------------------

    /// A new socket takes the address `sk` while a record of the previous one is still here: it
    /// closed without the kernel reporting it. Out of the live figures now; its connection is
    /// reported once the audit finds its slot (with its final counters), or after
    /// [`UNREPORTED_TTL_NS`].
    fn set_aside_unreported(&mut self, sk: u64, now_ns: u64) {
        let handshake = self.tls.get_mut(&sk).and_then(|c| c.close(now_ns));
        let Some(mut rec) = self.drop_socket(sk) else { return };
        self.stats.closes_not_seen += 1;
        // Out of the live counts already.
        let state = rec.state.take().unwrap_or(TcpState::Close);
        let u = Unreported { rec, state, closed_ns: now_ns, handshake };
        if u.rec.cookie == 0 || self.unreported.len() >= MAX_UNREPORTED {
            // No slot of the kernel's table will hand its counters over.
            self.stats.closes_without_final_counters += 1;
            let io = u.rec.io;
            self.report_unreported(u, io);
            return;
        }
        self.unreported.insert(u.rec.cookie, u);
    }

    /// Report the connection of a socket set aside, with `io` as its final counters.
    fn report_unreported(&mut self, u: Unreported, io: IoCounts) {
        let ev = closing_event(0, u.closed_ns, u.state, io);
        self.report_close(&ev, u.state, u.rec, u.handshake);
    }

    /// The audit of the kernel's socket table found the slot `stale` of a socket that is gone
    /// (the slot is freed): report its connection with the slot's counters, if the daemon still
    /// holds it (set aside, or still open as far as the kernel's records go). Returns whether
    /// it did.
    pub fn close_unreported(&mut self, stale: &StaleSlot, now_ns: u64) -> bool {
        let slot = &stale.slot;
        self.stats.stale_slots_freed += 1;
        // The state it closed from decides whether a TIME_WAIT is charged to its owner. In
        // TIME_WAIT, the kernel has it: it went through FIN_WAIT2 (or CLOSING). Missing from the
        // kernel's sockets, it left no timewait socket: none is charged (as from FIN_WAIT1).
        let last = |state: TcpState| match (stale.gone, state) {
            (Gone::TimeWait, TcpState::FinWait1) => TcpState::FinWait2,
            (Gone::Missing, TcpState::FinWait2 | TcpState::Closing) => TcpState::FinWait1,
            _ => state,
        };
        // When it closed: by what the audit knows (the start of its TIME_WAIT, the first dump that
        // missed it), else by now (or, set aside, by when a new socket took its address); not
        // before it was established.
        let closed_by = |by: u64, established: Option<u64>| {
            stale.closed_by_ns.map_or(by, |t| t.min(by)).max(established.unwrap_or(0))
        };
        if let Some(mut u) = self.unreported.remove(&slot.cookie) {
            u.state = last(u.state);
            u.closed_ns = closed_by(u.closed_ns, u.rec.established_ns);
            self.report_unreported(u, slot.io);
            return true;
        }
        let Some(rec) = self.sockets.get(&slot.sk).filter(|r| r.cookie == slot.cookie) else { return false };
        self.stats.closes_not_seen += 1;
        let old = last(rec.state.unwrap_or(TcpState::Close));
        let ts = closed_by(now_ns, rec.established_ns);
        self.on_state(&closing_event(slot.sk, ts, old, slot.io), old, TcpState::Close);
        true
    }

    /// What the daemon knows of the socket of a slot of the kernel's table (see
    /// `table_audit::Audit::plan`).
    pub fn slot_knowledge(&self, slot: &TableSlot) -> Known {
        use TcpState::*;
        if self.unreported.contains_key(&slot.cookie) {
            return Known::Replaced;
        }
        match self.sockets.get(&slot.sk).filter(|r| r.cookie == slot.cookie) {
            Some(r) if matches!(r.state, Some(FinWait1 | FinWait2 | Closing | LastAck)) => Known::Closing,
            Some(_) => Known::Open,
            None => Known::Unknown,
        }
    }

    /// Sockets set aside, waiting for the audit.
    pub fn unreported_closes(&self) -> usize {
        self.unreported.len()
    }

    /// The first bytes of a send or receive of a connection that may start with a TLS
    /// handshake.
    pub fn apply_tls(&mut self, chunk: &tls::Chunk) {
        self.stats.tls_chunks += 1;
        let Some(rec) = self.sockets.get_mut(&chunk.sk) else { return };
        let full = self.tls.len() >= MAX_TLS_CONNS;
        let conn = match self.tls.entry(chunk.sk) {
            hashbrown::hash_map::Entry::Occupied(e) => e.into_mut(),
            hashbrown::hash_map::Entry::Vacant(e) => {
                if full {
                    self.stats.tls_dropped += 1;
                    return;
                }
                e.insert(tls::Conn::default())
            }
        };
        let outcome = conn.feed(chunk);
        rec.handshake_runs = conn.handshake_runs();
        let (owner, direction, peer) = (rec.owner, rec.direction, rec.peer);
        if let Some(o) = outcome
            && let Some(stats) = self.peer_mut(owner, direction, peer)
        {
            stats.tls.get_or_insert_default().add(&o);
        }
    }

    /// A process started using a connection accepted from a listener: it owns it, and it is
    /// the one that accepted it.
    fn on_claim(&mut self, ev: &SocketEvent) {
        let Some(owner) = &ev.owner else { return };
        if !self.sockets.contains_key(&ev.sk) {
            self.stats.unattributed_events += 1;
            return;
        }
        let Some(key) = self.ensure_process(owner, ev.ts_ns) else { return };
        self.move_socket(ev.sk, key);
        let rec = self.sockets.get_mut(&ev.sk).expect("checked above");
        if rec.direction != Direction::Inbound || rec.listener || rec.accept_counted {
            return;
        }
        rec.accept_counted = true;
        let (owner, direction, peer) = (rec.owner, rec.direction, rec.peer);
        if let Some(stats) = self.peer_mut(owner, direction, peer) {
            stats.count_connection(ev.ts_ns);
        }
    }

    /// The bucket a socket event belongs to: its live record, its tombstone, or (for a socket we
    /// never tracked) the owner named by the kernel and the event's own addresses.
    fn bucket_of(&mut self, ev: &SocketEvent) -> Option<(ProcessKey, Direction, Endpoint)> {
        if let Some(r) = self.sockets.get(&ev.sk) {
            return Some((r.owner, r.direction, r.peer));
        }
        if let Some(t) = self.tombstones.get(&ev.sk) {
            return Some((t.owner, t.direction, t.peer));
        }
        let owner = ev.owner.as_ref()?;
        if ev.remote.port() == 0 {
            return None;
        }
        let key = self.ensure_process(owner, ev.ts_ns)?;
        Some(match self.find_listener(key, ev.netns, ev.local) {
            Some(l) => (key, Direction::Inbound, l),
            None => (key, Direction::Outbound, ev.remote.canonical()),
        })
    }

    fn on_error_report(&mut self, ev: &SocketEvent) {
        if ev.error == 0 {
            return;
        }
        let Some((owner, direction, peer)) = self.bucket_of(ev) else { return };
        if let Some(stats) = self.peer_mut(owner, direction, peer) {
            *stats.socket_errors.entry(ev.error).or_default() += 1;
        }
    }

    fn on_reset(&mut self, ev: &SocketEvent, received: bool) {
        if received && let Some(r) = self.sockets.get_mut(&ev.sk) {
            r.reset_received = true;
        }
        let Some((owner, direction, peer)) = self.bucket_of(ev) else { return };
        if let Some(stats) = self.peer_mut(owner, direction, peer) {
            if received {
                stats.resets_received += 1;
            } else {
                stats.resets_sent += 1;
            }
        }
    }
}

/// The close of socket `sk` at `ts_ns` from state `old`, with its final counters `io`, when the
/// kernel never reported it: as a compact record would have reported it.
fn closing_event(sk: u64, ts_ns: u64, old: TcpState, io: IoCounts) -> SocketEvent {
    SocketEvent { io, ..event::compact(ts_ns, sk, EventKind::State { old, new: TcpState::Close }) }
}

mod handover;
pub use handover::{HeldSocket, Inherited, ListenerMove, SocketId};

#[cfg(test)]
mod tests;
