//! The benchmark's scaffolding, built only with the `bench` feature (`cargo xtask bench`): the
//! calibration and floor programs, and the table-only path. The product's object has none of it.

// A calibration program computes its operation's result and discards it (`& 0`).
#![allow(clippy::erasing_op)]

use core::ffi::c_void;

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use observer_common::{KernelOffsets, ListenerValue, Transition, tcp_state};

use crate::maps::OFFSETS;
use crate::maps::{EVENTS, LISTENERS};
use crate::records::{self, BPF_RB_NO_WAKEUP};
use crate::sockets;
use crate::variant::{Current, Kernel};

/// The socket's record, or null if observer does not track it.
#[inline(always)]
fn state_of(sk: *mut c_void) -> *mut observer_common::SockState {
    sockets::find::<Current>(&OFFSETS.load(), sk).state
}

/// `cargo xtask bench`'s `--bench-table-only` (no records): a connecting or listening socket is
/// tracked all the same, with what its record would have carried, so that the bench measures the
/// socket table as observer keeps it.
#[inline(always)]
pub fn track_unreported<K: Kernel>(off: &KernelOffsets, sk: *mut c_void, old: u8, new: u8) {
    let connect = old == tcp_state::CLOSE && new == tcp_state::SYN_SENT;
    if !connect && new != tcp_state::LISTEN {
        return;
    }
    let netns = crate::kernel::sock_netns(off, sk as u64).unwrap_or(0);
    let (owner, _) = crate::track_own::<K>(off, sk, netns, connect);
    if !connect {
        let value = ListenerValue { sk: sk as u64, owner };
        let _ = LISTENERS.insert(crate::kernel::local_key(off, sk as u64), value, 0);
    }
}

// Calibration (the daemon attaches them with --bench-calibration, all to `sock_send_length`): what
// `bpf_stats` reads for a program that does nothing, and for programs that do one of the
// operations observer's programs are made of. Their differences with the empty one are the price
// list the bench reports.

#[btf_tracepoint(function = "sock_send_length")]
pub fn calibrate_empty(_ctx: BtfTracePointContext) -> u32 {
    0
}

/// Read the clock.
#[btf_tracepoint(function = "sock_send_length")]
pub fn calibrate_clock(_ctx: BtfTracePointContext) -> u32 {
    crate::now() as u32 & 0
}

/// Find the socket's record (as every program does first).
#[btf_tracepoint(function = "sock_send_length")]
pub fn calibrate_lookup(ctx: BtfTracePointContext) -> u32 {
    let sk: *mut c_void = ctx.arg(0);
    u32::from(state_of(sk).is_null()) & 0
}

/// Reserve a compact record in the ring buffer and give it back (as a state change does, minus
/// what it writes).
#[btf_tracepoint(function = "sock_send_length")]
pub fn calibrate_record(_ctx: BtfTracePointContext) -> u32 {
    if let Some(entry) = EVENTS.reserve::<Transition>(0) {
        entry.discard(BPF_RB_NO_WAKEUP);
    }
    0
}

/// Claim 24 bytes in this CPU's region of a shared memory-mapped array and write them (a load
/// and a store of the region's head, three stores): what a record could cost without the
/// ring buffer's reservation (its lock, and its lines shared by every CPU).
#[btf_tracepoint(function = "sock_send_length")]
pub fn calibrate_cpu_region(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    if let Some(w) = records::cpu_region::<[u64; 3]>() {
        unsafe {
            let w = w as *mut u64;
            core::ptr::write_volatile(w, sk);
            core::ptr::write_volatile(w.add(1), 0);
            core::ptr::write_volatile(w.add(2), 9);
        }
    }
    0
}

/// Read the first byte the application sent, from its own buffer (as TLS recognition does once
/// per connection).
#[btf_tracepoint(function = "sock_send_length")]
pub fn calibrate_user_read(_ctx: BtfTracePointContext) -> u32 {
    match crate::kernel::syscall_buffer() {
        Some((buf, _)) => unsafe { aya_ebpf::helpers::bpf_probe_read_user(buf as *const u8) }.unwrap_or(0) as u32 & 0,
        None => 0,
    }
}

// The floor of any tracer on observer's hooks (the daemon attaches them instead of its programs
// with --bench-floor): programs that do nothing, on the three hooks every connection and every
// request runs through.

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn floor_state(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn floor_send(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn floor_recv(_ctx: BtfTracePointContext) -> u32 {
    0
}
