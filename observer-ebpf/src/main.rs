//! observer's kernel programs.
//!
//! Small and dumb on purpose: record who owns each TCP socket (in process context: connect,
//! listen, accept) and report every state change, reset and error of that socket with its owner.
//! All aggregation happens in user space.
//!
//! Tracepoint record layouts are the kernel's stable tracepoint ABI; the daemon checks them
//! against `/sys/kernel/tracing/events/*/*/format` before loading (see `observer::tracefs`).
#![no_std]
#![no_main]
// Atomic adds on map values (the eBPF crate is always built with nightly, see aya-build).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod kernel;
mod maps;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::{debug, warn};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use maps::{CONNECTS, EVENTS, EXIT_GROUP_DEAD_OFFSET, LISTENERS, OFFSETS, SOCKETS, count};

use observer_common::{
    AF_INET, AF_INET6, Event, IPPROTO_TCP, KernelOffsets, ListenerKey, ListenerValue, Owner, PendingConnect, SockInfo,
    SockIo, counter, flags, io_dir, kind, tcp_state,
};

const EINTR: i64 = 4;
const EISCONN: i64 = 106;
const EALREADY: i64 = 114;
const EINPROGRESS: i64 = 115;
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const SS_UNCONNECTED: u32 = 1;

/// Direct read of a tracepoint record field (aligned fields only).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(offset) as *const T) }
}

/// Read of a field that is not naturally aligned in the record.
#[inline(always)]
fn field_unaligned<T>(ctx: &TracePointContext, offset: usize) -> Option<T> {
    unsafe { ctx.read_at::<T>(offset).ok() }
}

#[inline(always)]
fn emit(ev: &Event) {
    if EVENTS.output::<Event>(ev, 0).is_err() {
        count(counter::EVENTS_LOST);
    }
}

const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// Record the owner of a socket. New records are counted (with the deletes and the map's size,
/// that gives the LRU evictions); replacing an existing record (accept) is not.
#[inline(always)]
fn remember_owner(sk: u64, owner: &Owner, new_socket: bool) {
    let info = SockInfo { owner: *owner, io: SockIo::zeroed() };
    if SOCKETS.insert(sk, info, BPF_NOEXIST).is_ok() {
        count(counter::SOCKET_INSERTED);
    } else if new_socket {
        // A stale record of a previous socket at this address: start afresh.
        if SOCKETS.insert(sk, info, BPF_EXIST).is_err() {
            count(counter::SOCKET_INSERT_FAILED);
        }
    } else if let Some(p) = SOCKETS.get_ptr_mut(sk) {
        // accept(): a new owner, same socket, same counters.
        unsafe { (*p).owner = *owner };
    } else {
        count(counter::SOCKET_INSERT_FAILED);
    }
}

#[inline(always)]
fn lookup_owner(sk: u64) -> Option<Owner> {
    unsafe { SOCKETS.get(sk).map(|i| i.owner) }
}

// ---------------------------------------------------------------------------------------------
// sock/inet_sock_set_state
//   skaddr@8 oldstate@16 newstate@20 sport@24 dport@26 family@28 protocol@30
//   saddr[4]@32 daddr[4]@36 saddr_v6[16]@40 daddr_v6[16]@56
// ---------------------------------------------------------------------------------------------

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    on_state(&ctx);
    0
}

