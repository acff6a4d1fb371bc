//! The maps shared with user space. Per-socket state lives in the socket's own storage (freed
//! with the socket); the other maps are bounded.

use aya_ebpf::{
    Global,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use observer_common::{KernelOffsets, ListenerKey, ListenerValue, SockState, TlsChunk, counter};

/// The one ring buffer to user space. Its size can be changed by the daemon at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per socket: its owner and I/O counters, in socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`):
/// found from the socket without hashing, freed by the kernel with the socket.
#[btf_map]
pub static SOCKS: SkStorage<SockState> = SkStorage::new();

/// The map pointer the socket-storage helpers expect.
#[inline(always)]
pub fn socks() -> *mut core::ffi::c_void {
    core::ptr::from_ref(&SOCKS).cast_mut().cast()
}

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

/// Offset of `group_dead` in the `sched_process_exit` record (0: the field does not exist).
#[unsafe(no_mangle)]
pub static EXIT_GROUP_DEAD_OFFSET: Global<u32> = Global::new(0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
}
