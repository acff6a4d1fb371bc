//! Lifecycle tests of the aggregation with synthetic kernel events.

use std::net::SocketAddr;

use super::*;
use crate::closewait::Verdict;
use crate::event::{EventKind, Owner, SocketEvent};
use crate::model::TcpState::*;
use crate::model::{Direction, Endpoint, FailureReason, IoCounts, TcpState};
use crate::table_audit::{Gone, StaleSlot, TableSlot};
use crate::timewait::{KernelTimeWait, TwOwner};

const MS: u64 = 1_000_000;

mod handover;
mod pools;

fn ep(s: &str) -> Endpoint {
    Endpoint(s.parse::<SocketAddr>().unwrap())
}

fn owner(pid: u32) -> Owner {
    Owner { key: ProcessKey { pid, start_ns: 1000 + u64::from(pid) }, comm: format!("proc{pid}").into() }
}

fn key(pid: u32) -> ProcessKey {
    owner(pid).key
}

/// Events for one socket, with a clock that advances 1 ms per event.
struct Sock {
    sk: u64,
    owner: Option<Owner>,
    local: Endpoint,
    remote: Endpoint,
    t: u64,
    /// I/O counters the kernel hands over when the socket closes (IO_FINAL).
    io: IoCounts,
    /// Its cookie in the kernel's socket table, unique (as the kernel's are).
    cookie: u64,
}

impl Sock {
    fn new(sk: u64, pid: u32, local: &str, remote: &str) -> Sock {
        static COOKIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let cookie = COOKIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Sock {
            sk,
            owner: Some(owner(pid)),
            local: ep(local),
            remote: ep(remote),
            t: 0,
            io: IoCounts::default(),
            cookie,
        }
    }

    /// Its slot in the kernel's table, as the audit finds it once the socket is gone.
    fn stale_slot(&self, gone: Gone, io: IoCounts) -> StaleSlot {
        let slot = TableSlot { index: 3, cookie: self.cookie, sk: self.sk, netns: 7, owner_pid: 0, io };
        StaleSlot::new(slot, gone)
    }

    fn ev(&mut self, kind: EventKind, error: i32) -> SocketEvent {
        self.t += MS;
        SocketEvent {
            ts_ns: self.t,
            sk: self.sk,
            owner: self.owner.clone(),
            kind,
            family: if self.local.0.is_ipv4() { 2 } else { 10 },
            local: self.local,
            remote: self.remote,
            error,
            netns: Some(7),
            // The kernel hands the final counters over with the close.
            io: if matches!(kind, EventKind::State { new: Close, .. }) { self.io } else { IoCounts::default() },
            has_tuple: true,
            local_port: 0,
            idle_ns: None,
            first: false,
            // Records with addresses carry it (compact ones do not: `compact` leaves it).
            cookie: self.cookie,
        }
    }

    fn state(&mut self, a: &mut Aggregator, old: TcpState, new: TcpState) {
        let e = self.ev(EventKind::State { old, new }, 0);
        a.apply(&e);
    }

    fn close_with(&mut self, a: &mut Aggregator, old: TcpState, err: i32) {
        let e = self.ev(EventKind::State { old, new: Close }, err);
        a.apply(&e);
    }

    /// A record as the kernel sends it for a socket it already told user space about: no owner,
    /// no addresses (`Transition`, `Closed`).
    fn compact(&mut self, a: &mut Aggregator, old: TcpState, new: TcpState) {
        let mut e = self.ev(EventKind::State { old, new }, 0);
        let none = Endpoint::from_kernel(0, &[0; 16], 0);
        (e.owner, e.local, e.remote, e.netns, e.has_tuple, e.cookie) = (None, none, none, None, false, 0);
        a.apply(&e);
    }

    /// A connect's SYN_SENT->ESTABLISHED as the kernel sends it: compact, with the port.
    fn connected(&mut self, a: &mut Aggregator, port: u16) {
        let mut e = self.ev(EventKind::State { old: SynSent, new: Established }, 0);
        let none = Endpoint::from_kernel(0, &[0; 16], 0);
        (e.owner, e.local, e.remote, e.netns, e.has_tuple, e.local_port, e.cookie) =
            (None, none, none, None, false, port, 0);
        a.apply(&e);
    }

    fn other(&mut self, a: &mut Aggregator, kind: EventKind, error: i32) {
        let e = self.ev(kind, error);
        a.apply(&e);
    }
}

/// An accepted connection's first record (the end of SYN_RECV), which says so.
fn accepted(a: &mut Aggregator, s: &mut Sock) {
    let mut first = s.ev(EventKind::State { old: SynRecv, new: Established }, 0);
    first.first = true;
    a.apply(&first);
}

fn out<'a>(a: &'a Aggregator, pid: u32, remote: &str) -> &'a PeerStats {
    &a.process(pid).expect("process").outbound[&ep(remote)]
}

fn inb<'a>(a: &'a Aggregator, pid: u32, local: &str) -> &'a PeerStats {
    &a.process(pid).expect("process").inbound[&ep(local)]
}

fn tw(a: &Aggregator, pid: u32, direction: Direction, peer: &str) -> u64 {
    let o = TwOwner { process: key(pid), direction, peer: ep(peer) };
    a.timewait().counts(&o).map_or(0, |c| c.get(TimeWait))
}

/// A client connection closed by the client: opened, closed by local, TIME_WAIT.
fn client_closes_first(a: &mut Aggregator, sk: u64, pid: u32, port: u16) {
    let mut s = Sock::new(sk, pid, &format!("127.0.0.1:{port}"), "127.0.0.1:8080");
    s.state(a, Close, SynSent);
    s.state(a, SynSent, Established);
    s.state(a, Established, FinWait1);
    s.state(a, FinWait1, FinWait2);
    s.close_with(a, FinWait2, 0);
}

