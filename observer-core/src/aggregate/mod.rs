//! The per-process, per-peer socket table: kernel events in, answers out.
//!
//! Pure: no kernel, no clock, no I/O. Every event carries its own timestamp and `tick` is given
//! the current time, so the whole lifecycle logic is unit-tested with synthetic events.
//!
//! Attribution: every event names the socket's owner as the kernel recorded it in process
//! context (connect, listen, accept). A socket is counted in exactly one bucket, keyed by its
//! owner, its direction and its peer: the remote endpoint for outbound sockets, the local
//! listening endpoint for inbound ones (never the client's ephemeral port).
//!
//! The [`Aggregator`] is one table with one event dispatch (here); its methods live with the
//! concept they handle:
//! - `processes`: the process table ([`Process`]): first sight, command lines, exit, pruning,
//!   and the listening endpoints each process holds.
//! - `peers`: the figures of one peer of one process ([`PeerStats`]).
//! - `sockets`: the record of each live socket, one per kernel address: moving it between
//!   processes, dropping it, its I/O flushes, and the tombstone it leaves.
//! - `states`: state changes: where a socket is counted when first seen, how its live counts and
//!   its connection's figures follow its states, what its close reports (TIME_WAIT included).
//! - `seeds`: the sockets of the start-up snapshot ([`SeedSocket`]) until their first event.
//! - `unreported`: sockets whose close the kernel never reported, and what the audit of the
//!   kernel's socket table learns of them.
//! - `alerts`: CLOSE_WAIT leak evaluation and the alerts it raises ([`LeakAlert`]).
//! - `handshakes`: TLS handshakes recognised from connections' first bytes.
//! - `errors`: resets and socket errors, charged even after the socket closed.
//! - `handover`: sockets left by an exited process to the process that holds them now.

mod alerts;
mod errors;
mod handover;
mod handshakes;
mod peers;
mod processes;
mod seeds;
mod sockets;
mod states;
mod unreported;

pub use alerts::{AlertChange, LeakAlert};
pub use handover::{HeldSocket, Inherited, ListenerMove, SocketId};
pub use peers::PeerStats;
pub use processes::Process;
pub use seeds::{SeedSocket, Tuple};
pub use unreported::UNREPORTED_TTL_NS;

use hashbrown::HashMap;

use crate::closewait::CloseWaitConfig;
use crate::event::{EventKind, SocketEvent};
use crate::model::ProcessKey;
use crate::timewait::TimeWaitTable;
use crate::tls;

use peers::PeerKey;
use seeds::Seed;
use sockets::{SocketRec, Tombstone};
use unreported::Unreported;

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
    /// Unattributed sockets that closed recently (see `seeds::RECENTLY_CLOSED_TTL_NS`).
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

    /// Housekeeping at `now_ns` (CLOCK_MONOTONIC): prune exited processes past their retention,
    /// forget old tombstones, expire timewait entries, report the unreported closes the audit
    /// never found, and evaluate CLOSE_WAIT leaks.
    pub fn tick(&mut self, now_ns: u64) {
        self.prune_exited(now_ns);
        self.expire_tombstones(now_ns);
        self.expire_recently_closed(now_ns);
        self.timewait.expire(now_ns);
        self.report_late_unreported(now_ns);
        self.evaluate_close_wait(now_ns);
    }
}

#[cfg(test)]
mod tests;
