//! What the kernel side reports about itself: working features, counters, the listener map.

/// Which optional features are working.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Features {
    /// Errors the kernel reports on sockets (`inet_sk_error_report`).
    pub error_reports: bool,
    /// Resets sent and received (`tcp_send_reset`, `tcp_receive_reset`).
    pub resets: bool,
    /// Process exits as they happen: the daemon watches each process it charges through a pidfd
    /// (Linux 5.3+). Without, exits are found by polling /proc every 5 s.
    pub process_exits: bool,
    /// Requests and bytes per connection, and accepted connections charged to the process that
    /// uses them (`sock_send_length`, `sock_recv_length`; before Linux 6.3, `tcp_rcv_space_adjust`
    /// and the sockets' sequence numbers).
    pub requests: bool,
    /// TLS handshakes, read from the first bytes of each connection (needs `requests`; x86-64).
    pub tls: bool,
}

impl Features {
    /// (name, working) for each feature, in a fixed order.
    pub fn list(&self) -> [(&'static str, bool); 5] {
        [
            ("error_reports", self.error_reports),
            ("resets", self.resets),
            ("process_exits", self.process_exits),
            ("requests", self.requests),
            ("tls", self.tls),
        ]
    }
}

/// Totals of the kernel programs' counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelCounters {
    pub events_lost: u64,
    pub storage_failed: u64,
    /// Sockets that went to the socket table's overflow map (their bucket was full).
    pub sock_overflow: u64,
    /// State changes the kernel skipped the state program for (they interrupted it on the same
    /// CPU), handled by the second state program.
    pub state_nested: u64,
    pub listener_inserted: u64,
    pub listener_deleted: u64,
    pub listener_insert_failed: u64,
}

/// What the kernel side reports about itself, refreshed in the background.
#[derive(Clone, Debug, Default)]
pub struct KernelStatus {
    pub counters: KernelCounters,
    /// Entries in the listener map at the last count.
    pub listener_map_entries: u64,
    /// Listener records the LRU map dropped to make room (see [`eviction_lower_bound`]).
    pub listener_map_evictions: u64,
    pub features: Features,
}

/// Evictions from an LRU map that counts its own inserts and deletes: `inserted_before` read
/// before walking the map, `entries` found by the walk, `deleted_after` read after it.
///
/// Every record inserted before the walk is either still there, deleted, or evicted; records
/// inserted during the walk can only make `entries` larger. So `inserted_before - deleted_after
/// - entries` never exceeds the true number of evictions, and is exact when the map is quiet.
pub fn eviction_lower_bound(inserted_before: u64, entries: u64, deleted_after: u64) -> u64 {
    inserted_before.saturating_sub(deleted_after).saturating_sub(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_bound_is_exact_when_quiet_and_never_over_counts() {
        // 100 inserted, 60 deleted, 30 present: 10 evicted.
        assert_eq!(eviction_lower_bound(100, 30, 60), 10);
        // Inserts during the walk show up as entries: the bound goes down, never up.
        assert_eq!(eviction_lower_bound(100, 35, 60), 5);
        // Deletes during the walk (counted after) lower it too.
        assert_eq!(eviction_lower_bound(100, 30, 65), 5);
        assert_eq!(eviction_lower_bound(10, 30, 60), 0);
    }
}