#[test]
fn fifty_connections_closed_by_the_client_leave_fifty_time_wait() {
    let mut a = Aggregator::default();
    for i in 0..50 {
        client_closes_first(&mut a, 0x1000 + i, 100, 40000 + i as u16);
    }
    let s = out(&a, 100, "127.0.0.1:8080");
    assert_eq!(s.connections, 50);
    assert_eq!(s.closed_by_local, 50);
    assert_eq!(s.closed_by_peer, 0);
    assert_eq!(s.sockets.total(), 0);
    assert_eq!(s.lifetimes.count, 50);
    assert_eq!(s.lifetimes.min_ns, 3 * MS);
    assert_eq!(tw(&a, 100, Direction::Outbound, "127.0.0.1:8080"), 50);
    assert_eq!(a.tracked_sockets(), 0);
}

#[test]
fn one_reused_connection_counts_once() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!(st.connections, 1);
    assert_eq!(st.sockets.get(Established), 1);
    assert_eq!(st.sockets.total(), 1);
}

#[test]
fn refused_connects_are_failures_not_connections() {
    let mut a = Aggregator::default();
    for i in 0..4 {
        let mut s = Sock::new(10 + i, 100, "127.0.0.1:0", "127.0.0.1:9");
        s.state(&mut a, Close, SynSent);
        s.close_with(&mut a, SynSent, libc::ECONNREFUSED);
        // The error report comes after the close.
        s.other(&mut a, EventKind::ErrorReport, libc::ECONNREFUSED);
    }
    let st = out(&a, 100, "127.0.0.1:9");
    assert_eq!(st.connect_failures.get(FailureReason::Refused), 4);
    assert_eq!(st.connect_failures.total(), 4);
    assert_eq!(st.connections, 0);
    assert_eq!(st.closed_by_local + st.closed_by_peer, 0);
    assert_eq!(st.socket_errors[&libc::ECONNREFUSED], 4);
    assert_eq!(st.sockets.total(), 0);
}

#[test]
fn giving_up_in_syn_sent_is_a_timeout_and_no_local_port_is_other() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "10.0.0.1:40000", "10.9.9.9:80");
    s.state(&mut a, Close, SynSent);
    s.close_with(&mut a, SynSent, 0);
    let mut s = Sock::new(2, 100, "10.0.0.1:40001", "10.9.9.9:80");
    s.state(&mut a, Close, SynSent);
    s.close_with(&mut a, SynSent, libc::ETIMEDOUT);
    let mut s = Sock::new(3, 100, "10.0.0.1:40002", "10.9.9.9:80");
    s.state(&mut a, Close, SynSent);
    s.close_with(&mut a, SynSent, libc::EHOSTUNREACH);
    // No local port left: the kernel gives up inside connect(), before any SYN.
    let mut s = Sock::new(4, 100, "0.0.0.0:0", "10.9.9.9:80");
    s.state(&mut a, Close, SynSent);
    s.close_with(&mut a, SynSent, 0);
    let st = out(&a, 100, "10.9.9.9:80");
    assert_eq!(st.connect_failures.get(FailureReason::Timeout), 2);
    assert_eq!(st.connect_failures.get(FailureReason::Unreachable), 1);
    assert_eq!(st.connect_failures.get(FailureReason::Other), 1);
}

#[test]
fn a_peer_close_leaves_close_wait_charged_to_the_owner() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    s.state(&mut a, Established, CloseWait);
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!(st.sockets.get(CloseWait), 1);
    assert_eq!(st.closed_by_peer, 1);
    s.state(&mut a, CloseWait, LastAck);
    s.close_with(&mut a, LastAck, 0);
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!(st.sockets.total(), 0);
    assert_eq!(st.closed_by_peer, 1, "counted once");
    assert_eq!(tw(&a, 100, Direction::Outbound, "127.0.0.1:8080"), 0, "passive close: no TIME_WAIT");
}

#[test]
fn accepted_sockets_aggregate_by_listener_and_follow_the_accepting_process() {
    let mut a = Aggregator::default();
    // pid 10 listens (the master), pid 11 accepts (a worker).
    let mut l = Sock::new(1, 10, "0.0.0.0:8080", "0.0.0.0:0");
    l.state(&mut a, Close, Listen);
    for i in 0..3u64 {
        // Child created in softirq: the kernel names the listener's owner.
        let mut c = Sock::new(100 + i, 10, "127.0.0.1:8080", &format!("127.0.0.1:{}", 50000 + i));
        c.state(&mut a, Listen, SynRecv);
        c.state(&mut a, SynRecv, Established);
        c.owner = Some(owner(11));
        c.other(&mut a, EventKind::Claim, 0);
        c.state(&mut a, Established, FinWait1);
        c.state(&mut a, FinWait1, FinWait2);
        c.close_with(&mut a, FinWait2, 0);
    }
    let master = inb(&a, 10, "0.0.0.0:8080");
    assert_eq!(master.sockets.get(Listen), 1);
    assert_eq!(master.connections, 0);
    let worker = inb(&a, 11, "0.0.0.0:8080");
    assert_eq!(worker.connections, 3);
    assert_eq!(worker.closed_by_local, 3);
    assert_eq!(worker.sockets.total(), 0);
    assert_eq!(tw(&a, 11, Direction::Inbound, "0.0.0.0:8080"), 3);
    assert!(a.process(11).unwrap().outbound.is_empty(), "never keyed by client ports");
    assert_eq!(a.process(10).unwrap().inbound.len(), 1);
}

