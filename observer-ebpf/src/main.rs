//! observer's kernel programs.
//!
//! Small and dumb on purpose: record who owns each TCP socket (in process context: connect,
//! listen, and the first send or receive of an accepted connection) in a table keyed by the
//! socket, count what it sends and receives there, and report its state changes. All
//! aggregation happens in user space.
//!
//! The socket programs are BTF tracepoints: they get the socket as a typed pointer and cost less
//! per hit than classic tracepoints.
#![no_std]
#![no_main]
// Atomic adds on storage values (the eBPF crate is always built with nightly, see aya-build).
#![allow(internal_features)]
#![feature(core_intrinsics)]

#[cfg(feature = "bench")]
mod bench;
mod kernel;
mod maps;
mod records;
mod sockets;
mod variant;

use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use aya_log_ebpf::{debug, warn};
use maps::{COUNTERS, EVENTS, IO_SOURCE, LISTENERS, OFFSETS, STATE_HANDLED, TLS_CAPTURE, TLS_SCRATCH, count};
use observer_common::{
    Claimed, Closed, Event, IDLE_NEVER, KernelOffsets, ListenerKey, ListenerValue, OverflowRecord, Owner, SockState,
    TlsChunkHeader, Transition, counter, flags, io_dir, io_source, kind, tcp_state, tls_capture,
};
use records::{BPF_RB_NO_WAKEUP, Record, emit, reserve};
use variant::{Current, Kernel, Legacy};

const MSG_PEEK: i64 = 2;

/// CLOCK_MONOTONIC. (The coarse clock, a few ns instead of about 60 on a virtual machine, is
/// refused to tracing programs: they may run inside the timekeeping code. "program of this type
/// cannot use helper bpf_ktime_get_coarse_ns#160", tp_btf on 6.18 included.)
#[inline(always)]
fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// The low 32 bits of `jiffies`: a load the verifier inlines (no clock read), to read the clock
/// once per tick at most where that is precise enough.
#[inline(always)]
fn tick() -> u32 {
    unsafe { aya_ebpf::helpers::generated::bpf_jiffies64() as u32 }
}

/// [`Transition::arg`] into CLOSE_WAIT: milliseconds from `last_io_ns` (0: never) to `ts_ns`.
#[inline(always)]
fn idle_ms(ts_ns: u64, last_io_ns: u64) -> u32 {
    if last_io_ns == 0 {
        return IDLE_NEVER;
    }
    let ms = ts_ns.saturating_sub(last_io_ns) / 1_000_000;
    if ms < u64::from(IDLE_NEVER) { ms as u32 } else { IDLE_NEVER - 1 }
}

/// Reserve an [`Event`], zeroed, with its header: filled in place (no copy of a stack struct),
/// then submitted.
#[inline(always)]
fn reserve_event(event_kind: u8, sk: u64, ts_ns: u64) -> Option<Record<Event>> {
    let mut entry = reserve::<Event>()?;
    let e = entry.as_mut_ptr();
    unsafe { zero_words(e) };
    unsafe {
        (*e).kind = event_kind;
        (*e).sk = sk;
        (*e).ts_ns = ts_ns;
    }
    Some(entry)
}

