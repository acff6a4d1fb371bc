//! The socket table: finding a socket's record, taking a slot for a new socket, freeing it at
//! CLOSE. See `observer_common::SockBucket` for its layout.

use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd, atomic_xsub};

use aya_ebpf::helpers::generated::bpf_get_socket_cookie;
use observer_common::{
    KernelOffsets, OverflowRecord, Owner, SOCK_BUCKET_WAYS, SockBucket, SockState, counter, sock_bucket,
    sock_slot_index,
};

use crate::kernel;
use crate::maps::{SOCK_BUCKET_COUNT, SOCK_BUCKETS, SOCK_OVERFLOW, SOCK_SLOTS, count};
use crate::variant::Kernel;

/// A tracked socket's record, and where it lives; a null `state` for a socket observer does not
/// track. (Never an `Option`: the verifier of older kernels refuses a read of a stack slot that
/// the path did not write, which an `Option`'s unwritten payload can compile to.)
pub struct Tracked {
    pub state: *mut SockState,
    /// The socket's cookie (its key in the table).
    pub id: u64,
    /// The slot's cookie word in its bucket; null for a record in the overflow map.
    cookie: *mut u64,
    bucket: *mut SockBucket,
}

impl Tracked {
    pub const NONE: Tracked =
        Tracked { state: core::ptr::null_mut(), id: 0, cookie: core::ptr::null_mut(), bucket: core::ptr::null_mut() };
}

/// The record of `sk` (`Tracked::NONE` if observer does not track it). No lock, no helper call:
/// the socket's cookie (0 for a socket that never had one asked for, which observer does not
/// track), one bucket.
#[inline(always)]
pub fn find<K: Kernel>(off: &KernelOffsets, sk: *mut c_void) -> Tracked {
    let cookie: u64 = kernel::sock_field(sk as u64, off.sock_cookie);
    if K::LEGACY {
        // The hash map alone (the cookie is the kernel's if anything asked for one, else 0).
        let Some(rec) = SOCK_OVERFLOW.get_ptr_mut(sk as u64) else { return Tracked::NONE };
        let state = unsafe { &mut (*rec).state as *mut SockState };
        return Tracked { state, id: cookie, cookie: core::ptr::null_mut(), bucket: core::ptr::null_mut() };
    }
    if cookie == 0 {
        return Tracked::NONE;
    }
    let index = sock_bucket(cookie, SOCK_BUCKET_COUNT.load());
    let Some(bucket) = SOCK_BUCKETS.get_ptr_mut(index) else { return Tracked::NONE };
    for way in 0..SOCK_BUCKET_WAYS {
        let word = unsafe { &mut (*bucket).cookies[way] as *mut u64 };
        if unsafe { core::ptr::read_volatile(word) } == cookie {
            let Some(slot) = SOCK_SLOTS.get_ptr_mut(sock_slot_index(index, way)) else { return Tracked::NONE };
            return Tracked { state: unsafe { &mut (*slot).state }, id: cookie, cookie: word, bucket };
        }
    }
    if unsafe { core::ptr::read_volatile(&(*bucket).overflow) } == 0 {
        return Tracked::NONE;
    }
    let Some(rec) = SOCK_OVERFLOW.get_ptr_mut(sk as u64) else { return Tracked::NONE };
    let state = unsafe { &mut (*rec).state as *mut SockState };
    Tracked { state, id: cookie, cookie: core::ptr::null_mut(), bucket }
}

/// Whether a new socket is tracked now, and its cookie (0 where the kernel has none for it).
pub struct Tracking {
    pub tracked: bool,
    pub cookie: u64,
}

impl Tracking {
    const FAILED: Tracking = Tracking { tracked: false, cookie: 0 };
}

