//! `GET /api/v1/status`: the daemon itself, its working features and kernel-side counters.
//!
//! The fields are in alphabetical order, here and in [`FeatureStatus`]: the order the document
//! has always been served in (it was a sorted JSON map), so the bytes stay the same.

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregator;
use crate::kernel_status::{Features, KernelStatus};

/// Which optional kernel features work (see Degraded modes in docs/api.md).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureStatus {
    pub error_reports: bool,
    pub process_exits: bool,
    pub requests: bool,
    pub resets: bool,
    pub tls: bool,
}

impl From<&Features> for FeatureStatus {
    fn from(f: &Features) -> Self {
        FeatureStatus {
            error_reports: f.error_reports,
            process_exits: f.process_exits,
            requests: f.requests,
            resets: f.resets,
            tls: f.tls,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Of `closes_not_seen`, the connections waiting for the audit's final counters.
    pub closes_awaiting_final_counters: u64,
    /// Sockets whose end the kernel never reported, found closed by the daemon.
    pub closes_not_seen: u64,
    /// Of `closes_not_seen`, the connections reported with the last counters read instead.
    pub closes_without_final_counters: u64,
    /// Events the kernel could not queue (ring buffer full).
    pub events_lost: u64,
    pub features: FeatureStatus,
    pub listener_map_entries: u64,
    /// A lower bound, exact when the map is quiet.
    pub listener_map_evictions: u64,
    pub nested_state_changes: u64,
    pub socket_storage_failures: u64,
    pub socket_table_overflows: u64,
    pub stale_slots_freed: u64,
    pub table_audits: u64,
    pub tracked_processes: u64,
    pub tracked_sockets: u64,
    pub unattributed_events: u64,
    /// The daemon's version.
    pub version: String,
}

/// The status document of a daemon of `version`.
pub fn status(version: &str, kernel: &KernelStatus, agg: &Aggregator) -> Status {
    let (k, stats) = (&kernel.counters, &agg.stats);
    Status {
        closes_awaiting_final_counters: agg.unreported_closes() as u64,
        closes_not_seen: stats.closes_not_seen,
        closes_without_final_counters: stats.closes_without_final_counters,
        events_lost: k.events_lost,
        features: (&kernel.features).into(),
        listener_map_entries: kernel.listener_map_entries,
        listener_map_evictions: kernel.listener_map_evictions,
        nested_state_changes: k.state_nested,
        socket_storage_failures: k.storage_failed,
        socket_table_overflows: k.sock_overflow,
        stale_slots_freed: stats.stale_slots_freed,
        table_audits: stats.table_audits,
        tracked_processes: agg.processes().count() as u64,
        tracked_sockets: agg.tracked_sockets() as u64,
        unattributed_events: stats.unattributed_events,
        version: version.to_owned(),
    }
}
