//! The event reader: drains the ring buffer into the aggregation, flushes the I/O counters of
//! open connections, and runs handovers between the two.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::clock::monotonic_ns;
use crate::kernel::Probes;
use observer_core::aggregate::{Aggregator, ListenerMove, SocketId};
use observer_core::event;
use observer_core::event::Owner;
use observer_core::model::ProcessKey;

use super::BATCH;

/// How often the ring buffer is drained when the kernel does not wake us up (it only does past
/// a fill threshold, see the kernel programs' `emit`).
pub(super) const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// What other tasks ask of the event reader.
pub(super) struct Inbox {
    pub(super) handovers: mpsc::Receiver<Handover>,
    /// Queries about to read the aggregation: answered once the I/O counters of open
    /// connections are read and applied, so that what they return is as of the query.
    pub(super) flushes: mpsc::Receiver<oneshot::Sender<()>>,
}

/// Drains the ring buffer, and every `flush_every` (and before each query) reads the I/O
/// counters of open connections (closing sockets hand theirs over with their CLOSE). Both in one
/// task, so that a flush is applied after every record queued before its counters were read: the
/// records of a connection's TLS handshake say how many of its exchanges were not requests.
pub(super) async fn read_events(
    ring: RingBuf<MapData>,
    agg: Arc<Mutex<Aggregator>>,
    probes: Arc<Mutex<Probes>>,
    flush_every: Duration,
    new_processes: Arc<Notify>,
    mut inbox: Inbox,
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
            Some(done) = inbox.flushes.recv() => {
                if flush_enabled {
                    flush(&probes, fd.get_mut(), &agg, &new_processes).await;
                }
                // One flush answers every query waiting for one.
                let _ = done.send(());
                while let Ok(done) = inbox.flushes.try_recv() {
                    let _ = done.send(());
                }
            }
            Some(job) = inbox.handovers.recv() => {
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
pub(super) async fn flush(
    probes: &Arc<Mutex<Probes>>,
    ring: &mut RingBuf<MapData>,
    agg: &Mutex<Aggregator>,
    new: &Notify,
) {
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
pub(super) struct Handover {
    pub(super) found: Vec<(ProcessKey, Vec<(SocketId, Owner)>)>,
    pub(super) done: oneshot::Sender<Vec<Vec<ListenerMove>>>,
}

/// Apply every record in the ring buffer, in batches so that the API never waits long; wake
/// `new_processes` if they named processes not seen before.
pub(super) fn drain(ring: &mut RingBuf<MapData>, agg: &Mutex<Aggregator>, new_processes: &Notify) {
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
