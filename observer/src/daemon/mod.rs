//! The daemon: kernel events in, aggregation, background reconciliation, HTTP out. One module
//! per task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc};

mod audit;
#[cfg(feature = "bench")]
mod bench;
mod events;
mod handover;
mod housekeeping;
mod kernel_status;
mod reconcile;

use audit::audit_socket_table;
use events::{Inbox, read_events};
use handover::hand_over_exits;
use housekeeping::housekeeping;
use kernel_status::refresh_kernel_status;
use reconcile::reconcile_time_wait;

use crate::api::{self, AppState};
use crate::clock::monotonic_ns;
use crate::config::DaemonOptions;
use crate::host::{exits, snapshot};
use crate::kernel::Probes;
use observer_core::aggregate::{Aggregator, Config};
use observer_core::closewait::CloseWaitConfig;
use observer_core::diagnosis::Thresholds;
use observer_core::kernel_status::KernelStatus;
use observer_core::metrics;

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

pub async fn run(opts: DaemonOptions, close_wait: CloseWaitConfig, thresholds: Thresholds) -> Result<()> {
    // Bind first: a busy port fails before anything is loaded into the kernel.
    let listener = TcpListener::bind(opts.listen).await.with_context(|| format!("cannot listen on {}", opts.listen))?;

    let mut probes = Probes::load(&opts.kernel)?;
    let ring = probes.take_events()?;
    let logger = probes.take_logger();
    probes.features.process_exits = exits::supported();
    if probes.features.process_exits {
        exits::raise_fd_limit();
    }
    let features = probes.features.clone();
    log::info!("kernel programs attached; features: {features:?}");

    let agg = Arc::new(Mutex::new(Aggregator::new(Config {
        exited_retention_ns: Duration::from_secs(opts.exited_retention).as_nanos() as u64,
        close_wait,
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
    let (flush_tx, flushes) = mpsc::channel(64);
    let kernel = Arc::new(Mutex::new(KernelStatus { features, ..KernelStatus::default() }));
    let healthy = Arc::new(AtomicBool::new(true));
    let probes = Arc::new(Mutex::new(probes));

    let mut tasks = tokio::task::JoinSet::new();
    {
        let (agg, healthy, probes) = (agg.clone(), healthy.clone(), probes.clone());
        let flush_every = Duration::from_secs(opts.io_flush_interval);
        let new_processes = wake.new_processes.clone();
        tasks.spawn(async move {
            let inbox = Inbox { handovers, flushes };
            if let Err(e) = read_events(ring, agg, probes, flush_every, new_processes, inbox).await {
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
    tasks.spawn(reconcile_time_wait(agg.clone(), Duration::from_secs(opts.reconcile_interval)));
    #[cfg(feature = "bench")]
    let audit = opts.kernel.bench.observes();
    #[cfg(not(feature = "bench"))]
    let audit = true;
    if audit {
        tasks.spawn(audit_socket_table(agg.clone(), probes.clone()));
    }
    tasks.spawn(refresh_kernel_status(probes.clone(), kernel.clone()));
    #[cfg(feature = "bench")]
    if opts.kernel.bench.toggle {
        tasks.spawn(bench::toggle(probes.clone()));
    }

    let max_peers = opts.metrics_peers_per_process as usize;
    let registry =
        Arc::new(metrics::registry(agg.clone(), kernel.clone(), max_peers, thresholds.clone(), monotonic_ns));
    let thresholds = Arc::new(thresholds);
    let app = api::router(AppState { agg, kernel, registry, healthy, thresholds, flush: flush_tx });
    log::info!("serving the API on http://{}", opts.listen);
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.context("HTTP server")?;

    tasks.shutdown().await;
    // Last reference: dropping it detaches every program and frees the maps.
    drop(probes);
    log::info!("detached from the kernel; bye");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = int.recv() => log::info!("SIGINT: shutting down"),
    }
}
