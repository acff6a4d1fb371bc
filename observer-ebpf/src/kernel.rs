//! Reads of kernel memory at the offsets the daemon computed from BTF.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel};
use observer_common::{IPPROTO_TCP, KernelOffsets, Owner};

/// `SOCK_STREAM`.
const SOCK_STREAM: u16 = 1;

#[inline(always)]
unsafe fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// The process running now, identified by tgid and its leader's start time.
#[inline(always)]
pub fn current_owner(off: &KernelOffsets) -> Owner {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mut owner = Owner { tgid, ..Owner::default() };
    if off.valid != 0 {
        let task = unsafe { bpf_get_current_task() };
        if let Some(leader) = unsafe { read::<u64>(task, off.task_group_leader) } {
            owner.start_ns = unsafe { read::<u64>(leader, off.task_start_boottime) }.unwrap_or(0);
            if let Some(comm) = unsafe { read::<[u8; 16]>(leader, off.task_comm) } {
                owner.comm = comm;
                return owner;
            }
        }
    }
    if let Ok(comm) = bpf_get_current_comm() {
        owner.comm = comm;
    }
    owner
}

/// Inode number of the socket's network namespace.
#[inline(always)]
pub fn sock_netns(off: &KernelOffsets, sk: u64) -> Option<u32> {
    if off.valid == 0 {
        return None;
    }
    let net = unsafe { read::<u64>(sk, off.sock_net) }?;
    unsafe { read::<u32>(net, off.net_inum) }
}

/// `sk->sk_err`.
#[inline(always)]
pub fn sock_err(off: &KernelOffsets, sk: u64) -> i32 {
    if off.valid == 0 {
        return 0;
    }
    unsafe { read::<i32>(sk, off.sock_err) }.unwrap_or(0)
}

/// Whether the socket is a TCP stream socket (not UDP, unix, MPTCP...).
#[inline(always)]
pub fn sock_is_tcp(off: &KernelOffsets, sk: u64) -> bool {
    let proto = unsafe { read::<u16>(sk, off.sock_protocol) };
    let ty = unsafe { read::<u16>(sk, off.sock_type) };
    proto == Some(IPPROTO_TCP) && ty == Some(SOCK_STREAM)
}