/// The records the kernel really sends for accepted connections: none at the child's creation,
/// a full first record at the end of SYN_RECV, then compact ones.
#[test]
fn an_accepted_connection_first_reported_at_its_establishment() {
    let mut a = Aggregator::default();
    let mut l = Sock::new(1, 10, "0.0.0.0:8080", "0.0.0.0:0");
    l.state(&mut a, Close, Listen);
    for i in 0..3u64 {
        let mut c = Sock::new(100 + i, 10, "127.0.0.1:8080", &format!("127.0.0.1:{}", 50000 + i));
        let mut first = c.ev(EventKind::State { old: SynRecv, new: Established }, 0);
        first.first = true;
        a.apply(&first);
        assert_eq!(inb(&a, 10, "0.0.0.0:8080").sockets.get(Established), 1);
        c.owner = Some(owner(11));
        c.other(&mut a, EventKind::Claim, 0);
        c.compact(&mut a, Established, FinWait1);
        c.compact(&mut a, FinWait1, FinWait2);
        c.compact(&mut a, FinWait2, Close);
    }
    assert_eq!(a.stats.unattributed_events, 0);
    let master = inb(&a, 10, "0.0.0.0:8080");
    assert_eq!((master.sockets.get(Listen), master.sockets.total(), master.connections), (1, 1, 0));
    let worker = inb(&a, 11, "0.0.0.0:8080");
    assert_eq!((worker.connections, worker.closed_by_local, worker.sockets.total()), (3, 3, 0));
    assert_eq!(tw(&a, 11, Direction::Inbound, "0.0.0.0:8080"), 3);
    assert!(a.process(10).unwrap().outbound.is_empty() && a.process(11).unwrap().outbound.is_empty());
}

#[test]
fn a_connection_never_seen_accepted_is_counted_when_it_closes() {
    let mut a = Aggregator::default();
    let mut l = Sock::new(1, 10, "[::]:8443", "[::]:0");
    l.state(&mut a, Close, Listen);
    let mut c = Sock::new(2, 10, "[::ffff:127.0.0.1]:8443", "[::ffff:127.0.0.1]:50000");
    c.state(&mut a, Listen, SynRecv);
    c.state(&mut a, SynRecv, Established);
    assert_eq!(inb(&a, 10, "[::]:8443").connections, 0);
    assert_eq!(inb(&a, 10, "[::]:8443").sockets.get(Established), 1);
    c.state(&mut a, Established, CloseWait);
    c.state(&mut a, CloseWait, LastAck);
    c.close_with(&mut a, LastAck, 0);
    let st = inb(&a, 10, "[::]:8443");
    assert_eq!(st.connections, 1);
    assert_eq!(st.closed_by_peer, 1);
    assert_eq!(st.sockets.get(Listen), 1);
    assert_eq!(st.sockets.total(), 1);
}

#[test]
fn closing_a_listener_removes_it() {
    let mut a = Aggregator::default();
    // A wildcard listener: a child that finds it is charged to 0.0.0.0:8080, one that does not
    // to its own address, 127.0.0.1:8080.
    let mut l = Sock::new(1, 10, "0.0.0.0:8080", "0.0.0.0:0");
    l.state(&mut a, Close, Listen);
    let mut c1 = Sock::new(2, 10, "127.0.0.1:8080", "127.0.0.1:50000");
    c1.state(&mut a, Listen, SynRecv);
    assert_eq!(inb(&a, 10, "0.0.0.0:8080").sockets.get(SynRecv), 1);
    l.close_with(&mut a, Listen, 0);
    assert_eq!(inb(&a, 10, "0.0.0.0:8080").sockets.get(Listen), 0);
    // A later child on that port no longer finds it.
    let mut c2 = Sock::new(3, 10, "127.0.0.1:8080", "127.0.0.1:50001");
    c2.state(&mut a, Listen, SynRecv);
    assert_eq!(inb(&a, 10, "0.0.0.0:8080").sockets.get(SynRecv), 1, "the first child only");
    assert_eq!(inb(&a, 10, "127.0.0.1:8080").sockets.get(SynRecv), 1);
}

#[test]
fn resets_and_who_closed_an_aborted_connection() {
    let mut a = Aggregator::default();
    // The peer resets: RST received, then ESTABLISHED -> CLOSE with ECONNRESET.
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    s.other(&mut a, EventKind::ResetReceived, 0);
    s.close_with(&mut a, Established, libc::ECONNRESET);
    // The application aborts: ESTABLISHED -> CLOSE, then the RST it sends.
    let mut s = Sock::new(2, 100, "127.0.0.1:40001", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    s.close_with(&mut a, Established, 0);
    s.other(&mut a, EventKind::ResetSent, 0);
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!(st.resets_received, 1);
    assert_eq!(st.resets_sent, 1);
    assert_eq!(st.closed_by_peer, 1);
    assert_eq!(st.closed_by_local, 1);
    assert_eq!(st.connections, 2);
    assert_eq!(st.sockets.total(), 0);
}

#[test]
fn events_without_an_owner_are_counted_not_charged() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.owner = None;
    s.state(&mut a, Established, CloseWait);
    assert_eq!(a.stats.unattributed_events, 1);
    assert_eq!(a.processes().count(), 0);
}

#[test]
fn a_socket_from_before_the_daemon_is_adopted_mid_life() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Established, FinWait1);
    s.state(&mut a, FinWait1, FinWait2);
    s.close_with(&mut a, FinWait2, 0);
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!(st.connections, 0, "its opening was not seen");
    assert_eq!(st.closed_by_local, 1);
    assert_eq!(st.sockets.total(), 0);
    assert_eq!(tw(&a, 100, Direction::Outbound, "127.0.0.1:8080"), 1);
}

#[test]
fn a_reused_socket_address_starts_a_new_life() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    // The CLOSE of that socket was lost; the same address now connects elsewhere.
    assert_eq!(a.stats.closes_not_seen, 0);
    let mut s2 = Sock::new(1, 100, "127.0.0.1:40001", "127.0.0.1:9090");
    s2.state(&mut a, Close, SynSent);
    assert_eq!(out(&a, 100, "127.0.0.1:8080").sockets.total(), 0);
    assert_eq!(out(&a, 100, "127.0.0.1:9090").sockets.get(SynSent), 1);
    assert_eq!(a.tracked_sockets(), 1);
    assert_eq!(a.stats.closes_not_seen, 1, "the first socket's end was never reported");
    // A new socket at an address nobody held is not one.
    Sock::new(2, 100, "127.0.0.1:40002", "127.0.0.1:9090").state(&mut a, Close, SynSent);
    assert_eq!(a.stats.closes_not_seen, 1);
}