#[inline(always)]
fn on_state(ctx: &TracePointContext) {
    if field::<u16>(ctx, 30) != IPPROTO_TCP {
        return;
    }
    let sk: u64 = field(ctx, 8);
    let oldstate = field::<i32>(ctx, 16) as u8;
    let newstate = field::<i32>(ctx, 20) as u8;
    let mut ev = Event::zeroed();
    ev.kind = kind::STATE;
    ev.sk = sk;
    ev.oldstate = oldstate;
    ev.newstate = newstate;
    ev.sport = field(ctx, 24);
    ev.dport = field(ctx, 26);
    ev.family = field(ctx, 28);
    if ev.family == AF_INET {
        ev.saddr[..4].copy_from_slice(&field::<u32>(ctx, 32).to_ne_bytes());
        ev.daddr[..4].copy_from_slice(&field::<u32>(ctx, 36).to_ne_bytes());
    } else {
        ev.saddr[..8].copy_from_slice(&field::<u64>(ctx, 40).to_ne_bytes());
        ev.saddr[8..].copy_from_slice(&field::<u64>(ctx, 48).to_ne_bytes());
        ev.daddr[..8].copy_from_slice(&field::<u64>(ctx, 56).to_ne_bytes());
        ev.daddr[8..].copy_from_slice(&field::<u64>(ctx, 64).to_ne_bytes());
    }
    let off = OFFSETS.load();

    let owner = match (oldstate, newstate) {
        // connect(): process context, the caller owns the socket.
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => {
            let owner = kernel::current_owner(&off);
            remember_owner(sk, &owner, true);
            let tid = bpf_get_current_pid_tgid() as u32;
            if let Some(pending) = CONNECTS.get_ptr_mut(tid) {
                unsafe { (*pending).syn_sent = 1 };
            }
            set_netns(&off, &mut ev);
            Some(owner)
        }
        // listen(): process context.
        (_, tcp_state::LISTEN) => {
            let owner = kernel::current_owner(&off);
            remember_owner(sk, &owner, true);
            set_netns(&off, &mut ev);
            let key = ListenerKey { netns: ev.netns, family: ev.family, port: ev.sport, addr: ev.saddr };
            let value = ListenerValue { sk, owner };
            if LISTENERS.insert(key, value, 0).is_err() {
                count(counter::LISTENER_INSERT_FAILED);
                warn!(ctx, "LISTENERS insert failed for port {}", ev.sport);
            }
            Some(owner)
        }
        // A child of a listener, created in softirq: owned by the listener's owner until a
        // process accepts it.
        (tcp_state::LISTEN, tcp_state::SYN_RECV) => {
            set_netns(&off, &mut ev);
            let mut key = ListenerKey { netns: ev.netns, family: ev.family, port: ev.sport, addr: ev.saddr };
            let mut listener = unsafe { LISTENERS.get(key).copied() };
            if listener.is_none() {
                key.addr = [0; 16];
                listener = unsafe { LISTENERS.get(key).copied() };
            }
            match listener {
                Some(l) => {
                    remember_owner(sk, &l.owner, true);
                    Some(l.owner)
                }
                None => {
                    debug!(ctx, "no listener for child socket on port {}", ev.sport);
                    None
                }
            }
        }
        (tcp_state::LISTEN, tcp_state::CLOSE) => {
            set_netns(&off, &mut ev);
            let key = ListenerKey { netns: ev.netns, family: ev.family, port: ev.sport, addr: ev.saddr };
            if let Some(l) = unsafe { LISTENERS.get(key) } {
                // 0: a listener older than the daemon, recorded by user space.
                if l.sk == sk || l.sk == 0 {
                    let _ = LISTENERS.remove(key);
                }
            }
            lookup_owner(sk)
        }
        _ => lookup_owner(sk),
    };
    match owner {
        Some(o) => {
            ev.owner = o;
            ev.flags |= flags::OWNER_KNOWN;
        }
        None => {
            // User space then looks the socket up by namespace and 4-tuple.
            if ev.flags & flags::NETNS_KNOWN == 0 {
                set_netns(&off, &mut ev);
            }
        }
    }
    if newstate == tcp_state::CLOSE {
        ev.error = kernel::sock_err(&off, sk);
        // Hand over the I/O counters (the record itself lives until the socket is destroyed).
        if let Some(info) = unsafe { SOCKETS.get(sk) } {
            ev.io = info.io;
        }
    }
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(&ev);
}

#[inline(always)]
fn set_netns(off: &KernelOffsets, ev: &mut Event) {
    if let Some(netns) = kernel::sock_netns(off, ev.sk) {
        ev.netns = netns;
        ev.flags |= flags::NETNS_KNOWN;
    }
}

// ---------------------------------------------------------------------------------------------
// accept()/accept4(): the accepting process owns the new socket.
//   sys_exit_*: ret@16
// ---------------------------------------------------------------------------------------------

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept(&ctx);
    0
}

#[inline(always)]
fn on_accept(ctx: &TracePointContext) {
    let ret: i64 = field(ctx, 16);
    if ret < 0 {
        return;
    }
    let off = OFFSETS.load();
    let Some(socket) = kernel::fd_to_socket(&off, ret as u64) else { return };
    let Some(sk) = kernel::socket_sock(&off, socket) else { return };
    if !kernel::sock_is_tcp(&off, sk) {
        return;
    }
    let owner = kernel::current_owner(&off);
    remember_owner(sk, &owner, false);
    let mut ev = Event::zeroed();
    ev.kind = kind::ACCEPT;
    ev.sk = sk;
    ev.owner = owner;
    ev.flags = flags::OWNER_KNOWN;
    ev.family = kernel::sock_family(&off, sk);
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(&ev);
}

// ---------------------------------------------------------------------------------------------
// connect(): failures that happen before any SYN is sent (no route, no local port...).
//   sys_enter_connect: fd@16 uservaddr@24 addrlen@32; sys_exit_connect: ret@16
// ---------------------------------------------------------------------------------------------

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    on_connect_enter(&ctx);
    0
}

