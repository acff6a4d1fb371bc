//! Ownership follows the socket: the sockets of exited processes charged to their new holders.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::host::holders;
use crate::kernel::Probes;
use observer_core::aggregate::{Aggregator, SocketId};
use observer_core::event::Owner;
use observer_core::model::ProcessKey;

use super::events::Handover;

/// How long after an exit its heirs are looked for: the closes of the sockets it held reach the
/// ring buffer as it exits, and are applied within a few drains.
pub(super) const HANDOVER_SETTLE: Duration = Duration::from_millis(100);
/// The longest one search for heirs may take (a /proc scan and a socket dump per namespace).
pub(super) const HANDOVER_BUDGET: Duration = Duration::from_secs(2);

/// When processes charged with live sockets exit, find who holds those sockets now and charge
/// them to that process (see `aggregate::handover` and `holders`); tell the kernel's listener
/// map about the listeners that changed hands.
pub(super) async fn hand_over_exits(
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