/// A server listening on 127.0.0.1:8080 (pid 200) that closed an accepted connection first.
fn server_socket_in_fin_wait1() -> (Aggregator, Sock) {
    let mut a = Aggregator::default();
    Sock::new(10, 200, "127.0.0.1:8080", "0.0.0.0:0").state(&mut a, Close, Listen);
    let mut s = Sock::new(1, 200, "127.0.0.1:8080", "127.0.0.1:40000");
    accepted(&mut a, &mut s);
    s.compact(&mut a, Established, FinWait1);
    (a, s)
}

/// What the kernel does to a small share of servers' orphaned sockets: FIN_WAIT1 is the last
/// state reported, and the next record at that address is a new connection's. Out of the live
/// figures at once; the audit of the kernel's table hands its final counters over.
#[test]
fn an_orphan_whose_close_is_never_reported_is_set_aside_when_its_address_is_reused() {
    let (mut a, s) = server_socket_in_fin_wait1();
    assert_eq!(inb(&a, 200, "127.0.0.1:8080").sockets.get(FinWait1), 1);
    let mut s2 = Sock::new(1, 200, "127.0.0.1:8080", "127.0.0.1:40001");
    accepted(&mut a, &mut s2);
    let st = inb(&a, 200, "127.0.0.1:8080");
    assert_eq!((st.sockets.get(FinWait1), st.sockets.get(Established)), (0, 1));
    assert_eq!(st.closed_by_local, 1);
    assert_eq!(st.lifetimes.count, 0, "not reported before its final counters");
    assert_eq!((a.stats.closes_not_seen, a.unreported_closes()), (1, 1));

    // The audit finds its slot: its socket is in TIME_WAIT.
    let io = IoCounts { bytes_sent: 1, bytes_received: 5, send_runs: 1, recv_runs: 1 };
    assert!(a.close_unreported(&s.stale_slot(Gone::TimeWait, io), 60 * SECOND));
    let st = inb(&a, 200, "127.0.0.1:8080");
    assert_eq!(st.lifetimes.count, 1);
    assert_eq!((st.bytes_sent, st.bytes_received, st.requests), (1, 5, 1));
    assert_eq!(st.requests_per_connection.count, 1);
    assert_eq!((st.sockets.get(FinWait1), st.sockets.get(Established)), (0, 1), "the new one is untouched");
    assert_eq!(tw(&a, 200, Direction::Inbound, "127.0.0.1:8080"), 1, "its TIME_WAIT is charged");
    assert_eq!((a.stats.closes_not_seen, a.unreported_closes(), a.stats.stale_slots_freed), (1, 0, 1));
    assert_eq!(a.stats.closes_without_final_counters, 0);
    // The new socket at that address keeps its own record and cookie.
    assert!(!a.close_unreported(&s.stale_slot(Gone::Missing, io), 61 * SECOND), "reported once");
    assert_eq!(inb(&a, 200, "127.0.0.1:8080").lifetimes.count, 1);
    s2.compact(&mut a, Established, FinWait1);
    s2.io = io;
    s2.compact(&mut a, FinWait1, Close);
    assert_eq!(inb(&a, 200, "127.0.0.1:8080").lifetimes.count, 2);
}

/// The same socket, found by the audit before any new socket takes its address.
#[test]
fn an_orphan_found_gone_by_the_audit_is_closed_with_its_final_counters() {
    let (mut a, s) = server_socket_in_fin_wait1();
    let io = IoCounts { bytes_sent: 7, bytes_received: 3, send_runs: 1, recv_runs: 1 };
    // A slot of this address whose cookie is another socket's is not this one's.
    let mut other = s.stale_slot(Gone::TimeWait, io);
    other.slot.cookie += 1_000_000;
    assert!(!a.close_unreported(&other, 2 * SECOND));
    assert_eq!(inb(&a, 200, "127.0.0.1:8080").sockets.get(FinWait1), 1);
    assert_eq!((a.stats.closes_not_seen, a.stats.stale_slots_freed), (0, 1));

    assert!(a.close_unreported(&s.stale_slot(Gone::TimeWait, io), 2 * SECOND));
    let st = inb(&a, 200, "127.0.0.1:8080");
    assert_eq!((st.sockets.get(FinWait1), st.sockets.total()), (0, 1), "the listener's LISTEN only");
    assert_eq!((st.closed_by_local, st.closed_by_peer), (1, 0), "counted once, at FIN_WAIT1");
    assert_eq!(st.lifetimes.count, 1);
    assert_eq!((st.bytes_sent, st.bytes_received, st.requests), (7, 3, 1));
    assert_eq!(tw(&a, 200, Direction::Inbound, "127.0.0.1:8080"), 1);
    assert_eq!(a.tracked_sockets(), 1, "only the listener");
    assert_eq!((a.stats.closes_not_seen, a.stats.stale_slots_freed), (1, 2));
    // Missing altogether (not in TIME_WAIT), even from FIN_WAIT2: no TIME_WAIT charged.
    let mut s3 = Sock::new(3, 200, "127.0.0.1:8080", "127.0.0.1:40003");
    accepted(&mut a, &mut s3);
    s3.compact(&mut a, Established, FinWait1);
    s3.compact(&mut a, FinWait1, FinWait2);
    assert!(a.close_unreported(&s3.stale_slot(Gone::Missing, io), 3 * SECOND));
    let st = inb(&a, 200, "127.0.0.1:8080");
    assert_eq!((st.lifetimes.count, st.sockets.get(FinWait2)), (2, 0));
    assert_eq!(tw(&a, 200, Direction::Inbound, "127.0.0.1:8080"), 1);
    let fw2 = TwOwner { process: key(200), direction: Direction::Inbound, peer: ep("127.0.0.1:8080") };
    assert_eq!(a.timewait().counts(&fw2).map_or(0, |c| c.get(FinWait2)), 0);
}