#[inline(always)]
fn on_connect_enter(ctx: &TracePointContext) {
    let fd: u64 = field(ctx, 16);
    let uaddr: u64 = field(ctx, 24);
    let off = OFFSETS.load();
    let Some(socket) = kernel::fd_to_socket(&off, fd) else { return };
    // Only a fresh connect: a second connect() on a socket already connecting is a status check.
    if kernel::socket_state(&off, socket) != Some(SS_UNCONNECTED) {
        return;
    }
    let Some(sk) = kernel::socket_sock(&off, socket) else { return };
    if !kernel::sock_is_tcp(&off, sk) {
        return;
    }
    let Ok(family) = (unsafe { bpf_probe_read_user(uaddr as *const u16) }) else { return };
    let mut pending = PendingConnect { sk, family, ..PendingConnect::default() };
    let Ok(port) = (unsafe { bpf_probe_read_user((uaddr + 2) as *const u16) }) else { return };
    pending.port = u16::from_be(port);
    if family == AF_INET {
        let Ok(a) = (unsafe { bpf_probe_read_user((uaddr + 4) as *const [u8; 4]) }) else { return };
        pending.addr[..4].copy_from_slice(&a);
    } else if family == AF_INET6 {
        let Ok(a) = (unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16]) }) else { return };
        pending.addr = a;
    } else {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if CONNECTS.insert(tid, pending, 0).is_err() {
        count(counter::CONNECT_INSERT_FAILED);
        warn!(ctx, "CONNECTS insert failed for thread {}", tid);
    }
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    on_connect_exit(&ctx);
    0
}

#[inline(always)]
fn on_connect_exit(ctx: &TracePointContext) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(pending) = (unsafe { CONNECTS.get(tid).copied() }) else { return };
    let _ = CONNECTS.remove(tid);
    let ret: i64 = field(ctx, 16);
    if ret >= 0 || pending.syn_sent != 0 {
        return;
    }
    let errno = -ret;
    if matches!(errno, EINPROGRESS | EALREADY | EISCONN | EINTR | ERESTARTSYS | ERESTARTNOINTR) {
        return;
    }
    let off = OFFSETS.load();
    let mut ev = Event::zeroed();
    ev.kind = kind::CONNECT_ERROR;
    ev.sk = pending.sk;
    ev.owner = kernel::current_owner(&off);
    ev.flags = flags::OWNER_KNOWN;
    ev.family = pending.family;
    ev.dport = pending.port;
    ev.daddr = pending.addr;
    ev.error = errno as i32;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    debug!(ctx, "connect failed before SYN: errno {}", errno);
    emit(&ev);
}

// ---------------------------------------------------------------------------------------------
// sock/inet_sk_error_report as a BTF tracepoint: the classic record has no socket address.
// ---------------------------------------------------------------------------------------------

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> u32 {
    on_error_report(&ctx);
    0
}

#[inline(always)]
fn on_error_report(ctx: &BtfTracePointContext) {
    let off = OFFSETS.load();
    if off.valid == 0 {
        return;
    }
    // Read the argument as a plain number (not a typed BTF pointer) so that it can be offset.
    let Ok(sk) = (unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const u64) }) else { return };
    if !kernel::sock_is_tcp(&off, sk) {
        return;
    }
    let Some(owner) = lookup_owner(sk) else { return };
    let mut ev = Event::zeroed();
    ev.kind = kind::ERROR_REPORT;
    ev.sk = sk;
    ev.owner = owner;
    ev.flags = flags::OWNER_KNOWN;
    ev.error = kernel::sock_err(&off, sk);
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(&ev);
}

// ---------------------------------------------------------------------------------------------
// tcp/tcp_send_reset: skbaddr@8 skaddr@16 state@24 reason@28 saddr[28]@32 daddr[28]@60
//   (saddr/daddr are sockaddr_in/sockaddr_in6)
// ---------------------------------------------------------------------------------------------

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    on_send_reset(&ctx);
    0
}

#[inline(always)]
fn on_send_reset(ctx: &TracePointContext) {
    let sk: u64 = field(ctx, 16);
    if sk == 0 {
        return;
    }
    // Resets sent by timewait or request sockets have no owner record: not charged.
    let Some(owner) = lookup_owner(sk) else { return };
    let mut ev = Event::zeroed();
    ev.kind = kind::RESET_SENT;
    ev.sk = sk;
    ev.owner = owner;
    ev.flags = flags::OWNER_KNOWN;
    ev.oldstate = field::<i32>(ctx, 24) as u8;
    ev.family = field_unaligned::<u16>(ctx, 32).unwrap_or(0);
    ev.sport = u16::from_be(field_unaligned::<u16>(ctx, 34).unwrap_or(0));
    ev.dport = u16::from_be(field_unaligned::<u16>(ctx, 62).unwrap_or(0));
    if ev.family == AF_INET {
        ev.saddr[..4].copy_from_slice(&field_unaligned::<[u8; 4]>(ctx, 36).unwrap_or([0; 4]));
        ev.daddr[..4].copy_from_slice(&field_unaligned::<[u8; 4]>(ctx, 64).unwrap_or([0; 4]));
    } else {
        ev.saddr = field_unaligned::<[u8; 16]>(ctx, 40).unwrap_or([0; 16]);
        ev.daddr = field_unaligned::<[u8; 16]>(ctx, 68).unwrap_or([0; 16]);
    }
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(&ev);
}

