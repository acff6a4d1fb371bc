//! The kernel side's counters and listener map, read in the background.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::kernel::Probes;
use observer_core::kernel_status::KernelStatus;

pub(super) async fn refresh_kernel_status(probes: Arc<Mutex<Probes>>, kernel: Arc<Mutex<KernelStatus>>) {
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