#[test]
fn a_socket_set_aside_that_the_audit_never_finds_is_reported_with_the_counters_it_has() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.connected(&mut a, 40000);
    a.flush_io(&[(1, IoCounts { bytes_sent: 10, bytes_received: 20, send_runs: 2, recv_runs: 2 })]);
    s.compact(&mut a, Established, FinWait1);
    // A socket without a cookie (adopted from the start-up snapshot, say) cannot wait for one.
    let mut bare = Sock::new(2, 100, "127.0.0.1:40002", "127.0.0.1:8080");
    bare.cookie = 0;
    bare.state(&mut a, Close, SynSent);
    bare.connected(&mut a, 40002);

    let reuse_at = 5 * SECOND;
    let mut s2 = Sock::new(1, 100, "127.0.0.1:40001", "127.0.0.1:9090");
    s2.t = reuse_at - MS; // its next record is at reuse_at
    s2.state(&mut a, Close, SynSent);
    let mut bare2 = Sock::new(2, 100, "127.0.0.1:40003", "127.0.0.1:9090");
    bare2.state(&mut a, Close, SynSent);
    assert_eq!(out(&a, 100, "127.0.0.1:8080").lifetimes.count, 1, "the socket without a cookie, at once");
    assert_eq!((a.stats.closes_not_seen, a.stats.closes_without_final_counters), (2, 1));
    assert_eq!(a.unreported_closes(), 1);

    a.tick(reuse_at + UNREPORTED_TTL_NS - 1);
    assert_eq!(a.unreported_closes(), 1);
    a.tick(reuse_at + UNREPORTED_TTL_NS);
    assert_eq!(a.unreported_closes(), 0);
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!(st.lifetimes.count, 2);
    assert_eq!((st.bytes_sent, st.bytes_received, st.requests), (10, 20, 2), "as last read");
    assert_eq!(st.requests_per_connection.count, 2);
    assert_eq!(a.stats.closes_without_final_counters, 2);
    // Too late: its slot found now frees the slot only.
    assert!(!a.close_unreported(&s.stale_slot(Gone::TimeWait, IoCounts::default()), reuse_at + UNREPORTED_TTL_NS));
}

#[test]
fn exited_processes_are_pruned_after_retention_and_stay_pruned() {
    let mut a = Aggregator::new(Config { exited_retention_ns: 5 * SECOND, ..Config::default() });
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    a.mark_exited(key(100), s.t);
    // Exit closes its sockets: still charged to it during the retention.
    s.state(&mut a, Established, FinWait1);
    a.tick(s.t + SECOND);
    assert!(a.process(100).is_some());
    assert_eq!(out(&a, 100, "127.0.0.1:8080").closed_by_local, 1);
    a.tick(s.t + 6 * SECOND);
    assert!(a.process(100).is_none());
    assert_eq!(a.tracked_sockets(), 0);
    // The orphaned socket finishes closing later: the process does not come back.
    s.state(&mut a, FinWait1, FinWait2);
    assert!(a.process(100).is_none());
    assert_eq!(a.stats.events_after_prune, 1);
}

#[test]
fn a_reused_pid_is_a_new_process() {
    let mut a = Aggregator::default();
    client_closes_first(&mut a, 1, 100, 40000);
    let mut newer = Sock::new(2, 100, "127.0.0.1:40001", "127.0.0.1:8080");
    newer.owner = Some(Owner { key: ProcessKey { pid: 100, start_ns: 999_999 }, comm: "curl".into() });
    newer.state(&mut a, Close, SynSent);
    let p = a.process(100).unwrap();
    assert_eq!(p.comm, "curl");
    assert_eq!(p.outbound[&ep("127.0.0.1:8080")].connections, 0);
    assert_eq!(tw(&a, 100, Direction::Outbound, "127.0.0.1:8080"), 0, "the old process's TIME_WAIT went with it");
    // A late event of the old process is not charged to the new one.
    let mut older = Sock::new(3, 100, "127.0.0.1:40002", "127.0.0.1:8080");
    older.state(&mut a, Close, SynSent);
    assert_eq!(a.process(100).unwrap().key.start_ns, 999_999);
    assert_eq!(a.process(100).unwrap().outbound[&ep("127.0.0.1:8080")].sockets.get(SynSent), 1);
}

#[test]
fn time_wait_follows_reconciliation() {
    let mut a = Aggregator::default();
    client_closes_first(&mut a, 1, 100, 40000);
    client_closes_first(&mut a, 2, 100, 40001);
    assert_eq!(tw(&a, 100, Direction::Outbound, "127.0.0.1:8080"), 2);
    let k = KernelTimeWait {
        local: "127.0.0.1:40000".parse().unwrap(),
        remote: "127.0.0.1:8080".parse().unwrap(),
        substate: TimeWait,
    };
    a.reconcile_time_wait(7, 10 * MS, &[k], 11 * MS);
    assert_eq!(tw(&a, 100, Direction::Outbound, "127.0.0.1:8080"), 2, "one miss is not enough");
    a.reconcile_time_wait(7, 12 * MS, &[k], 13 * MS);
    assert_eq!(tw(&a, 100, Direction::Outbound, "127.0.0.1:8080"), 1);
}

/// The records the kernel really sends for a connection each way: the addresses are complete
/// only at establishment (a connect has no port yet at SYN_SENT, and gets it in a compact
/// record; an accepted connection has no peer at SYN_RECV, and gets it in a full one), and the
/// close carries none. TIME_WAIT is keyed by the complete ones: the kernel's table confirms
/// both.
#[test]
fn time_wait_is_keyed_by_the_addresses_known_at_establishment() {
    let mut a = Aggregator::default();
    let mut c = Sock::new(1, 100, "127.0.0.1:0", "127.0.0.1:8080");
    c.state(&mut a, Close, SynSent);
    c.connected(&mut a, 40000);
    c.compact(&mut a, Established, FinWait1);
    c.compact(&mut a, FinWait1, FinWait2);
    c.compact(&mut a, FinWait2, Close);

    let mut l = Sock::new(2, 200, "127.0.0.1:9090", "0.0.0.0:0");
    l.state(&mut a, Close, Listen);
    let mut s = Sock::new(3, 200, "127.0.0.1:9090", "0.0.0.0:0");
    s.state(&mut a, Listen, SynRecv);
    s.remote = ep("127.0.0.1:50000");
    s.state(&mut a, SynRecv, Established);
    s.compact(&mut a, Established, FinWait1);
    s.compact(&mut a, FinWait1, FinWait2);
    s.compact(&mut a, FinWait2, Close);

    assert_eq!(out(&a, 100, "127.0.0.1:8080").closed_by_local, 1);
    assert_eq!(inb(&a, 200, "127.0.0.1:9090").closed_by_local, 1);
    let kernel = |local: &str, remote: &str| KernelTimeWait {
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        substate: TimeWait,
    };
    let table = [kernel("127.0.0.1:40000", "127.0.0.1:8080"), kernel("127.0.0.1:9090", "127.0.0.1:50000")];
    a.reconcile_time_wait(7, 10 * MS, &table, 11 * MS);
    assert_eq!(tw(&a, 100, Direction::Outbound, "127.0.0.1:8080"), 1);
    assert_eq!(tw(&a, 200, Direction::Inbound, "127.0.0.1:9090"), 1);
    // And an entry the kernel no longer has goes (at the second pass that misses it).
    a.reconcile_time_wait(7, 12 * MS, &table[..1], 13 * MS);
    a.reconcile_time_wait(7, 14 * MS, &table[..1], 15 * MS);
    assert_eq!(tw(&a, 200, Direction::Inbound, "127.0.0.1:9090"), 0);
}