// ---------------------------------------------------------------------------------------------
// tcp/tcp_receive_reset: skaddr@8 sport@16 dport@18 family@20 saddr[4]@22 daddr[4]@26
//   saddr_v6[16]@30 daddr_v6[16]@46
// ---------------------------------------------------------------------------------------------

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    on_receive_reset(&ctx);
    0
}

#[inline(always)]
fn on_receive_reset(ctx: &TracePointContext) {
    let sk: u64 = field(ctx, 8);
    let Some(owner) = lookup_owner(sk) else { return };
    let mut ev = Event::zeroed();
    ev.kind = kind::RESET_RECEIVED;
    ev.sk = sk;
    ev.owner = owner;
    ev.flags = flags::OWNER_KNOWN;
    ev.sport = field(ctx, 16);
    ev.dport = field(ctx, 18);
    ev.family = field(ctx, 20);
    if ev.family == AF_INET {
        ev.saddr[..4].copy_from_slice(&field_unaligned::<[u8; 4]>(ctx, 22).unwrap_or([0; 4]));
        ev.daddr[..4].copy_from_slice(&field_unaligned::<[u8; 4]>(ctx, 26).unwrap_or([0; 4]));
    } else {
        ev.saddr = field_unaligned::<[u8; 16]>(ctx, 30).unwrap_or([0; 16]);
        ev.daddr = field_unaligned::<[u8; 16]>(ctx, 46).unwrap_or([0; 16]);
    }
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(&ev);
}

// ---------------------------------------------------------------------------------------------
// sock/sock_send_length, sock/sock_recv_length as BTF tracepoints (sk, ret, flags): every
// sendmsg/recvmsg. The hot path: one map lookup, counted in place, no event.
// ---------------------------------------------------------------------------------------------

const MSG_PEEK: i64 = 2;

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    on_io(&ctx, io_dir::SEND);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    on_io(&ctx, io_dir::RECV);
    0
}

#[inline(always)]
fn on_io(ctx: &BtfTracePointContext, dir: u32) {
    let ret = ctx.arg::<i64>(1) as i32;
    if ret <= 0 {
        return;
    }
    if dir == io_dir::RECV && ctx.arg::<i64>(2) & MSG_PEEK != 0 {
        return;
    }
    let sk: u64 = ctx.arg(0);
    // Only sockets with an owner record (TCP sockets observer tracks) are counted.
    let Some(info) = SOCKETS.get_ptr_mut(sk) else { return };
    // Two threads may send on one socket at once: the counters are added atomically.
    unsafe {
        let io = &mut (*info).io;
        let bytes = if dir == io_dir::SEND { &mut io.bytes_sent } else { &mut io.bytes_received };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(bytes, ret as u64);
        if io.last_dir != dir {
            io.last_dir = dir;
            let runs = if dir == io_dir::SEND { &mut io.send_runs } else { &mut io.recv_runs };
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(runs, 1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tcp/tcp_destroy_sock: skaddr@8. The socket is gone: forget its owner.
// ---------------------------------------------------------------------------------------------

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let sk: u64 = field(&ctx, 8);
    if SOCKETS.remove(sk).is_ok() {
        count(counter::SOCKET_DELETED);
    }
    0
}

// ---------------------------------------------------------------------------------------------
// sched/sched_process_exit: comm@8 pid@24 prio@28 [group_dead@32]
// ---------------------------------------------------------------------------------------------

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    on_exit(&ctx);
    0
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let group_dead_offset = EXIT_GROUP_DEAD_OFFSET.load();
    let last = if group_dead_offset != 0 {
        field_unaligned::<u8>(ctx, group_dead_offset as usize).unwrap_or(0) != 0
    } else {
        // Without group_dead, report the leader's exit; user space checks /proc.
        (pid_tgid >> 32) as u32 == pid_tgid as u32
    };
    if !last {
        return;
    }
    let off = OFFSETS.load();
    let mut ev = Event::zeroed();
    ev.kind = kind::PROCESS_EXIT;
    ev.owner = kernel::current_owner(&off);
    ev.flags = flags::OWNER_KNOWN;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(&ev);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