/// Zero `*p` with word writes. Zeroing a struct as a whole, or building one with zero or padding
/// fields, compiles to a call to a byte-at-a-time memset subprogram: 4 instructions per byte.
///
/// # Safety
/// `p` must be valid for writes of a `T`, whose size is a multiple of 8.
#[inline(always)]
pub(crate) unsafe fn zero_words<T>(p: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8)) };
    let words = p as *mut u64;
    for i in 0..size_of::<T>() / 8 {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// Queue a [`Transition`], written in place (built on the stack, its padding would be zeroed by
/// a memset call).
#[inline(always)]
fn emit_transition(ts_ns: u64, sk: u64, old: u8, new: u8, arg: u32) {
    let Some(mut entry) = reserve::<Transition>() else { return };
    let t = entry.as_mut_ptr();
    unsafe {
        zero_words(t);
        (*t).ts_ns = ts_ns;
        (*t).sk = sk;
        (*t).kind = kind::TRANSITION;
        (*t).oldstate = old;
        (*t).newstate = new;
        (*t).arg = arg;
    }
    entry.submit();
}

/// `sk` must be the typed pointer the program was handed (not `ev.sk`, a plain number).
#[inline(always)]
fn set_netns(off: &KernelOffsets, sk: *mut c_void, ev: &mut Event) {
    if let Some(netns) = kernel::sock_netns(off, sk as u64) {
        ev.netns = netns;
        ev.flags |= flags::NETNS_KNOWN;
    }
}

#[inline(always)]
fn with_owner(ev: &mut Event, owner: &Owner) {
    ev.owner = *owner;
    ev.flags |= flags::OWNER_KNOWN;
}

#[inline(always)]
fn listener_key(ev: &Event) -> ListenerKey {
    ListenerKey { netns: ev.netns, family: ev.family, port: ev.sport, addr: ev.saddr }
}

// ---------------------------------------------------------------------------------------------
// sock/inet_sock_set_state (sk, oldstate, newstate)
// ---------------------------------------------------------------------------------------------

// Two programs on this tracepoint, attached in this order and run in this order for every state
// change, so that each state change is handled exactly once even when the kernel skips
// `inet_sock_set_state` for it.
//
// The kernel does not run a program that is already running on the same CPU (its recursion
// guard: the run is skipped, and counted in the program's `recursion_misses`). The state program
// also runs in process context (connect, close, listen), where an interrupt's exit can run
// pending softirq work on the same CPU: a delayed ACK's timer completing another socket's close,
// say, whose state changes the kernel then skips for `inet_sock_set_state`. Measured before these
// programs existed: 880 state changes skipped in 20 s of servers closing first while clients held
// their sockets, and sockets left in FIN_WAIT1 for ever as far as observer knew.
//
// `inet_sock_set_state` writes down which state change it handles (the socket and both states)
// before it handles it; `inet_sock_set_state_nested` handles the state change unless it finds it
// written down, and then strikes it out. The decision rests on which state change it is, not on
// a flag raised and lowered by the programs' first and last instructions: the kernel's guard is
// up a little before a program's first instruction and after its last one, and a state change
// that interrupts a program there is handled all the same.
//
// One entry per level of nesting, and there are two: a state change in process context (the
// socket is locked by its process, `sk_lock.owned`) and one in a softirq (never on a socket a
// process holds: TCP queues the packet for the process instead, and its timers wait). A softirq
// runs only between the first program and the second of a process's state change, or inside one
// of them; each of its state changes takes the softirq's entry, so the process's entry is still
// there for the second program. (One list for all overwrote it: a softirq often changes the
// state of several sockets.)
// - A state change that interrupts the first program, anywhere: skipped by the kernel for it, not
//   written down, handled by the second.
// - One that interrupts the second program: handled by the first (the second is skipped for
//   it); its entry stays until the next state change in a softirq on this CPU replaces it.
// - A softirq does not nest in a softirq, and hard interrupts change no TCP state: the two
//   programs are never both skipped.

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    state_first::<Current>(&ctx)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: BtfTracePointContext) -> u32 {
    state_nested::<Current>(&ctx)
}

/// The same two programs for kernels before 5.12 (see `variant`).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_legacy(ctx: BtfTracePointContext) -> u32 {
    state_first::<Legacy>(&ctx)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested_legacy(ctx: BtfTracePointContext) -> u32 {
    state_nested::<Legacy>(&ctx)
}

#[inline(always)]
fn state_first<K: Kernel>(ctx: &BtfTracePointContext) -> u32 {
    let sk: *mut c_void = ctx.arg(0);
    if let Some(handled) = STATE_HANDLED.get_ptr_mut(0) {
        let level = nesting_level(sk);
        unsafe {
            core::ptr::write_volatile(&mut (*handled).sk[level], sk as u64);
            core::ptr::write_volatile(&mut (*handled).change[level], state_change(ctx));
        }
    }
    on_state::<K>(ctx);
    0
}