#[test]
fn the_kernel_owner_moves_a_socket_between_processes() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    s.owner = Some(owner(200));
    s.state(&mut a, Established, CloseWait);
    assert_eq!(out(&a, 100, "127.0.0.1:8080").sockets.total(), 0);
    assert_eq!(out(&a, 200, "127.0.0.1:8080").sockets.get(CloseWait), 1);
    assert_eq!(out(&a, 200, "127.0.0.1:8080").closed_by_peer, 1);
}

fn seed_socket(pid: u32, local: &str, remote: &str, state: TcpState) -> SeedSocket {
    SeedSocket { netns: 7, local: ep(local), remote: ep(remote), state, owner: owner(pid) }
}

#[test]
fn seeded_sockets_count_at_once_and_are_adopted_by_their_first_event() {
    let mut a = Aggregator::default();
    a.seed(
        &[
            // A worker (11) holds a connection accepted on the master's (10) listener.
            seed_socket(11, "127.0.0.1:8080", "127.0.0.1:50000", Established),
            seed_socket(10, "0.0.0.0:8080", "0.0.0.0:0", Listen),
            // A client with a leaked CLOSE_WAIT socket.
            seed_socket(12, "127.0.0.1:40000", "10.0.0.9:443", CloseWait),
        ],
        0,
    );
    assert_eq!(inb(&a, 10, "0.0.0.0:8080").sockets.get(Listen), 1);
    assert_eq!(inb(&a, 11, "0.0.0.0:8080").sockets.get(Established), 1, "keyed by the listener");
    assert_eq!(out(&a, 12, "10.0.0.9:443").sockets.get(CloseWait), 1);
    assert_eq!(out(&a, 12, "10.0.0.9:443").connections, 0);

    // The leaked socket finally closes; the kernel has no owner for it.
    let mut s = Sock::new(0x77, 12, "127.0.0.1:40000", "10.0.0.9:443");
    s.owner = None;
    s.state(&mut a, CloseWait, LastAck);
    assert_eq!(out(&a, 12, "10.0.0.9:443").sockets.get(LastAck), 1);
    assert_eq!(out(&a, 12, "10.0.0.9:443").sockets.get(CloseWait), 0);
    s.close_with(&mut a, LastAck, 0);
    assert_eq!(out(&a, 12, "10.0.0.9:443").sockets.total(), 0);
    assert_eq!(out(&a, 12, "10.0.0.9:443").closed_by_peer, 0, "its close was counted before we looked");
    assert_eq!(a.stats.unattributed_events, 0);

    // A new connection to the old listener: the kernel names the listener's owner.
    let mut c = Sock::new(0x88, 10, "127.0.0.1:8080", "127.0.0.1:50001");
    c.state(&mut a, Listen, SynRecv);
    c.state(&mut a, SynRecv, Established);
    assert_eq!(inb(&a, 10, "0.0.0.0:8080").sockets.get(Established), 1);
    assert!(a.process(10).unwrap().outbound.is_empty());
}

#[test]
fn a_snapshot_never_duplicates_tracked_or_recently_closed_sockets() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    let mut gone = Sock::new(2, 100, "127.0.0.1:40001", "127.0.0.1:8080");
    gone.owner = None;
    gone.close_with(&mut a, Established, 0);
    a.seed(
        &[
            seed_socket(100, "127.0.0.1:40000", "127.0.0.1:8080", Established),
            seed_socket(100, "127.0.0.1:40001", "127.0.0.1:8080", Established),
        ],
        0,
    );
    assert_eq!(out(&a, 100, "127.0.0.1:8080").sockets.get(Established), 1);
}

fn io(sent_runs: u64, recv_runs: u64) -> IoCounts {
    IoCounts { bytes_sent: sent_runs * 100, bytes_received: recv_runs * 1000, send_runs: sent_runs, recv_runs }
}

#[test]
fn requests_on_a_long_lived_connection_are_flushed_then_handed_over_at_close() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    a.flush_io(&[(1, io(50, 50)), (999, io(7, 7))]);
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!((st.requests, st.bytes_sent, st.bytes_received), (50, 5000, 50_000));
    a.flush_io(&[(1, io(50, 50))]);
    assert_eq!(out(&a, 100, "127.0.0.1:8080").requests, 50, "a flush adds only what is new");
    assert_eq!(out(&a, 100, "127.0.0.1:8080").requests_per_connection.count, 0, "still open");
    // A second record for the same address in the kernel's table (a socket there before, whose
    // close was never reported): neither is applied, or each flush would add the other's counts.
    a.flush_io(&[(1, io(60, 60)), (1, io(3, 3))]);
    a.flush_io(&[(1, io(3, 3)), (1, io(60, 60))]);
    assert_eq!(out(&a, 100, "127.0.0.1:8080").requests, 50);
    assert_eq!(out(&a, 100, "127.0.0.1:8080").bytes_sent, 5000);
    s.io = io(100, 100);
    s.state(&mut a, Established, FinWait1);
    s.state(&mut a, FinWait1, FinWait2);
    s.close_with(&mut a, FinWait2, 0);
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!(st.requests, 100);
    assert_eq!(st.bytes_sent, 10_000);
    assert_eq!(st.requests_per_connection.buckets().collect::<Vec<_>>(), vec![(128, 1)]);
    assert_eq!(st.requests_per_connection.sum, 100);
    assert_eq!(st.new_connections_per_second(s.t), 1.0 / 60.0);
}

