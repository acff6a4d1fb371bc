//! The kernel's socket table, seen from user space: its size for `--max-sockets`, and reading the
//! records of every open connection in place (its two arrays are memory-mapped: no system call
//! per read). See `observer_common::SockBucket` for the layout.

use std::os::fd::RawFd;

use anyhow::{Result, bail};
use std::sync::atomic::{AtomicU64, Ordering};

use observer_common::{SOCK_BUCKET_WAYS, SockBucket, SockSlot};

/// The table's dimensions for `max_sockets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub buckets: u32,
    /// `buckets` * ways.
    pub slots: u32,
    /// Entries of the overflow map.
    pub overflow: u32,
}

impl Size {
    /// At least `max_sockets` slots. Sockets spread over the buckets like groups of 64 thrown at
    /// random (see `sock_bucket`): with as many sockets as slots, a spread of mean 7 per bucket
    /// leaves about 15% of them in the overflow map, sized for a quarter of `max_sockets`.
    pub fn for_max_sockets(max_sockets: u32) -> Size {
        let buckets = max_sockets.div_ceil(SOCK_BUCKET_WAYS as u32);
        Size { buckets, slots: buckets * SOCK_BUCKET_WAYS as u32, overflow: (max_sockets / 4).max(1024) }
    }

    /// Every socket in the hash map (kernels that cannot take a slot with compare-and-swap): one
    /// bucket left, never used.
    pub fn hash_only(max_sockets: u32) -> Size {
        Size { buckets: 1, slots: SOCK_BUCKET_WAYS as u32, overflow: max_sockets.max(1024) }
    }
}

/// Every taken slot of the table's arrays (`bucket` and `slot` copy one element out), with its
/// index, taken as they are while the kernel changes them. A slot counts only while its own
/// cookie matches its bucket's: a slot being taken is skipped until filled in, and a slot freed
/// and taken again while it was read is dropped (its socket is gone).
pub fn live_slots(
    bucket: impl Fn(usize) -> Option<SockBucket>,
    slot: impl Fn(usize) -> Option<SockSlot>,
    mut each: impl FnMut(u32, &SockSlot),
) {
    let mut b = 0;
    while let Some(bucket) = bucket(b) {
        for (way, &cookie) in bucket.cookies.iter().enumerate() {
            if cookie == 0 {
                continue;
            }
            let index = observer_common::sock_slot_index(b as u32, way);
            if let Some(s) = slot(index as usize)
                && s.cookie == cookie
            {
                each(index, &s);
            }
        }
        b += 1;
    }
}

