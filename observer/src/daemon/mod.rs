//! The daemon: kernel events in, aggregation, background reconciliation, HTTP out.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::api::{self, AppState};
use crate::clock::monotonic_ns;
use crate::host::{cgroup, exits, holders, procfs, snapshot, sock_diag};
use crate::kernel::{Options, Probes};
use observer_core::aggregate::{Aggregator, AlertChange, Config, ListenerMove, SocketId};
use observer_core::closewait::CloseWaitConfig;
use observer_core::event;
use observer_core::event::Owner;
use observer_core::kernel_status::KernelStatus;
use observer_core::metrics;
use observer_core::model::ProcessKey;
use observer_core::table_audit::{self, Audit, Gone, StaleSlot};

pub struct DaemonOptions {
    pub listen: SocketAddr,
    pub exited_retention: Duration,
    pub ring_buffer_bytes: u32,
    pub kernel_log_level: u8,
    pub reconcile_interval: Duration,
    pub io_flush_interval: Duration,
    /// Recognise TLS handshakes.
    pub tls: bool,
    /// Attach the benchmark's calibration programs.
    pub bench_calibration: bool,
    /// Attach empty programs instead of observer's (the benchmark's floor).
    pub bench_floor: bool,
    /// Keep the socket table but queue no records (the benchmark's bound of the design).
    pub bench_table_only: bool,
    /// Write records to per-CPU regions nobody reads (the benchmark's bound of the reports).
    pub bench_region_records: bool,
    /// Let the benchmark detach and attach the kernel programs with SIGUSR1 and SIGUSR2.
    pub bench_toggle: bool,
    pub max_sockets: u32,
    pub close_wait: CloseWaitConfig,
    pub metrics_peers_per_process: usize,
}

/// Events applied per lock of the aggregation (bounds how long the API waits).
const BATCH: usize = 4096;

/// What wakes the background tasks before their next round.
#[derive(Clone, Default)]
struct Wake {
    /// The aggregation saw new processes: look them up in /proc now (one that has already exited,
    /// a launcher that forked a daemon, is found at once).
    new_processes: Arc<Notify>,
    /// Processes exited: look for the new holders of their sockets.
    exits: Arc<Notify>,
}