#[test]
fn one_request_per_connection_without_reuse() {
    let mut a = Aggregator::default();
    for i in 0..100u64 {
        let mut s = Sock::new(10 + i, 100, &format!("127.0.0.1:{}", 40000 + i), "127.0.0.1:8080");
        s.io = io(1, 1);
        s.state(&mut a, Close, SynSent);
        s.state(&mut a, SynSent, Established);
        s.state(&mut a, Established, FinWait1);
        s.state(&mut a, FinWait1, FinWait2);
        s.close_with(&mut a, FinWait2, 0);
    }
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!((st.connections, st.requests), (100, 100));
    assert_eq!(st.requests_per_connection.buckets().collect::<Vec<_>>(), vec![(1, 100)]);
}

#[test]
fn server_requests_start_with_a_receive() {
    let mut a = Aggregator::default();
    let mut l = Sock::new(1, 10, "0.0.0.0:6379", "0.0.0.0:0");
    l.state(&mut a, Close, Listen);
    let mut c = Sock::new(2, 10, "127.0.0.1:6379", "127.0.0.1:50000");
    c.state(&mut a, Listen, SynRecv);
    c.state(&mut a, SynRecv, Established);
    c.other(&mut a, EventKind::Claim, 0);
    c.io = IoCounts { bytes_sent: 10, bytes_received: 20, send_runs: 3, recv_runs: 4 };
    c.state(&mut a, Established, CloseWait);
    c.state(&mut a, CloseWait, LastAck);
    c.close_with(&mut a, LastAck, 0);
    let st = inb(&a, 10, "0.0.0.0:6379");
    assert_eq!(st.requests, 4);
    assert_eq!(st.connections, 1);
    assert_eq!(st.requests_per_connection.buckets().collect::<Vec<_>>(), vec![(4, 1)]);
}

/// A client that leaks: 30 connections the server closes, never closed by the client.
fn leak(a: &mut Aggregator, pid: u32, n: u64, start_sk: u64, t0: u64) -> Vec<Sock> {
    (0..n)
        .map(|i| {
            let mut s = Sock::new(start_sk + i, pid, &format!("127.0.0.1:{}", 41000 + i), "127.0.0.1:8080");
            s.t = t0 + i * 100 * MS;
            s.state(a, Close, SynSent);
            s.state(a, SynSent, Established);
            s.state(a, Established, CloseWait);
            s
        })
        .collect()
}

#[test]
fn a_close_wait_leak_starts_a_finding_and_closing_clears_it() {
    let mut a = Aggregator::default();
    let mut socks = leak(&mut a, 100, 30, 1, SECOND);
    let cw = |a: &Aggregator, now| out(a, 100, "127.0.0.1:8080").close_wait.status(now, a.close_wait_config());
    for s in 1..=30 {
        a.tick(s * SECOND);
    }
    assert_eq!(cw(&a, 30 * SECOND).verdict, Verdict::PooledIdle);
    assert!(a.alerts(30 * SECOND).is_empty());
    for s in 31..=35 {
        a.tick(s * SECOND);
    }
    let alerts = a.alerts(35 * SECOND);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].process, key(100));
    assert_eq!(alerts[0].peer, ep("127.0.0.1:8080"));
    assert_eq!(alerts[0].status.count, 30);
    assert_eq!(alerts[0].since_ns, 32 * SECOND, "the first tick with the oldest 30 s old");
    let changes = a.take_alert_changes();
    assert_eq!(changes.len(), 1);
    assert!(changes[0].started);
    // The client closes them all.
    for s in socks.iter_mut() {
        s.t = 40 * SECOND;
        s.state(&mut a, CloseWait, LastAck);
        s.close_with(&mut a, LastAck, 0);
    }
    a.tick(41 * SECOND);
    assert!(a.alerts(41 * SECOND).is_empty());
    let changes = a.take_alert_changes();
    assert_eq!(changes.len(), 1);
    assert!(!changes[0].started);
    assert_eq!(cw(&a, 41 * SECOND).verdict, Verdict::None);
}

#[test]
fn close_wait_follows_a_socket_moved_to_another_process() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    s.state(&mut a, Established, CloseWait);
    s.owner = Some(owner(200));
    s.other(&mut a, EventKind::ErrorReport, libc::EPIPE);
    s.state(&mut a, CloseWait, LastAck);
    assert_eq!(out(&a, 100, "127.0.0.1:8080").close_wait.count(), 0);
    assert_eq!(out(&a, 200, "127.0.0.1:8080").close_wait.count(), 0);
    assert_eq!(out(&a, 200, "127.0.0.1:8080").sockets.get(LastAck), 1);
}

#[test]
fn pruning_a_leaking_process_clears_its_finding() {
    let mut a = Aggregator::new(Config { exited_retention_ns: SECOND, ..Config::default() });
    let _socks = leak(&mut a, 100, 30, 1, SECOND);
    for s in 1..=40 {
        a.tick(s * SECOND);
    }
    assert_eq!(a.alerts(40 * SECOND).len(), 1);
    a.take_alert_changes();
    a.mark_exited(key(100), 40 * SECOND);
    a.tick(42 * SECOND);
    assert!(a.process(100).is_none());
    assert!(a.alerts(42 * SECOND).is_empty());
    let changes = a.take_alert_changes();
    assert_eq!(changes.len(), 1);
    assert!(!changes[0].started);
}

