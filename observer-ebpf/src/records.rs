//! Queueing records to the daemon: reserved in the ring buffer, filled in place, submitted.
//!
//! In the bench build only, the read-only global `RECORD_SINK` sends them nowhere, or to this
//! CPU's region of a shared array that nobody reads (see `observer_common::record_sink`).

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_ringbuf_submit;
use observer_common::counter;
#[cfg(feature = "bench")]
use observer_common::record_sink;

#[cfg(feature = "bench")]
use crate::maps::{BENCH_REGIONS, RECORD_SINK};
use crate::maps::{EVENTS, count};

/// `bpf_ringbuf_submit` flag. Records never wake the daemon up: it drains the ring buffer on its
/// own timer (every 20 ms). A wake-up per record costs an inter-processor interrupt (a VM exit on
/// virtual machines): microseconds on the traced task's path.
pub const BPF_RB_NO_WAKEUP: u64 = 1;

/// A reserved record, to fill in place through [`Record::as_mut_ptr`] and [`submit`](Record::submit).
///
/// The reservation is a plain pointer and a flag, not an `Option` of aya's entry: testing that
/// entry for null again at submission makes older verifiers (6.1) follow a path on which the
/// reservation is never released, and refuse the program.
pub struct Record<T: 'static> {
    /// In the ring buffer (`ring`), or a benchmark's region.
    ptr: *mut T,
    ring: bool,
}

impl<T: 'static> Record<T> {
    #[inline(always)]
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr
    }

    #[inline(always)]
    pub fn write(&mut self, record: T) {
        unsafe { self.as_mut_ptr().write(record) };
    }

    #[inline(always)]
    pub fn submit(self) {
        if self.ring {
            unsafe { bpf_ringbuf_submit(self.ptr as *mut c_void, BPF_RB_NO_WAKEUP) };
        }
    }
}

/// Reserve a record (counted as lost if the ring buffer is full).
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<Record<T>> {
    #[cfg(feature = "bench")]
    match RECORD_SINK.load() {
        record_sink::RING => {}
        record_sink::CPU_REGIONS => return Some(Record { ptr: cpu_region::<T>()?, ring: false }),
        _ => return None,
    }
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            // Released by `submit` (the verifier checks that every path does); the entry itself
            // has no destructor.
            Some(Record { ptr: entry.as_mut_ptr(), ring: true })
        }
        None => {
            count(counter::EVENTS_LOST);
            None
        }
    }
}

/// Queue a small fixed-size record.
#[inline(always)]
pub fn emit<T: 'static>(record: T) {
    if let Some(mut r) = reserve::<T>() {
        r.write(record);
        r.submit();
    }
}

/// Whether records go to the daemon (variable-size ones are copied to the ring buffer directly):
/// always but in the bench build's measurements.
#[inline(always)]
pub fn to_ring() -> bool {
    #[cfg(feature = "bench")]
    return RECORD_SINK.load() == record_sink::RING;
    #[cfg(not(feature = "bench"))]
    true
}

/// Whether records go nowhere (`--bench-table-only`).
#[cfg(feature = "bench")]
#[inline(always)]
pub fn table_only() -> bool {
    RECORD_SINK.load() == record_sink::NONE
}

/// Room for a `T` in this CPU's benchmark region: its head moved with a plain store, no lock (the
/// write `calibrate_cpu_region` prices; a program nested on the same CPU may take the same room,
/// and nobody reads it). Old records are overwritten. (No compare-and-swap: 5.10 refuses any
/// program that holds one, even where it is never reached.)
#[cfg(feature = "bench")]
#[inline(always)]
pub fn cpu_region<T>() -> Option<*mut T> {
    const { assert!(size_of::<T>() <= 1024 * 8) };
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() } & 7;
    let r = BENCH_REGIONS.get_ptr_mut(cpu)?;
    let words = size_of::<T>().div_ceil(8) as u64;
    unsafe {
        let at = core::ptr::read_volatile(&(*r).head);
        core::ptr::write_volatile(&mut (*r).head, at + words);
        // At most 1023 words in, with room for 1024 after: within the region whatever `at` is.
        Some((*r).words.as_mut_ptr().add((at & 1023) as usize) as *mut T)
    }
}