pub async fn run(opts: DaemonOptions) -> Result<()> {
    // Bind first: a busy port fails before anything is loaded into the kernel.
    let listener = TcpListener::bind(opts.listen).await.with_context(|| format!("cannot listen on {}", opts.listen))?;

    let mut probes = Probes::load(&Options {
        ring_buffer_bytes: opts.ring_buffer_bytes,
        kernel_log_level: opts.kernel_log_level,
        tls: opts.tls,
        bench_calibration: opts.bench_calibration,
        bench_floor: opts.bench_floor,
        bench_table_only: opts.bench_table_only,
        bench_region_records: opts.bench_region_records,
        max_sockets: opts.max_sockets,
    })?;
    let ring = probes.take_events()?;
    let logger = probes.take_logger();
    probes.features.process_exits = exits::supported();
    if probes.features.process_exits {
        exits::raise_fd_limit();
    }
    let features = probes.features.clone();
    log::info!("kernel programs attached; features: {features:?}");

    let agg = Arc::new(Mutex::new(Aggregator::new(Config {
        exited_retention_ns: opts.exited_retention.as_nanos() as u64,
        close_wait: opts.close_wait.clone(),
    })));
    // Sockets older than the daemon, attributed as `ss -tanp` would. Taken after the programs
    // are attached, so that nothing falls between the two.
    match tokio::task::spawn_blocking(snapshot::take).await? {
        Ok(seeds) => {
            let listeners = probes.seed_listeners(&seeds);
            agg.lock().expect("aggregator lock").seed(&seeds, monotonic_ns());
            log::info!("start-up snapshot: {} sockets, {listeners} listeners", seeds.len());
        }
        Err(e) => log::warn!("start-up snapshot failed, sockets older than the daemon are not attributed: {e:#}"),
    }
    let watch_exits = features.process_exits;
    let wake = Wake::default();
    let (handover_tx, handovers) = mpsc::channel(1);
    let kernel = Arc::new(Mutex::new(KernelStatus { features, ..KernelStatus::default() }));
    let healthy = Arc::new(AtomicBool::new(true));
    let probes = Arc::new(Mutex::new(probes));

    let mut tasks = tokio::task::JoinSet::new();
    {
        let (agg, healthy, probes) = (agg.clone(), healthy.clone(), probes.clone());
        let flush_every = opts.io_flush_interval;
        let new_processes = wake.new_processes.clone();
        tasks.spawn(async move {
            if let Err(e) = read_events(ring, agg, probes, flush_every, new_processes, handovers).await {
                log::error!("kernel event reader stopped: {e:#}");
            }
            healthy.store(false, Ordering::Relaxed);
        });
    }
    if let Some(logger) = logger {
        tasks.spawn(async move {
            // SAFETY: the logger owns its ring buffer fd and keeps it open while registered.
            let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }) else {
                return;
            };
            loop {
                let Ok(mut guard) = fd.readable_mut().await else { return };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
    }
    tasks.spawn(housekeeping(agg.clone(), watch_exits, wake.clone()));
    tasks.spawn(hand_over_exits(agg.clone(), probes.clone(), wake.exits.clone(), handover_tx));
    tasks.spawn(reconcile_time_wait(agg.clone(), opts.reconcile_interval));
    if !(opts.bench_floor || opts.bench_table_only || opts.bench_region_records) {
        tasks.spawn(audit_socket_table(agg.clone(), probes.clone()));
    }
    tasks.spawn(refresh_kernel_status(probes.clone(), kernel.clone()));
    if opts.bench_toggle {
        tasks.spawn(bench_toggle(probes.clone()));
    }

    let registry =
        Arc::new(metrics::registry(agg.clone(), kernel.clone(), opts.metrics_peers_per_process, monotonic_ns));
    let app = api::router(AppState { agg, kernel, registry, healthy });
    log::info!("serving the API on http://{}", opts.listen);
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.context("HTTP server")?;

    tasks.shutdown().await;
    // Last reference: dropping it detaches every program and frees the maps.
    drop(probes);
    log::info!("detached from the kernel; bye");
    Ok(())
}

/// `--bench-toggle`: SIGUSR1 detaches the kernel programs, SIGUSR2 attaches them again, so that
/// `cargo xtask bench` can measure the same daemon with and without them in quick alternation.
async fn bench_toggle(probes: Arc<Mutex<Probes>>) {
    let (Ok(mut off), Ok(mut on)) = (signal(SignalKind::user_defined1()), signal(SignalKind::user_defined2())) else {
        log::error!("bench toggle: cannot handle SIGUSR1 and SIGUSR2");
        return;
    };
    loop {
        let attach = tokio::select! {
            _ = off.recv() => false,
            _ = on.recv() => true,
        };
        match probes.lock().expect("probes lock").set_attached(attach) {
            Ok(()) => log::warn!("bench toggle: kernel programs {}", if attach { "attached" } else { "detached" }),
            Err(e) => log::error!("bench toggle: {e:#}"),
        }
    }
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = int.recv() => log::info!("SIGINT: shutting down"),
    }
}

/// How often the ring buffer is drained when the kernel does not wake us up (it only does past
/// a fill threshold, see the kernel programs' `emit`).
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Drains the ring buffer, and every `flush_every` reads the I/O counters of open connections
/// (closing sockets hand theirs over with their CLOSE). Both in one task, so that a flush is
/// applied after every record queued before its counters were read: the records of a
/// connection's TLS handshake say how many of its exchanges were not requests.
async fn read_events(
    ring: RingBuf<MapData>,
    agg: Arc<Mutex<Aggregator>>,
    probes: Arc<Mutex<Probes>>,
    flush_every: Duration,
    new_processes: Arc<Notify>,
    mut handovers: mpsc::Receiver<Handover>,
) -> Result<()> {
    let flush_enabled = probes.lock().expect("probes lock").features.requests;
    // SAFETY: the ring buffer owns its map fd and keeps it open while registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer with the reactor: {e}"))?;
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush_tick = tokio::time::interval(flush_every);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &agg, &new_processes);
                guard.clear_ready();
            }
            _ = tick.tick() => drain(fd.get_mut(), &agg, &new_processes),
            _ = flush_tick.tick(), if flush_enabled => flush(&probes, fd.get_mut(), &agg, &new_processes).await,
            Some(job) = handovers.recv() => {
                // What the sockets carried until now stays with the process that exited.
                if flush_enabled {
                    flush(&probes, fd.get_mut(), &agg, &new_processes).await;
                }
                let now = monotonic_ns();
                let mut a = agg.lock().expect("aggregator lock");
                let moves = job.found.iter().map(|(from, found)| a.hand_over(*from, found, now)).collect();
                let _ = job.done.send(moves);
            }
        }
    }
}