/// Free the slot `index` of the table whose buckets are `buckets`, if it still holds `cookie`
/// (the kernel may have freed it, and taken it again for another socket, meanwhile: cookies are
/// never reused). The same compare-and-swap the kernel takes slots with.
pub fn free_slot(buckets: &MappedArray<SockBucket>, index: u32, cookie: u64) -> bool {
    let (bucket, way) = (index as usize / SOCK_BUCKET_WAYS, index as usize % SOCK_BUCKET_WAYS);
    let offset = std::mem::offset_of!(SockBucket, cookies) + way * size_of::<u64>();
    match buckets.atomic_u64(bucket, offset) {
        Some(word) => word.compare_exchange(cookie, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok(),
        None => false,
    }
}

/// An array map mapped into the daemon (the map must be `BPF_F_MMAPABLE`): read-only, or
/// writable for [`atomic_u64`](Self::atomic_u64).
pub struct MappedArray<T> {
    ptr: *const T,
    len: usize,
    bytes: usize,
    writable: bool,
}

// SAFETY: a shared mapping, read through volatile copies and written through atomics only.
unsafe impl<T> Send for MappedArray<T> {}
unsafe impl<T> Sync for MappedArray<T> {}

impl<T: Copy> MappedArray<T> {
    pub fn new(fd: RawFd, len: u32) -> Result<MappedArray<T>> {
        Self::map(fd, len, false)
    }

    pub fn new_writable(fd: RawFd, len: u32) -> Result<MappedArray<T>> {
        Self::map(fd, len, true)
    }

    fn map(fd: RawFd, len: u32, writable: bool) -> Result<MappedArray<T>> {
        // The kernel lays array values out 8-byte aligned, from the start of the mapping.
        if !size_of::<T>().is_multiple_of(8) {
            bail!("array value size {} is not a multiple of 8", size_of::<T>());
        }
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len as usize * size_of::<T>()).div_ceil(page) * page;
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh shared mapping of the map's fd; checked below.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), bytes, prot, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            bail!("mapping the socket table: {}", std::io::Error::last_os_error());
        }
        Ok(MappedArray { ptr: ptr as *const T, len: len as usize, bytes, writable })
    }

    /// The 8-byte word at `offset` bytes into element `i`, to change atomically (the kernel's
    /// programs change it too). None if out of bounds, misaligned, or the mapping is read-only.
    pub fn atomic_u64(&self, i: usize, offset: usize) -> Option<&AtomicU64> {
        if !self.writable || i >= self.len || offset + 8 > size_of::<T>() || !offset.is_multiple_of(8) {
            return None;
        }
        // SAFETY: within element i of a writable shared mapping, 8-byte aligned (elements are).
        Some(unsafe { &*((self.ptr as *const u8).add(i * size_of::<T>() + offset) as *const AtomicU64) })
    }

    /// A copy of element `i`.
    pub fn get(&self, i: usize) -> Option<T> {
        // SAFETY: checked against len, within the mapping.
        (i < self.len).then(|| unsafe { std::ptr::read_volatile(self.ptr.add(i)) })
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_holds_at_least_max_sockets_slots() {
        assert_eq!(Size::for_max_sockets(131072), Size { buckets: 18725, slots: 131075, overflow: 32768 });
        assert_eq!(Size::for_max_sockets(1024), Size { buckets: 147, slots: 1029, overflow: 1024 });
        assert_eq!(Size::for_max_sockets(7 * 1024).slots, 7 * 1024);
    }

    #[test]
    fn cookies_spread_over_every_bucket() {
        // Cookies come in per-CPU runs of consecutive numbers: 70,000 of them over 10,000 buckets.
        let buckets = 10_000u32;
        let mut load = vec![0u32; buckets as usize];
        for run in 0..70u64 {
            for i in 0..1000u64 {
                let b = observer_common::sock_bucket((run << 20) + i + 1, buckets);
                load[b as usize] += 1;
            }
        }
        // Mean 7: even a Poisson spread would put only about 15% of sockets beyond the 7 ways of
        // their bucket (the overflow map takes them) and leave about 0.1% of buckets empty.
        let beyond: u32 = load.iter().map(|&n| n.saturating_sub(SOCK_BUCKET_WAYS as u32)).sum();
        let empty = load.iter().filter(|&&n| n == 0).count();
        assert!(beyond < 70_000 / 5, "{beyond} sockets beyond their bucket");
        assert!(empty < 100, "{empty} empty buckets");
    }

    #[test]
    fn consecutive_cookies_take_adjacent_buckets() {
        // A CPU's new sockets one after the other: adjacent cache lines, 64 at a time (wrapping
        // at the table's end); the next 64 start somewhere else.
        let buckets = 18725u32;
        let bucket = |c: u64| observer_common::sock_bucket(c, buckets);
        for group in [1u64 << 20, 7 << 32, 123_456] {
            let first = group * 64;
            let start = bucket(first);
            let got: Vec<u32> = (0..64).map(|i| bucket(first + i)).collect();
            let want: Vec<u32> = (0..64).map(|i| (start + i) % buckets).collect();
            assert_eq!(got, want);
            assert_ne!(bucket(first + 64), (start + 64) % buckets, "the next group starts elsewhere");
        }
        // A group placed at the very end wraps to the first bucket.
        let end = (0..100_000u64).find(|g| bucket(g * 64) >= buckets - 8).expect("a group near the end");
        assert!((0..64).any(|i| bucket(end * 64 + i) == 0));
        assert!((0..64).all(|i| bucket(end * 64 + i) < buckets));
        // Tiny tables, and an empty one, stay in bounds.
        assert!((0..1000).all(|c| observer_common::sock_bucket(c, 5) < 5));
        assert_eq!(observer_common::sock_bucket(42, 0), 0);
    }

    #[test]
    fn a_slot_is_freed_only_while_it_holds_the_cookie() {
        // A memory file stands in for the map: the same shared, writable mapping.
        let fd = unsafe { libc::memfd_create(c"table".as_ptr(), 0) };
        assert!(fd >= 0);
        assert_eq!(unsafe { libc::ftruncate(fd, 4096) }, 0);
        let buckets = MappedArray::<SockBucket>::new_writable(fd, 4).unwrap();
        let word = |b: usize, way: usize| buckets.atomic_u64(b, way * 8).unwrap();
        word(2, 5).store(77, Ordering::SeqCst);
        let index = observer_common::sock_slot_index(2, 5);
        assert!(!free_slot(&buckets, index, 78), "another socket's slot");
        assert_eq!(word(2, 5).load(Ordering::SeqCst), 77);
        assert!(free_slot(&buckets, index, 77));
        assert_eq!(buckets.get(2).unwrap().cookies, [0; SOCK_BUCKET_WAYS]);
        assert!(!free_slot(&buckets, index, 77), "already free");
        assert!(!free_slot(&buckets, observer_common::sock_slot_index(4, 0), 77), "out of bounds");
        // Read-only mappings are never written.
        let ro = MappedArray::<SockBucket>::new(fd, 4).unwrap();
        assert!(ro.atomic_u64(0, 0).is_none());
        unsafe { libc::close(fd) };
    }

    fn slot(cookie: u64, sk: u64, sent: u64) -> SockSlot {
        let mut s = SockSlot { cookie, sk, ..Default::default() };
        s.state.io.bytes_sent = sent;
        s
    }

    #[test]
    fn only_slots_matching_their_bucket_are_read() {
        let mut buckets = [SockBucket::default(); 2];
        let mut slots = vec![SockSlot::default(); 2 * SOCK_BUCKET_WAYS];
        // Bucket 0: a live socket in way 0, a slot being taken in way 3 (cookie claimed, slot not
        // yet filled in), a free slot with stale contents in way 5.
        buckets[0].cookies[0] = 11;
        slots[0] = slot(11, 0x1000, 5);
        buckets[0].cookies[3] = 12;
        slots[3] = slot(99, 0x2000, 6);
        slots[5] = slot(13, 0x3000, 7);
        // Bucket 1, last way.
        buckets[1].cookies[6] = 21;
        slots[SOCK_BUCKET_WAYS + 6] = slot(21, 0x4000, 8);
        let mut seen = Vec::new();
        live_slots(
            |b| buckets.get(b).copied(),
            |i| slots.get(i).copied(),
            |index, s| seen.push((index, s.sk, s.state.io.bytes_sent)),
        );
        assert_eq!(seen, vec![(0, 0x1000, 5), (SOCK_BUCKET_WAYS as u32 + 6, 0x4000, 8)]);
    }
}