#[inline(always)]
fn state_nested<K: Kernel>(ctx: &BtfTracePointContext) -> u32 {
    let sk: *mut c_void = ctx.arg(0);
    let Some(handled) = STATE_HANDLED.get_ptr_mut(0) else { return 0 };
    let level = nesting_level(sk);
    unsafe {
        if core::ptr::read_volatile(&(*handled).sk[level]) == sk as u64
            && core::ptr::read_volatile(&(*handled).change[level]) == state_change(ctx)
        {
            core::ptr::write_volatile(&mut (*handled).sk[level], 0);
            return 0;
        }
    }
    count(counter::STATE_NESTED);
    on_state::<K>(ctx);
    0
}

/// Loaded, never attached: whether the kernel accepts what the [`Current`] programs use (a
/// compare-and-swap, the socket cookie helper, the typed current task). The daemon loads the
/// [`Legacy`] ones where it does not.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn probe_current(ctx: BtfTracePointContext) -> u32 {
    let sk: *mut c_void = ctx.arg(0);
    let cookie = unsafe { aya_ebpf::helpers::generated::bpf_get_socket_cookie(sk) };
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task_btf() } as u64;
    let start: u64 = kernel::sock_field(task, OFFSETS.load().task_start_boottime);
    if let Some(c) = COUNTERS.get_ptr_mut(counter::PROBE) {
        unsafe {
            core::intrinsics::atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                c,
                0,
                cookie ^ start,
            )
        };
    }
    0
}

/// 0 for a state change in process context, 1 for one in a softirq (see above).
#[inline(always)]
fn nesting_level(sk: *mut c_void) -> usize {
    usize::from(kernel::sock_field::<i32>(sk as u64, OFFSETS.load().sock_lock_owned) == 0)
}

/// The state change's two states, as one word (never 0).
#[inline(always)]
fn state_change(ctx: &BtfTracePointContext) -> u64 {
    let old = ctx.arg::<i64>(1) as u64 & 0xff;
    let new = ctx.arg::<i64>(2) as u64 & 0xff;
    1 << 16 | old << 8 | new
}