/// Read the I/O counters of open connections and apply them, after every record queued before.
async fn flush(probes: &Arc<Mutex<Probes>>, ring: &mut RingBuf<MapData>, agg: &Mutex<Aggregator>, new: &Notify) {
    let p = probes.clone();
    match tokio::task::spawn_blocking(move || p.lock().expect("probes lock").io_counters()).await {
        Ok(Ok(counters)) => {
            drain(ring, agg, new);
            agg.lock().expect("aggregator lock").flush_io(&counters);
        }
        Ok(Err(e)) => log::warn!("reading per-socket I/O counters: {e:#}"),
        Err(_) => {}
    }
}

/// Sockets of exited processes found held by others, to hand over (in the event reader's task:
/// their counters are read first, so that what they carried until now stays with the exited
/// process). Answered with the listeners that changed hands, per exited process.
struct Handover {
    found: Vec<(ProcessKey, Vec<(SocketId, Owner)>)>,
    done: oneshot::Sender<Vec<Vec<ListenerMove>>>,
}

/// Apply every record in the ring buffer, in batches so that the API never waits long; wake
/// `new_processes` if they named processes not seen before.
fn drain(ring: &mut RingBuf<MapData>, agg: &Mutex<Aggregator>, new_processes: &Notify) {
    loop {
        let mut n = 0;
        {
            let mut agg = agg.lock().expect("aggregator lock");

            while n < BATCH {
                let Some(item) = ring.next() else { break };
                match event::decode_record(&item) {
                    Ok(event::Record::Socket(ev)) => agg.apply(&ev),
                    Ok(event::Record::Tls(chunk)) => agg.apply_tls(&chunk),
                    Err(e) => {
                        agg.stats.decode_errors += 1;
                        log::debug!("undecodable record: {e}");
                    }
                }
                n += 1;
            }
            if agg.has_new_processes() {
                new_processes.notify_one();
            }
        }
        if n < BATCH {
            return;
        }
    }
}

/// Every second: prune and expire; read /proc for new processes and watch them for their exit
/// (pidfds), at once when the aggregation sees new ones; every 5 s, look for exits among the
/// processes no pidfd watches.
async fn housekeeping(agg: Arc<Mutex<Aggregator>>, watch_exits: bool, wake: Wake) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0u64;
    // The live processes whose exit no pidfd watches (all of them without pidfds).
    let mut polled: HashSet<ProcessKey> = HashSet::new();
    loop {
        let full = tokio::select! {
            _ = interval.tick() => true,
            _ = wake.new_processes.notified() => false,
        };
        let new = {
            let mut a = agg.lock().expect("aggregator lock");
            if full {
                a.tick(monotonic_ns());
                log_alert_changes(&a.take_alert_changes());
            }
            a.take_new_processes()
        };
        let mut dead = Vec::new();
        if full {
            round += 1;
            if round.is_multiple_of(5) {
                polled.retain(|k| {
                    let alive = procfs::is_alive(k);
                    if !alive {
                        dead.push(*k);
                    }
                    alive
                });
            }
        }
        let mut info = Vec::with_capacity(new.len());
        for k in new {
            let alive = if watch_exits { watch(&agg, k, &wake.exits) } else { None };
            let alive = alive.unwrap_or_else(|| {
                let alive = procfs::is_alive(&k);
                if alive {
                    polled.insert(k);
                }
                alive
            });
            if alive {
                info.push((k, procfs::comm(k.pid), procfs::cmdline(k.pid), cgroup::read(k.pid)));
            } else {
                dead.push(k);
            }
        }
        if info.is_empty() && dead.is_empty() {
            continue;
        }
        let now = monotonic_ns();
        let mut a = agg.lock().expect("aggregator lock");
        for (k, comm, cmdline, container) in info {
            a.set_process_info(k, comm, cmdline, container);
        }
        if !dead.is_empty() {
            for k in dead {
                a.mark_exited(k, now);
            }
            wake.exits.notify_one();
        }
    }
}

