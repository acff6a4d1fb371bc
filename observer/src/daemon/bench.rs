//! The bench build's task: its programs detached and attached on signals.

use std::sync::{Arc, Mutex};

use tokio::signal::unix::{SignalKind, signal};

use crate::kernel::Probes;

/// `--bench-toggle`: SIGUSR1 detaches the kernel programs, SIGUSR2 attaches them again, so that
/// `cargo xtask bench` can measure the same daemon with and without them in quick alternation.
pub async fn toggle(probes: Arc<Mutex<Probes>>) {
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