/// Start tracking a new socket of network namespace `netns`, owned by `owner`; `unannounced`: no
/// record reports its creation. (A record left by a socket whose CLOSE was never seen is
/// replaced.)
#[inline(always)]
pub fn track<K: Kernel>(
    off: &KernelOffsets,
    sk: *mut c_void,
    netns: u32,
    owner: &Owner,
    claimed: bool,
    tls: u32,
    unannounced: bool,
) -> Tracking {
    if K::LEGACY {
        return track_in_map(off, sk, owner, claimed, tls, unannounced);
    }
    // Hands out the socket's cookie the first time (a per-CPU counter).
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let index = sock_bucket(cookie, SOCK_BUCKET_COUNT.load());
    let Some(bucket) = SOCK_BUCKETS.get_ptr_mut(index) else {
        count(counter::STORAGE_FAILED);
        return Tracking::FAILED;
    };
    let mut taken = None;
    for way in 0..SOCK_BUCKET_WAYS {
        if unsafe { core::ptr::read_volatile(&(*bucket).cookies[way]) } == cookie {
            taken = Some(way);
            break;
        }
    }
    if taken.is_none() {
        for way in 0..SOCK_BUCKET_WAYS {
            let word = unsafe { &mut (*bucket).cookies[way] };
            let (_, won) =
                unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(word, 0, cookie) };
            if won {
                taken = Some(way);
                break;
            }
        }
    }
    let has_overflow = unsafe { core::ptr::read_volatile(&(*bucket).overflow) } != 0;
    if let Some(way) = taken {
        // A stale overflow record of this socket would shadow nothing, but would stay.
        if has_overflow && SOCK_OVERFLOW.remove(sk as u64).is_ok() {
            unsafe { atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*bucket).overflow, 1) };
        }
        let Some(slot) = SOCK_SLOTS.get_ptr_mut(sock_slot_index(index, way)) else {
            return Tracking::FAILED;
        };
        unsafe {
            crate::zero_words(&mut (*slot).state);
            fill(&mut (*slot).state, owner, claimed, tls, unannounced);
            (*slot).sk = sk as u64;
            (*slot).netns = netns;
            core::ptr::write_volatile(&mut (*slot).cookie, cookie);
        }
        return Tracking { tracked: true, cookie };
    }
    // The bucket is full: the overflow map.
    let mut init = core::mem::MaybeUninit::<OverflowRecord>::uninit();
    let init = unsafe {
        crate::zero_words(init.as_mut_ptr());
        fill(&mut (*init.as_mut_ptr()).state, owner, claimed, tls, unannounced);
        init.assume_init_ref()
    };
    let fresh = !(has_overflow && SOCK_OVERFLOW.get_ptr(sk as u64).is_some());
    if SOCK_OVERFLOW.insert(sk as u64, init, 0).is_err() {
        count(counter::STORAGE_FAILED);
        return Tracking::FAILED;
    }
    if fresh {
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*bucket).overflow, 1) };
        count(counter::SOCK_OVERFLOW);
    }
    Tracking { tracked: true, cookie }
}

/// [`track`] on a [`Legacy`](crate::variant::Legacy) kernel: a record in the hash map, keyed by
/// the socket's address (the insert is atomic: no compare-and-swap needed).
#[inline(always)]
fn track_in_map(
    off: &KernelOffsets,
    sk: *mut c_void,
    owner: &Owner,
    claimed: bool,
    tls: u32,
    unannounced: bool,
) -> Tracking {
    let mut init = core::mem::MaybeUninit::<OverflowRecord>::uninit();
    let init = unsafe {
        crate::zero_words(init.as_mut_ptr());
        fill(&mut (*init.as_mut_ptr()).state, owner, claimed, tls, unannounced);
        init.assume_init_ref()
    };
    if SOCK_OVERFLOW.insert(sk as u64, init, 0).is_err() {
        count(counter::STORAGE_FAILED);
        return Tracking::FAILED;
    }
    Tracking { tracked: true, cookie: kernel::sock_field(sk as u64, off.sock_cookie) }
}

#[inline(always)]
fn fill(st: &mut SockState, owner: &Owner, claimed: bool, tls: u32, unannounced: bool) {
    st.owner = *owner;
    st.io.claimed = u32::from(claimed);
    st.tls = tls;
    st.unannounced = u32::from(unannounced);
}

/// Stop tracking `sk` (its record must have been read already: the slot may be taken at once).
#[inline(always)]
pub fn forget<K: Kernel>(sk: *mut c_void, t: &Tracked) {
    if K::LEGACY {
        let _ = SOCK_OVERFLOW.remove(sk as u64);
    } else if !t.cookie.is_null() {
        unsafe { core::ptr::write_volatile(t.cookie, 0) };
    } else if SOCK_OVERFLOW.remove(sk as u64).is_ok() {
        unsafe { atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*t.bucket).overflow, 1) };
    }
}
