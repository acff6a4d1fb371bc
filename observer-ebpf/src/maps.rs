//! The maps shared with user space. All are bounded.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use observer_common::{KernelOffsets, ListenerKey, ListenerValue, SockState, TlsChunk, counter};

/// The one ring buffer to user space. Its size can be changed by the daemon at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per socket (keyed by its address): its owner, I/O counters and TLS capture budget. A
/// preallocated hash map: an insert takes a free element from a per-CPU list (socket-local
/// storage would allocate and charge memory for every new socket, and free it through RCU), and
/// the entry is deleted when the socket reaches CLOSE, which every TCP socket does before it is
/// destroyed. Its size is set by the daemon (`--max-sockets`); a socket that finds it full is not
/// tracked and is counted.
#[map]
pub static SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(131072, 0);

/// Listening endpoints -> owner, to attribute the children created in softirq.
#[map]
pub static LISTENERS: LruHashMap<ListenerKey, ListenerValue> = LruHashMap::with_max_entries(8192, 0);

/// Where a [`TlsChunk`] is assembled before it is copied, at its actual size, to the ring buffer.
#[map]
pub static TLS_SCRATCH: PerCpuArray<TlsChunk> = PerCpuArray::with_max_entries(1, 0);

/// Counters (see `observer_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Kernel struct offsets from BTF, set by the daemon at load time.
#[unsafe(no_mangle)]
pub static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::zeroed());

/// The TLS capture budget of new connections (`observer_common::tls_capture::INITIAL`), or 0
/// when TLS capture is off. Set by the daemon at load time.
#[unsafe(no_mangle)]
pub static TLS_CAPTURE: Global<u32> = Global::new(0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
}
