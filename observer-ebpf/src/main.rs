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

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_seq_write, bpf_sk_storage_get},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::{debug, warn};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use maps::{EVENTS, EXIT_GROUP_DEAD_OFFSET, LISTENERS, OFFSETS, SOCKETS, count};

use observer_common::{
    AF_INET, Event, IPPROTO_TCP, IoRecord, KernelOffsets, ListenerKey, ListenerValue, Owner, SockIo, counter, flags,
    io_dir, kind, tcp_state,
};

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

/// `bpf_ringbuf_output` flags.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// `bpf_ringbuf_query`: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Wake the daemon up only past this much unread data; otherwise it drains the ring buffer on
/// its own timer. A wake-up per event costs an inter-processor interrupt (a VM exit on virtual
/// machines): microseconds on the traced task's path.
const WAKEUP_BYTES: u64 = 256 * 1024;

#[inline(always)]
fn emit(ev: &Event) {
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    if EVENTS.output::<Event>(ev, flags).is_err() {
        count(counter::EVENTS_LOST);
    }
}

const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// Record the owner of a socket. New records are counted (with the deletes and the map's size,
/// that gives the LRU evictions); replacing an existing record (accept, or a stale record at a
/// reused address) is not.
#[inline(always)]
fn remember_owner(sk: u64, owner: &Owner) {
    if SOCKETS.insert(sk, owner, BPF_NOEXIST).is_ok() {
        count(counter::SOCKET_INSERTED);
    } else if SOCKETS.insert(sk, owner, BPF_EXIST).is_err() {
        count(counter::SOCKET_INSERT_FAILED);
    }
}

#[inline(always)]
fn lookup_owner(sk: u64) -> Option<Owner> {
    unsafe { SOCKETS.get(sk).copied() }
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
            remember_owner(sk, &owner);
            set_netns(&off, &mut ev);
            Some(owner)
        }
        // listen(): process context.
        (_, tcp_state::LISTEN) => {
            let owner = kernel::current_owner(&off);
            remember_owner(sk, &owner);
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
                    remember_owner(sk, &l.owner);
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
    let sk: *mut c_void = ctx.arg(0);
    // Only sockets that got storage when observer saw them created are counted.
    let io = unsafe { bpf_sk_storage_get(maps::sock_io_map(), sk, core::ptr::null_mut(), 0) } as *mut SockIo;
    if io.is_null() {
        return;
    }
    // Two threads may send on one socket at once: the counters are added atomically.
    let claim = unsafe {
        let io = &mut *io;
        let bytes = if dir == io_dir::SEND { &mut io.bytes_sent } else { &mut io.bytes_received };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(bytes, ret as u64);
        if io.last_dir != dir {
            io.last_dir = dir;
            let runs = if dir == io_dir::SEND { &mut io.send_runs } else { &mut io.recv_runs };
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(runs, 1);
        }
        let unclaimed = io.claimed == 0;
        io.claimed = 1;
        unclaimed
    };
    if claim {
        claim_socket(sk as u64);
    }
}

/// The first send or receive on a connection accepted from a listener, in the context of the
/// process doing it (the one that accepted the connection): it owns the socket from now on.
///
/// (Hooking accept() itself would take a syscall tracepoint, and enabling any syscall tracepoint
/// puts every syscall of every task on the slow tracing path.)
#[inline(always)]
fn claim_socket(sk: u64) {
    let off = OFFSETS.load();
    let owner = kernel::current_owner(&off);
    remember_owner(sk, &owner);
    let mut ev = Event::zeroed();
    ev.kind = kind::CLAIM;
    ev.sk = sk;
    ev.owner = owner;
    ev.flags = flags::OWNER_KNOWN;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(&ev);
}

/// Iterator over the socket storage map (`iter/bpf_sk_storage_map`): writes one [`IoRecord`]
/// per socket, for the daemon's periodic read of open connections.
///
/// The context is `struct bpf_iter__bpf_sk_storage_map { meta; map; sk; value; }`.
#[unsafe(link_section = "iter/bpf_sk_storage_map")]
#[unsafe(no_mangle)]
pub fn dump_sock_io(ctx: *mut c_void) -> i32 {
    let ctx = ctx as *const u64;
    unsafe {
        let sk = *ctx.add(2);
        let value = *ctx.add(3) as *const SockIo;
        if sk == 0 || value.is_null() {
            return 0;
        }
        let meta = *ctx as *const u64;
        let seq = *meta as *mut c_void;
        let rec = IoRecord { sk, io: *value };
        bpf_seq_write(seq.cast(), core::ptr::from_ref(&rec).cast_mut().cast(), size_of::<IoRecord>() as u32);
    }
    0
}

/// BPF_SK_STORAGE_GET_F_CREATE
const SK_STORAGE_CREATE: u64 = 1;

/// `sock/inet_sock_set_state` seen with the socket as a typed pointer (sk, oldstate, newstate),
/// for its I/O storage: created with each new connection, handed over to user space (IO_FINAL)
/// when it closes. The socket-storage helpers need the typed pointer the classic tracepoint
/// does not give.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_io(ctx: BtfTracePointContext) -> u32 {
    let old = ctx.arg::<i64>(1) as u8;
    let new = ctx.arg::<i64>(2) as u8;
    let sk: *mut c_void = ctx.arg(0);
    let connected = old == tcp_state::CLOSE && new == tcp_state::SYN_SENT;
    let accepted = old == tcp_state::LISTEN && new == tcp_state::SYN_RECV;
    if connected || accepted {
        // A connecting socket is owned already; an accepted one is claimed at its first use.
        let mut init = SockIo::zeroed();
        init.claimed = u32::from(connected);
        unsafe {
            bpf_sk_storage_get(maps::sock_io_map(), sk, core::ptr::from_mut(&mut init).cast(), SK_STORAGE_CREATE)
        };
    } else if new == tcp_state::CLOSE {
        let io = unsafe { bpf_sk_storage_get(maps::sock_io_map(), sk, core::ptr::null_mut(), 0) } as *const SockIo;
        if io.is_null() {
            return 0;
        }
        let mut ev = Event::zeroed();
        ev.kind = kind::IO_FINAL;
        ev.sk = sk as u64;
        ev.io = unsafe { *io };
        ev.ts_ns = unsafe { bpf_ktime_get_ns() };
        emit(&ev);
    }
    0
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