#[inline(always)]
fn on_state<K: Kernel>(ctx: &BtfTracePointContext) {
    let sk: *mut c_void = ctx.arg(0);
    let old = ctx.arg::<i64>(1) as u8;
    let new = ctx.arg::<i64>(2) as u8;
    if old == tcp_state::LISTEN && new == tcp_state::SYN_RECV {
        track_child::<K>(ctx, sk);
        return;
    }
    let creation = (old == tcp_state::CLOSE && new == tcp_state::SYN_SENT) || new == tcp_state::LISTEN;
    let mut tracked = if creation { sockets::Tracked::NONE } else { sockets::find::<K>(&OFFSETS.load(), sk) };
    if tracked.state.is_null() && old == tcp_state::SYN_RECV {
        // A child whose creation was not reported (some kernels, 6.12 among them, do not report
        // LISTEN -> SYN_RECV): tracked now, from its listener, and announced by this record.
        track_child::<K>(ctx, sk);
        tracked = sockets::find::<K>(&OFFSETS.load(), sk);
    }
    let st = tracked.state;
    if K::LEGACY && IO_SOURCE.load() == io_source::SEQUENCE && !st.is_null() {
        // Every record is in the overflow map there, with its sequence marks.
        sequence_on_state(sk, st as *mut OverflowRecord, old, new);
    }
    // The common cases on every connection, for a socket user space already knows: nothing but
    // the state changed (and, when a connect succeeds, the port it got), or it closed. Full
    // events instead when user space needs the addresses: the other ends of SYN_SENT (a failed
    // connect's port tells why it failed), of SYN_RECV (an accepted connection's first record:
    // its peer is only filled in after its creation), and of LISTEN (which listener closed).
    if st.is_null() {
        // Not tracked (yet): below.
    } else if old == tcp_state::SYN_SENT && new == tcp_state::ESTABLISHED {
        let port = kernel::sock_field::<u16>(sk as u64, OFFSETS.load().sock_num);
        emit_transition(now(), sk as u64, old, new, u32::from(port));
        return;
    } else if old != tcp_state::SYN_SENT && old != tcp_state::SYN_RECV && old != tcp_state::LISTEN {
        if new == tcp_state::CLOSE_WAIT {
            // The peer's FIN (from ESTABLISHED): how long the application had left it idle.
            let ts = now();
            emit_transition(ts, sk as u64, old, new, idle_ms(ts, unsafe { (*st).last_io_ns }));
        } else if new != tcp_state::CLOSE {
            emit_transition(0, sk as u64, old, new, 0);
        } else {
            // Read before the record goes (even if the event cannot be queued: every TCP socket
            // passes through CLOSE before it is destroyed).
            let io = unsafe { (*st).io };
            sockets::forget::<K>(sk, &tracked);
            let error = kernel::sock_err(&OFFSETS.load(), sk as u64);
            emit(Closed { ts_ns: now(), sk: sk as u64, kind: kind::CLOSED, oldstate: old, _pad: [0; 2], error, io });
        }
        return;
    }
    let off = OFFSETS.load();
    if st.is_null() && !kernel::sock_is_tcp(&off, sk as u64) {
        return;
    }
    // At CLOSE the record goes (even if the event cannot be queued): every TCP socket passes
    // through CLOSE before it is destroyed.
    // (A copy written on every path, zeroed when untracked: see `sockets::Tracked`.)
    let state = if st.is_null() { zeroed_state() } else { unsafe { *st } };
    if !st.is_null() {
        if new == tcp_state::CLOSE {
            sockets::forget::<K>(sk, &tracked);
        } else if state.unannounced != 0 {
            unsafe { (*st).unannounced = 0 };
        }
    }
    let Some(mut entry) = reserve_event(kind::STATE, sk as u64, now()) else {
        #[cfg(feature = "bench")]
        if records::table_only() {
            bench::track_unreported::<K>(&off, sk, old, new);
        }
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.oldstate = old;
    ev.newstate = new;
    kernel::sock_tuple(&off, sk as u64, ev);
    set_netns(&off, sk, ev);
    match (old, new) {
        // connect(): process context, the caller owns the socket.
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => {
            let (owner, t) = track_own::<K>(&off, sk, ev.netns, true);
            ev.cookie = t.cookie;
            if t.tracked {
                with_owner(ev, &owner);
            }
        }
        // listen(): process context.
        (_, tcp_state::LISTEN) => {
            let (owner, t) = track_own::<K>(&off, sk, ev.netns, false);
            ev.cookie = t.cookie;
            if t.tracked {
                with_owner(ev, &owner);
            }
            let value = ListenerValue { sk: sk as u64, owner };
            if LISTENERS.insert(listener_key(ev), value, 0).is_ok() {
                count(counter::LISTENER_INSERTED);
            } else {
                count(counter::LISTENER_INSERT_FAILED);
                warn!(ctx, "LISTENERS insert failed for port {}", ev.sport);
            }
        }
        _ => {
            if !st.is_null() {
                ev.cookie = tracked.id;
                with_owner(ev, &state.owner);
                if state.unannounced != 0 {
                    ev.flags |= flags::FIRST_RECORD;
                }
                if new == tcp_state::CLOSE {
                    // Hand the counters over: the record is gone.
                    ev.io = state.io;
                }
            }
            if new == tcp_state::CLOSE {
                ev.error = kernel::sock_err(&off, sk as u64);
            }
            if old == tcp_state::LISTEN && new == tcp_state::CLOSE {
                let key = listener_key(ev);
                if let Some(l) = unsafe { LISTENERS.get(key) } {
                    // 0: a listener older than the daemon, recorded by user space.
                    if (l.sk == sk as u64 || l.sk == 0) && LISTENERS.remove(key).is_ok() {
                        count(counter::LISTENER_DELETED);
                    }
                }
            }
        }
    }
    entry.submit();
}

#[inline(always)]
fn zeroed_state() -> SockState {
    let mut s = core::mem::MaybeUninit::<SockState>::uninit();
    unsafe {
        zero_words(s.as_mut_ptr());
        s.assume_init()
    }
}

/// A socket the current process creates, by a connect or a listen (process context): it owns it.
/// Its owner, and whether it is tracked. Only a connect's first bytes are looked at for TLS.
#[inline(always)]
fn track_own<K: Kernel>(off: &KernelOffsets, sk: *mut c_void, netns: u32, connect: bool) -> (Owner, sockets::Tracking) {
    let owner = kernel::current_owner::<K>(off);
    let tls = if connect { TLS_CAPTURE.load() } else { 0 };
    (owner, sockets::track::<K>(off, sk, netns, &owner, true, tls, false))
}

/// A child of a listener, created in softirq: owned by the listener's owner until a process
/// sends or receives on it (see on_io). Tracked without a record: its first one is the end of
/// SYN_RECV (right after, in the same softirq, for all but TCP Fast Open), which carries the
/// peer's address, filled in after the creation.
// The key by reference: a copy of it could compile to a memcpy call.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn track_child<K: Kernel>(ctx: &BtfTracePointContext, sk: *mut c_void) {
    let off = OFFSETS.load();
    if !kernel::sock_is_tcp(&off, sk as u64) {
        return;
    }
    let mut key = kernel::local_key(&off, sk as u64);
    // (Through the pointers: copying the value out compiles to a memset call.)
    let mut listener = LISTENERS.get_ptr(&key);
    if listener.is_none() {
        // Two word writes (an array literal compiles to a memset call).
        unsafe { zero_words(&mut key.addr as *mut [u8; 16]) };
        listener = LISTENERS.get_ptr(&key);
    }
    match listener {
        Some(l) => {
            sockets::track::<K>(&off, sk, key.netns, unsafe { &(*l).owner }, false, TLS_CAPTURE.load(), true);
        }
        None => debug!(ctx, "no listener for child socket on port {}", key.port),
    }
}