#[test]
fn a_compact_transition_of_an_unknown_socket_is_not_guessed_at() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    let mut ev = s.ev(EventKind::State { old: Established, new: FinWait1 }, 0);
    ev.has_tuple = false;
    ev.owner = None;
    a.apply(&ev);
    assert_eq!(a.stats.unattributed_events, 1);
    assert_eq!(a.processes().count(), 0);
    assert_eq!(a.tracked_sockets(), 0);
}

/// The chunks of a handshake recorded by `tls/testdata/make.py`, as the client's socket `sk`
/// sees them.
fn tls_chunks(name: &str, sk: u64, t0: u64) -> Vec<crate::tls::Chunk> {
    crate::tls::tests::recorded(name)
        .into_iter()
        .enumerate()
        .map(|(i, (dir, data))| crate::tls::Chunk { ts_ns: t0 + i as u64 * MS, sk, dir, len: data.len() as u32, data })
        .collect()
}

#[test]
fn a_tls_handshake_is_counted_once_and_its_exchanges_are_not_requests() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8443");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    // ClientHello; Finished; the request: 3 runs of sends, 2 of them handshake.
    for c in tls_chunks("tls13_full", 1, s.t) {
        a.apply_tls(&c);
    }
    a.flush_io(&[(1, io(3, 3))]);
    let st = out(&a, 100, "127.0.0.1:8443");
    assert_eq!(st.requests, 1);
    let t = st.tls.as_deref().expect("a handshake");
    assert_eq!(t.counts, crate::tls::Counts { handshakes: 1, resumed: 0, failed: 0 });
    assert_eq!(t.server_names["api.example.test"].handshakes, 1);
    assert_eq!(t.versions["TLS1.3"], 1);
    assert_eq!(t.durations.count, 1);
    s.io = io(4, 4);
    s.close_with(&mut a, Established, 0);
    let st = out(&a, 100, "127.0.0.1:8443");
    assert_eq!(st.requests, 2, "one more request before the close");
    assert_eq!(st.requests_per_connection.sum, 2);
    assert_eq!(st.tls.as_deref().unwrap().counts.handshakes, 1, "the close adds no handshake");
}

#[test]
fn a_connection_closed_during_its_handshake_is_a_failed_handshake() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8443");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    for c in tls_chunks("tls13_full", 1, s.t).iter().take(2) {
        a.apply_tls(c);
    }
    assert!(out(&a, 100, "127.0.0.1:8443").tls.is_none(), "under way: nothing decided yet");
    s.close_with(&mut a, Established, 0);
    let t = out(&a, 100, "127.0.0.1:8443").tls.as_deref().cloned().expect("decided at close");
    assert_eq!(t.counts, crate::tls::Counts { handshakes: 1, resumed: 0, failed: 1 });
    assert_eq!(t.durations.count, 0);
    // Chunks of sockets observer does not track are ignored.
    for c in tls_chunks("tls13_full", 99, 0) {
        a.apply_tls(&c);
    }
    assert_eq!(a.stats.tls_chunks, 2 + 6);
    assert_eq!(out(&a, 100, "127.0.0.1:8443").tls.as_deref().unwrap().counts.handshakes, 1);
}

/// The audit finds a socket in TIME_WAIT: its connection ends when its TIME_WAIT began (the
/// kernel's timer says when), not at the audit, seconds later.
#[test]
fn a_socket_found_in_time_wait_ends_when_its_time_wait_began() {
    let (mut a, s) = server_socket_in_fin_wait1();
    let established = s.t - MS;
    let found = StaleSlot { closed_by_ns: Some(s.t + 3 * MS), ..s.stale_slot(Gone::TimeWait, IoCounts::default()) };
    assert!(a.close_unreported(&found, s.t + 5 * SECOND));
    let st = inb(&a, 200, "127.0.0.1:8080");
    assert_eq!((st.lifetimes.count, st.lifetimes.max_ns), (1, s.t + 3 * MS - established));

    // Without the kernel's word, at the audit.
    let (mut a, s) = server_socket_in_fin_wait1();
    assert!(a.close_unreported(&s.stale_slot(Gone::Missing, IoCounts::default()), s.t + 5 * SECOND));
    assert_eq!(inb(&a, 200, "127.0.0.1:8080").lifetimes.max_ns, s.t + 5 * SECOND - (s.t - MS));

    // A time before the connection was established (a clock step, say) is not believed.
    let (mut a, s) = server_socket_in_fin_wait1();
    let found = StaleSlot { closed_by_ns: Some(1), ..s.stale_slot(Gone::TimeWait, IoCounts::default()) };
    assert!(a.close_unreported(&found, s.t + 5 * SECOND));
    assert_eq!(inb(&a, 200, "127.0.0.1:8080").lifetimes.max_ns, 0);
}

/// A socket set aside when a new socket took its address ends by then; if the audit then finds
/// it in TIME_WAIT, by the start of its TIME_WAIT if that came first.
#[test]
fn a_socket_set_aside_ends_by_its_replacement_or_its_time_wait_whichever_came_first() {
    // (TIME_WAIT began after FIN_WAIT1, lifetime): set aside 10 ms after FIN_WAIT1, 11 ms after
    // it was established.
    for (time_wait, lifetime) in [(2 * MS, 3 * MS), (60 * MS, 11 * MS)] {
        let (mut a, s) = server_socket_in_fin_wait1();
        let mut s2 = Sock::new(1, 200, "127.0.0.1:8080", "127.0.0.1:40001");
        s2.t = s.t + 9 * MS; // its first record, at +10 ms, sets the first socket aside
        accepted(&mut a, &mut s2);
        assert_eq!(a.unreported_closes(), 1);
        let found =
            StaleSlot { closed_by_ns: Some(s.t + time_wait), ..s.stale_slot(Gone::TimeWait, IoCounts::default()) };
        assert!(a.close_unreported(&found, s.t + 5 * SECOND));
        let l = &inb(&a, 200, "127.0.0.1:8080").lifetimes;
        assert_eq!((l.count, l.max_ns), (1, lifetime), "TIME_WAIT {time_wait} ns after FIN_WAIT1");
    }
}
