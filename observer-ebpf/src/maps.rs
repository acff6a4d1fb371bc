//! The maps shared with user space. All are bounded.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use observer_common::{
    KernelOffsets, ListenerKey, ListenerValue, OverflowRecord, SOCK_BUCKET_WAYS, SockBucket, SockSlot, TlsChunk,
    counter,
};

/// The one ring buffer to user space. Its size can be changed by the daemon at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// `BPF_F_MMAPABLE`: user space reads the socket table's arrays in place.
const MMAPABLE: u32 = 1 << 10;

/// The socket table (see `observer_common::SockBucket` and the `sockets` module): per socket, its
/// owner, I/O counters and TLS capture budget, from its creation until it reaches CLOSE, which
/// every TCP socket does before it is destroyed. Sized by the daemon (`--max-sockets`); a socket
/// that finds its bucket and the overflow map full is not tracked and is counted.
#[map]
pub static SOCK_BUCKETS: Array<SockBucket> = Array::with_max_entries(32768, MMAPABLE);

#[map]
pub static SOCK_SLOTS: Array<SockSlot> = Array::with_max_entries(32768 * SOCK_BUCKET_WAYS as u32, MMAPABLE);

/// Sockets whose bucket was full, keyed by the socket's address (preallocated).
#[map]
pub static SOCK_OVERFLOW: HashMap<u64, OverflowRecord> = HashMap::with_max_entries(32768, 0);

/// Listening endpoints -> owner, to attribute the children created in softirq.
#[map]
pub static LISTENERS: LruHashMap<ListenerKey, ListenerValue> = LruHashMap::with_max_entries(8192, 0);

/// Where a [`TlsChunk`] is assembled before it is copied, at its actual size, to the ring buffer.
#[map]
pub static TLS_SCRATCH: PerCpuArray<TlsChunk> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, the state change `inet_sock_set_state` handles at each level of nesting (process
/// context, softirq), for `inet_sock_set_state_nested` to tell it from those the kernel skipped
/// the first program for (see `inet_sock_set_state`). An entry is a socket and its state change;
/// socket 0 for none.
#[repr(C)]
pub struct StateHandled {
    pub sk: [u64; 2],
    pub change: [u64; 2],
}

#[map]
pub static STATE_HANDLED: PerCpuArray<StateHandled> = PerCpuArray::with_max_entries(1, 0);

/// Counters (see `observer_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Kernel struct offsets from BTF, set by the daemon at load time.
#[unsafe(no_mangle)]
pub static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::zeroed());

/// The socket table's number of buckets. Set by the daemon at load time.
#[unsafe(no_mangle)]
pub static SOCK_BUCKET_COUNT: Global<u32> = Global::new(32768);

/// The TLS capture budget of new connections (`observer_common::tls_capture::INITIAL`), or 0
/// when TLS capture is off. Set by the daemon at load time.
#[unsafe(no_mangle)]
pub static TLS_CAPTURE: Global<u32> = Global::new(0);

/// A region of [`BENCH_REGIONS`]: a head, and room for records after it (16 KiB in all).
#[cfg(feature = "bench")]
#[repr(C)]
pub struct BenchRegion {
    pub head: u64,
    pub words: [u64; 2047],
}

/// For `cargo xtask bench` only: one region per CPU of a shared, memory-mapped array, written with
/// plain stores and read by nobody, to price a record without the ring buffer
/// (`calibrate_cpu_region`, and every record with `--bench-region-records`). The daemon sizes it
/// to 1 entry unless it needs them.
#[cfg(feature = "bench")]
#[map]
pub static BENCH_REGIONS: Array<BenchRegion> = Array::with_max_entries(8, MMAPABLE);

/// Where the programs write their records (`observer_common::record_sink`): the ring buffer but
/// for `cargo xtask bench`'s measurements. A read-only global: the verifier removes the branches
/// it decides, so it costs nothing.
#[cfg(feature = "bench")]
#[unsafe(no_mangle)]
pub static RECORD_SINK: Global<u32> = Global::new(0);

/// Where the programs count sends and receives (`observer_common::io_source`). A read-only
/// global: the verifier removes the branches it decides.
#[unsafe(no_mangle)]
pub static IO_SOURCE: Global<u32> = Global::new(0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
}