// ---------------------------------------------------------------------------------------------
// sock/sock_send_length, sock/sock_recv_length (sk, ret, flags): every sendmsg/recvmsg. The hot
// path: one lookup, counted in place, no event.
// ---------------------------------------------------------------------------------------------

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    on_io::<Current>(&ctx, io_dir::SEND);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    on_io::<Current>(&ctx, io_dir::RECV);
    0
}

/// The same for a [`Legacy`] socket table (the tracepoints are 6.3's: a kernel that has them and
/// refuses the current programs is not expected, but would count right).
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length_legacy(ctx: BtfTracePointContext) -> u32 {
    on_io::<Legacy>(&ctx, io_dir::SEND);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length_legacy(ctx: BtfTracePointContext) -> u32 {
    on_io::<Legacy>(&ctx, io_dir::RECV);
    0
}

#[inline(always)]
fn on_io<K: Kernel>(ctx: &BtfTracePointContext, dir: u32) {
    let ret = ctx.arg::<i64>(1) as i32;
    if ret <= 0 {
        return;
    }
    if dir == io_dir::RECV && ctx.arg::<i64>(2) & MSG_PEEK != 0 {
        return;
    }
    let sk: *mut c_void = ctx.arg(0);
    let st = sockets::find::<K>(&OFFSETS.load(), sk).state;
    if st.is_null() {
        return;
    }
    // Two threads may send on one socket at once: the counters are added atomically.
    let claim = unsafe {
        let io = &mut (*st).io;
        let bytes = if dir == io_dir::SEND { &mut io.bytes_sent } else { &mut io.bytes_received };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(bytes, ret as u64);
        if io.last_dir != dir {
            io.last_dir = dir;
            let runs = if dir == io_dir::SEND { &mut io.send_runs } else { &mut io.recv_runs };
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(runs, 1);
        }
        let unclaimed = io.claimed == 0;
        io.claimed = 1;
        // When: the clock is read for the first call of each tick (jiffy) only. Read on every
        // send and receive, it would nearly double these programs' cost (65 ns on the bench VM,
        // where finding the socket's record costs as much).
        let now_tick = tick();
        if (*st).last_io_tick != now_tick || (*st).last_io_ns == 0 {
            (*st).last_io_tick = now_tick;
            (*st).last_io_ns = now();
        }
        unclaimed
    };
    if claim {
        claim_socket::<K>(sk, st);
    }
    let tls = unsafe { (*st).tls };
    if tls != 0 {
        capture_tls(sk, st, dir, ret as u32, tls);
    }
}

// ---------------------------------------------------------------------------------------------
// tcp/tcp_rcv_space_adjust (sk): where the kernel has no sock_send_length or sock_recv_length
// (before 6.3), sends and receives are counted from the socket's sequence numbers instead: in
// the reading process, after each chunk it read (`io_source::SEQUENCE`). With the legacy build
// only, whose records carry the marks (`observer_common::OverflowRecord`).
// ---------------------------------------------------------------------------------------------

#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
pub fn tcp_rcv_space_adjust_legacy(ctx: BtfTracePointContext) -> u32 {
    on_read(&ctx);
    0
}

/// The application read up to `copied_seq`: what it wrote since the last update is one send
/// (an exchange, if it follows a receive), what it read since is one receive. A call that read
/// nothing new (a peek) changes nothing. The reader owns an accepted connection from its first
/// read, as with `on_io`.
#[inline(always)]
fn on_read(ctx: &BtfTracePointContext) {
    let sk: *mut c_void = ctx.arg(0);
    let off = OFFSETS.load();
    let st = sockets::find::<Legacy>(&off, sk).state;
    if st.is_null() {
        return;
    }
    let (write, copied) = kernel::tcp_seqs(&off, sk as u64);
    // Under the socket's lock (the reader holds it): plain additions.
    let claim = unsafe {
        let r = &mut *(st as *mut OverflowRecord);
        let read = copied.wrapping_sub(r.seq_copied);
        if read == 0 {
            return;
        }
        sequence_sends(r, write);
        // When (a clock read per read that took something: not the hot path of the current
        // build, which has one program run per send and per receive).
        r.state.last_io_ns = now();
        let io = &mut r.state.io;
        io.bytes_received += u64::from(read);
        r.seq_copied = copied;
        if io.last_dir != io_dir::RECV {
            io.last_dir = io_dir::RECV;
            io.recv_runs += 1;
        }
        let unclaimed = io.claimed == 0;
        io.claimed = 1;
        unclaimed
    };
    if claim {
        claim_socket::<Legacy>(sk, st);
    }
}

/// What the application wrote since the last update, up to `write`: one send.
#[inline(always)]
fn sequence_sends(r: &mut OverflowRecord, write: u32) {
    let sent = write.wrapping_sub(r.seq_write);
    if sent != 0 {
        let io = &mut r.state.io;
        io.bytes_sent += u64::from(sent);
        r.seq_write = write;
        if io.last_dir != io_dir::SEND {
            io.last_dir = io_dir::SEND;
            io.send_runs += 1;
        }
    }
}

/// Sequence numbers at a tracked socket's state change: counted from its establishment (before,
/// they hold the handshake), and brought up to date when the application closes or shuts down
/// its side (the state changes before the FIN, which takes a sequence number, is queued) or the
/// connection is aborted: the sends after its last read.
#[inline(always)]
fn sequence_on_state(sk: *mut c_void, rec: *mut OverflowRecord, old: u8, new: u8) {
    let established = new == tcp_state::ESTABLISHED;
    let open = old == tcp_state::ESTABLISHED || old == tcp_state::CLOSE_WAIT;
    let ends = open && (new == tcp_state::FIN_WAIT1 || new == tcp_state::LAST_ACK || new == tcp_state::CLOSE);
    if !established && !ends {
        return;
    }
    let (write, copied) = kernel::tcp_seqs(&OFFSETS.load(), sk as u64);
    let r = unsafe { &mut *rec };
    if established {
        r.seq_write = write;
        r.seq_copied = copied;
    } else {
        sequence_sends(r, write);
    }
}

/// The first sends and receives of a new connection, while its TLS capture budget lasts: if its
/// very first byte starts a TLS handshake record, copy the first bytes of each call to user space
/// (which parses the ClientHello and ServerHello); otherwise stop looking at the connection.
///
/// The data is read from the application's own buffer, found in the registers of the system
/// call being served (the socket tracepoints do not carry it): hooking the system calls instead
/// would put every system call of every task on the slow tracing path.
#[inline(always)]
fn capture_tls(sk: *mut c_void, st: *mut SockState, dir: u32, ret: u32, tls: u32) {
    let shift = if dir == io_dir::SEND { 0 } else { 8 };
    if (tls >> shift) & 0xff == 0 {
        return;
    }
    let Some((buf, buf_len)) = kernel::syscall_buffer() else {
        // Not a read or write through a system call we know (io_uring, sendfile, an in-kernel
        // user): the first bytes cannot be read, so the connection is not classified.
        if tls & tls_capture::CLASSIFIED == 0 {
            unsafe { (*st).tls = 0 };
        }
        return;
    };
    if tls & tls_capture::CLASSIFIED == 0 {
        let first = unsafe { aya_ebpf::helpers::bpf_probe_read_user(buf as *const u8) }.unwrap_or(0);
        if first != tls_capture::HANDSHAKE_RECORD {
            unsafe { (*st).tls = 0 };
            return;
        }
    }
    let left = (tls | tls_capture::CLASSIFIED) - (1 << shift);
    unsafe { (*st).tls = if left & 0xffff == 0 { 0 } else { left } };

    let mut n = if (ret as u64) < buf_len { ret } else { buf_len as u32 };
    if n > tls_capture::MAX_BYTES as u32 {
        n = tls_capture::MAX_BYTES as u32;
    }
    let Some(chunk) = TLS_SCRATCH.get_ptr_mut(0) else { return };
    unsafe {
        (*chunk).header = TlsChunkHeader {
            magic: tls_capture::MAGIC,
            ts_ns: now(),
            sk: sk as u64,
            len: ret,
            captured: n as u16,
            dir: dir as u8,
            _pad: 0,
        };
        let data = (*chunk).data.as_mut_ptr();
        if aya_ebpf::helpers::generated::bpf_probe_read_user(data.cast(), n, buf as *const c_void) != 0 {
            return;
        }
        // n <= MAX_BYTES already; the mask and the check give the verifier a bound it can see.
        let len = size_of::<TlsChunkHeader>() + (n as usize & (tls_capture::MAX_BYTES * 2 - 1));
        if len > size_of::<observer_common::TlsChunk>() {
            return;
        }
        let bytes = core::slice::from_raw_parts(chunk as *const u8, len);
        if records::to_ring() && EVENTS.output::<[u8]>(bytes, BPF_RB_NO_WAKEUP).is_err() {
            count(counter::EVENTS_LOST);
        }
    }
}

/// The first send or receive on a connection accepted from a listener, in the context of the
/// process doing it (the one that accepted it): it owns the socket from now on.
///
/// (Hooking accept() itself would take a syscall tracepoint, and enabling any syscall tracepoint
/// puts every syscall of every task on the slow tracing path.)
#[inline(always)]
fn claim_socket<K: Kernel>(sk: *mut c_void, st: *mut SockState) {
    let off = OFFSETS.load();
    let owner = kernel::current_owner::<K>(&off);
    unsafe { (*st).owner = owner };
    let Some(mut entry) = reserve::<Claimed>() else { return };
    let c = entry.as_mut_ptr();
    unsafe {
        zero_words(c);
        (*c).ts_ns = now();
        (*c).sk = sk as u64;
        (*c).kind = kind::CLAIM;
        (*c).owner = owner;
    }
    entry.submit();
}

// ---------------------------------------------------------------------------------------------
// Resets and errors of tracked sockets: (sk, ...)
// ---------------------------------------------------------------------------------------------

#[inline(always)]
fn socket_event(ctx: &BtfTracePointContext, event_kind: u8) {
    let sk: *mut c_void = ctx.arg(0);
    // Null for resets sent with no socket (a SYN to a closed port). A socket without a record is
    // reported too: close() sends its RST after the socket reached CLOSE (user space knows the
    // socket from its tombstone, and drops what it never tracked).
    if sk.is_null() {
        return;
    }
    let error = if event_kind == kind::ERROR_REPORT { kernel::sock_err(&OFFSETS.load(), sk as u64) } else { 0 };
    let Some(mut entry) = reserve_event(event_kind, sk as u64, now()) else { return };
    unsafe { (*entry.as_mut_ptr()).error = error };
    entry.submit();
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> u32 {
    socket_event(&ctx, kind::RESET_SENT);
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> u32 {
    socket_event(&ctx, kind::RESET_RECEIVED);
    0
}

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> u32 {
    socket_event(&ctx, kind::ERROR_REPORT);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
