//! Queueing records to the daemon: reserved in the ring buffer, filled in place, submitted.
//!
//! For `cargo xtask bench` only, the read-only global `RECORD_SINK` sends them nowhere, or to
//! this CPU's region of a shared array that nobody reads (see `observer_common::record_sink`).

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::maps::ring_buf::RingBufEntry;
use observer_common::{counter, record_sink};

use crate::maps::{BENCH_REGIONS, EVENTS, RECORD_SINK, count};

/// `bpf_ringbuf_submit` flag. Records never wake the daemon up: it drains the ring buffer on its
/// own timer (every 20 ms). A wake-up per record costs an inter-processor interrupt (a VM exit on
/// virtual machines): microseconds on the traced task's path.
pub const BPF_RB_NO_WAKEUP: u64 = 1;

/// A reserved record, to fill in place through [`Record::as_mut_ptr`] and [`submit`](Record::submit).
pub struct Record<T: 'static> {
    ring: Option<RingBufEntry<T>>,
    /// Where the record goes when it is not in the ring buffer (a benchmark's region).
    region: *mut T,
}

impl<T: 'static> Record<T> {
    #[inline(always)]
    pub fn as_mut_ptr(&mut self) -> *mut T {
        match &mut self.ring {
            Some(entry) => entry.as_mut_ptr(),
            None => self.region,
        }
    }

    #[inline(always)]
    pub fn write(&mut self, record: T) {
        unsafe { self.as_mut_ptr().write(record) };
    }

    #[inline(always)]
    pub fn submit(self) {
        if let Some(entry) = self.ring {
            entry.submit(BPF_RB_NO_WAKEUP);
        }
    }
}

/// Reserve a record (counted as lost if the ring buffer is full).
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<Record<T>> {
    match RECORD_SINK.load() {
        record_sink::RING => {
            let entry = EVENTS.reserve::<T>(0);
            if entry.is_none() {
                count(counter::EVENTS_LOST);
            }
            Some(Record { ring: Some(entry?), region: core::ptr::null_mut() })
        }
        record_sink::CPU_REGIONS => Some(Record { ring: None, region: cpu_region::<T>()? }),
        _ => None,
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

/// Whether records go to the daemon (variable-size ones are copied to the ring buffer directly).
#[inline(always)]
pub fn to_ring() -> bool {
    RECORD_SINK.load() == record_sink::RING
}

/// Whether records go nowhere (`--bench-table-only`).
#[inline(always)]
pub fn table_only() -> bool {
    RECORD_SINK.load() == record_sink::NONE
}

/// Room for a `T` in this CPU's benchmark region: a compare-and-swap of its head, no lock (the
/// write `calibrate_cpu_region` prices). Old records are overwritten: nobody reads them.
#[inline(always)]
pub fn cpu_region<T>() -> Option<*mut T> {
    const { assert!(size_of::<T>() <= 1024 * 8) };
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() } & 7;
    let r = BENCH_REGIONS.get_ptr_mut(cpu)?;
    let words = size_of::<T>().div_ceil(8) as u64;
    unsafe {
        let head = core::ptr::read_volatile(&(*r).head);
        // (A fetch-and-add whose result is used needs a newer BPF instruction set than the one
        // built for; a compare-and-swap does not.)
        let (at, _) = atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &mut (*r).head,
            head,
            head + words,
        );
        // At most 1023 words in, with room for 1024 after: within the region whatever `at` is.
        Some((*r).words.as_mut_ptr().add((at & 1023) as usize) as *mut T)
    }
}
