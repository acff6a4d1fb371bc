//! The maps shared with user space. Every map is bounded; per-socket and per-thread maps are
//! LRU so that a missed cleanup can never fill them for good.

use aya_ebpf::{
    Global,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use observer_common::{KernelOffsets, ListenerKey, ListenerValue, Owner, SockIo, counter};

/// The one ring buffer to user space. Its size can be changed by the daemon at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Socket (`struct sock *`) -> the process that owns it. Cleaned in `tcp_destroy_sock`.
#[map]
pub static SOCKETS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(65536, 0);

/// Per-socket I/O counters in socket-local storage: found from the socket itself on the
/// send/receive hot path (no hashing), freed by the kernel with the socket.
#[btf_map]
pub static SOCK_IO: SkStorage<SockIo> = SkStorage::new();

/// The map pointer helpers expect.
#[inline(always)]
pub fn sock_io_map() -> *mut core::ffi::c_void {
    core::ptr::from_ref(&SOCK_IO).cast_mut().cast()
}

/// Listening endpoints -> owner, to attribute the children created in softirq.
#[map]
pub static LISTENERS: LruHashMap<ListenerKey, ListenerValue> = LruHashMap::with_max_entries(8192, 0);

/// Counters (see `observer_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Kernel struct offsets from BTF, set by the daemon at load time.
#[unsafe(no_mangle)]
pub static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::zeroed());

/// Offset of `group_dead` in the `sched_process_exit` record (0: the field does not exist).
#[unsafe(no_mangle)]
pub static EXIT_GROUP_DEAD_OFFSET: Global<u32> = Global::new(0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
}
