//! Sockets that closed without the kernel reporting it. When a new socket takes the address of
//! one still held, the old one is set aside, out of the live figures; its connection is
//! reported when the audit of the kernel's socket table (see `table_audit`) hands its final
//! counters over, or after [`UNREPORTED_TTL_NS`] with the counters it has. The audit also asks
//! here what the daemon knows of each slot.

use super::{Aggregator, SECOND, SocketRec};
use crate::event::{self, EventKind, SocketEvent};
use crate::model::{IoCounts, TcpState};
use crate::table_audit::{Gone, Known, StaleSlot, TableSlot};
use crate::tls;

/// How long an `Unreported` socket waits for the audit of the kernel's table (passes every few
/// seconds, see `table_audit`) before it is reported with the counters it has.
pub const UNREPORTED_TTL_NS: u64 = 60 * SECOND;

/// Most [`Unreported`] sockets held at once (each is a few hundred bytes).
const MAX_UNREPORTED: usize = 65_536;

/// A socket that closed without the kernel reporting it, waiting for its final counters.
pub(super) struct Unreported {
    rec: SocketRec,
    /// The last state it was seen in.
    state: TcpState,
    /// When it was known to have closed (a new socket took its address).
    closed_ns: u64,
    handshake: Option<tls::Outcome>,
}

impl Aggregator {
    /// A new socket takes the address `sk` while a record of the previous one is still here: it
    /// closed without the kernel reporting it. Out of the live figures now; its connection is
    /// reported once the audit finds its slot (with its final counters), or after
    /// [`UNREPORTED_TTL_NS`].
    pub(super) fn set_aside_unreported(&mut self, sk: u64, now_ns: u64) {
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

    /// Report, with the counters they have, the sockets set aside that the audit did not find
    /// within [`UNREPORTED_TTL_NS`].
    pub(super) fn report_late_unreported(&mut self, now_ns: u64) {
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
}

/// The close of socket `sk` at `ts_ns` from state `old`, with its final counters `io`, when the
/// kernel never reported it: as a compact record would have reported it.
fn closing_event(sk: u64, ts_ns: u64, old: TcpState, io: IoCounts) -> SocketEvent {
    SocketEvent { io, ..event::compact(ts_ns, sk, EventKind::State { old, new: TcpState::Close }) }
}