/// Watch `k` for its exit through a pidfd: whether it is alive, None if no pidfd can watch it.
fn watch(agg: &Arc<Mutex<Aggregator>>, k: ProcessKey, exits: &Arc<Notify>) -> Option<bool> {
    match exits::open(&k) {
        Ok(Some(fd)) => {
            tokio::spawn(watch_exit(agg.clone(), k, fd, exits.clone()));
            Some(true)
        }
        Ok(None) => Some(false),
        Err(e) => {
            log::debug!("pid {}: no pidfd ({e}), its exit is found by polling /proc", k.pid);
            None
        }
    }
}

/// Mark `key` exited when its pidfd says so.
async fn watch_exit(agg: Arc<Mutex<Aggregator>>, key: ProcessKey, fd: std::os::fd::OwnedFd, exits: Arc<Notify>) {
    if let Err(e) = exits::wait(fd).await {
        log::debug!("pid {}: cannot wait on its pidfd ({e}), its exit is found by polling /proc", key.pid);
        while procfs::is_alive(&key) {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
    agg.lock().expect("aggregator lock").mark_exited(key, monotonic_ns());
    exits.notify_one();
}

/// How long after an exit its heirs are looked for: the closes of the sockets it held reach the
/// ring buffer as it exits, and are applied within a few drains.
const HANDOVER_SETTLE: Duration = Duration::from_millis(100);
/// The longest one search for heirs may take (a /proc scan and a socket dump per namespace).
const HANDOVER_BUDGET: Duration = Duration::from_secs(2);

/// When processes charged with live sockets exit, find who holds those sockets now and charge
/// them to that process (see `aggregate::handover` and `holders`); tell the kernel's listener
/// map about the listeners that changed hands.
async fn hand_over_exits(
    agg: Arc<Mutex<Aggregator>>,
    probes: Arc<Mutex<Probes>>,
    exits: Arc<Notify>,
    reader: mpsc::Sender<Handover>,
) {
    loop {
        exits.notified().await;
        tokio::time::sleep(HANDOVER_SETTLE).await;
        let (keys, wanted) = {
            let mut a = agg.lock().expect("aggregator lock");
            let mut keys = Vec::new();
            let mut wanted = Vec::new();
            for k in a.take_exits() {
                for h in a.held_sockets(k) {
                    keys.push(k);
                    wanted.push(h);
                }
            }
            (keys, wanted)
        };
        if wanted.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let Ok((wanted, found)) = tokio::task::spawn_blocking(move || {
            let found = holders::find(&wanted, started + HANDOVER_BUDGET);
            (wanted, found)
        })
        .await
        else {
            continue;
        };
        let mut by_exit: Vec<(ProcessKey, Vec<(SocketId, Owner)>)> = Vec::new();
        for ((k, w), f) in keys.into_iter().zip(&wanted).zip(found) {
            let Some(owner) = f else { continue };
            match by_exit.iter_mut().find(|(from, _)| *from == k) {
                Some((_, v)) => v.push((w.id, owner)),
                None => by_exit.push((k, vec![(w.id, owner)])),
            }
        }
        if by_exit.is_empty() {
            log::debug!("{} live sockets of exited processes: nobody holds them", wanted.len());
            continue;
        }
        let (done, moved) = oneshot::channel();
        if reader.send(Handover { found: by_exit.clone(), done }).await.is_err() {
            return;
        }
        let Ok(moves) = moved.await else { return };
        let mut p = probes.lock().expect("probes lock");
        for ((from, found), moves) in by_exit.iter().zip(moves) {
            for m in &moves {
                if !p.reassign_listener(m) {
                    log::warn!("the kernel's listener map did not take the new owner of {}", m.local);
                }
            }
            let mut heirs: Vec<u32> = found.iter().map(|(_, o)| o.key.pid).collect();
            heirs.sort_unstable();
            heirs.dedup();
            log::info!(
                "pid {} exited; {} of its live sockets ({} listening) are held by pid {heirs:?} now, and charged there",
                from.pid,
                found.len(),
                moves.len(),
            );
        }
        log::debug!("new holders of {} sockets of exited processes found in {:?}", wanted.len(), started.elapsed());
    }
}

/// One warning line when a CLOSE_WAIT leak starts and one when it clears.
fn log_alert_changes(changes: &[AlertChange]) {
    for c in changes {
        let f = &c.finding;
        if c.started {
            log::warn!(
                "CLOSE_WAIT leak: pid {} ({}) {} {}: {} sockets in CLOSE_WAIT, oldest {:.0} s, {:+.1} per minute",
                f.process.pid,
                f.comm,
                f.direction.name(),
                f.peer,
                f.status.count,
                f.status.oldest_ns as f64 / 1e9,
                f.status.growth_per_minute
            );
        } else {
            log::warn!(
                "CLOSE_WAIT leak cleared: pid {} ({}) {} {}: {} sockets in CLOSE_WAIT now",
                f.process.pid,
                f.comm,
                f.direction.name(),
                f.peer,
                f.status.count
            );
        }
    }
}

/// Match derived TIME_WAIT entries with the kernel's table in every namespace that has some.
/// A pass of TIME_WAIT reconciliation may take at most this share of the time between passes:
/// with a large kernel table (tens of thousands of entries under a connection-per-request load),
/// passes space out instead of taking a CPU.
const RECONCILE_DUTY: u32 = 100;

async fn reconcile_time_wait(agg: Arc<Mutex<Aggregator>>, every: Duration) {
    let own = procfs::own_netns_inode().unwrap_or(0);
    let mut pause = every;
    loop {
        tokio::time::sleep(pause).await;
        let pass = std::time::Instant::now();
        let namespaces = agg.lock().expect("aggregator lock").timewait().namespaces();
        for (netns, owners) in namespaces {
            let started = monotonic_ns();
            let dump = tokio::task::spawn_blocking(move || {
                if netns == 0 || netns == own {
                    return sock_diag::dump_timewait(None);
                }
                // Enter the namespace through a live process that is in it.
                let pid = owners
                    .iter()
                    .map(|k| k.pid)
                    .find(|pid| procfs::netns_inode(*pid) == Some(netns))
                    .ok_or_else(|| anyhow::anyhow!("no live process left in netns {netns}"))?;
                sock_diag::dump_timewait(Some(std::path::Path::new(&format!("/proc/{pid}/ns/net"))))
            })
            .await;
            match dump {
                Ok(Ok(kernel)) => {
                    agg.lock().expect("aggregator lock").reconcile_time_wait(netns, started, &kernel, monotonic_ns());
                }
                Ok(Err(e)) => log::debug!("TIME_WAIT reconciliation of netns {netns} skipped: {e:#}"),
                Err(e) => log::warn!("TIME_WAIT reconciliation task failed: {e}"),
            }
        }
        pause = every.max(pass.elapsed() * RECONCILE_DUTY);
    }
}

/// How often the kernel's socket table is audited against the kernel's own list of sockets (at
/// most: like TIME_WAIT reconciliation, passes space out over a large table).
const AUDIT_INTERVAL: Duration = Duration::from_secs(5);

/// Find the slots of the kernel's socket table whose socket is gone although the kernel never
/// reported its close, free them, and report their connections (see `table_audit`).
async fn audit_socket_table(agg: Arc<Mutex<Aggregator>>, probes: Arc<Mutex<Probes>>) {
    let own = procfs::own_netns_inode().unwrap_or(0);
    let mut audit = Audit::default();
    let mut pause = AUDIT_INTERVAL;
    loop {
        tokio::time::sleep(pause).await;
        let pass = std::time::Instant::now();
        let p = probes.clone();
        // Read before any dump starts: a socket in the table then is in every dump unless gone.
        let Ok(slots) = tokio::task::spawn_blocking(move || p.lock().expect("probes lock").table_slots()).await else {
            continue;
        };
        // A few thousand lookups per lock: the API never waits long.
        let mut known = Vec::with_capacity(slots.len());
        for chunk in slots.chunks(BATCH) {
            let a = agg.lock().expect("aggregator lock");
            known.extend(chunk.iter().map(|s| a.slot_knowledge(s)));
        }
        let plan = audit.plan(&slots, &known);
        let mut kernel = HashMap::new();
        for (netns, pids) in table_audit::namespaces(&plan.suspects) {
            if netns == 0 {
                // Unknown namespace: left alone.
                continue;
            }
            let all_states = plan.all_states;
            let dump = tokio::task::spawn_blocking(move || {
                if netns == own {
                    return sock_diag::dump_cookies(None, all_states);
                }
                let path = procfs::netns_path(netns, &pids)
                    .ok_or_else(|| anyhow::anyhow!("nothing left in netns {netns} to enter it through"))?;
                sock_diag::dump_cookies(Some(&path), all_states)
            })
            .await;
            match dump {
                Ok(Ok(cookies)) => {
                    kernel.insert(netns, cookies);
                }
                Ok(Err(e)) => log::debug!("socket table audit of netns {netns} skipped: {e:#}"),
                Err(e) => log::warn!("socket table audit task failed: {e}"),
            }
        }
        let mut stale = audit.pass(&plan.suspects, &kernel);
        stale.extend(plan.replaced.iter().map(|s| StaleSlot::new(*s, Gone::Replaced)));
        log::debug!(
            "socket table audit: {} slots, {} suspects in {} namespaces (all states: {}), {} stale, {} missing from one dump, in {:?}",
            slots.len(),
            plan.suspects.len(),
            kernel.len(),
            plan.all_states,
            stale.len(),
            audit.missing_once(),
            pass.elapsed()
        );
        agg.lock().expect("aggregator lock").stats.table_audits += 1;
        if !stale.is_empty() {
            let p = probes.clone();
            let freed = tokio::task::spawn_blocking(move || {
                let p = p.lock().expect("probes lock");
                stale.into_iter().filter(|s| p.free_slot(s.slot.index, s.slot.cookie)).collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            // None freed: the kernel freed them meanwhile (it reported their closes after all).
            if !freed.is_empty() {
                let now = monotonic_ns();
                let mut a = agg.lock().expect("aggregator lock");
                let reported = freed.iter().filter(|s| a.close_unreported(s, now)).count();
                let gone = |g: Gone| freed.iter().filter(|s| s.gone == g).count();
                log::info!(
                    "socket table audit: freed {} slots of sockets whose close the kernel never reported ({} replaced by a new socket, {} in TIME_WAIT, {} gone; {reported} connections reported)",
                    freed.len(),
                    gone(Gone::Replaced),
                    gone(Gone::TimeWait),
                    gone(Gone::Missing),
                );
            }
        }
        pause = AUDIT_INTERVAL.max(pass.elapsed() * RECONCILE_DUTY);
    }
}

async fn refresh_kernel_status(probes: Arc<Mutex<Probes>>, kernel: Arc<Mutex<KernelStatus>>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0u64;
    loop {
        interval.tick().await;
        let probes = probes.clone();
        // Walking the listener map costs a syscall per entry: every 10 s only.
        let walk = round.is_multiple_of(10);
        round += 1;
        let status = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let p = probes.lock().expect("probes lock");
            let before = p.counters()?;
            if !walk {
                return Ok((before, None));
            }
            let entries = p.listener_map_entries()?;
            let after = p.counters()?;
            Ok((after, Some((before.listener_inserted, entries, after.listener_deleted))))
        })
        .await;
        let (counters, walked) = match status {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                log::warn!("reading kernel counters: {e:#}");
                continue;
            }
            Err(_) => continue,
        };
        let mut k = kernel.lock().expect("kernel status lock");
        if counters.events_lost > k.counters.events_lost {
            log::warn!("{} kernel events lost (ring buffer full)", counters.events_lost - k.counters.events_lost);
        }
        k.counters = counters;
        if let Some((inserted_before, entries, deleted_after)) = walked {
            k.listener_map_entries = entries;
            let bound = observer_core::kernel_status::eviction_lower_bound(inserted_before, entries, deleted_after);
            if bound > k.listener_map_evictions {
                log::warn!("the listener map is full: {} records evicted", bound - k.listener_map_evictions);
                k.listener_map_evictions = bound;
            }
        }
    }
}
