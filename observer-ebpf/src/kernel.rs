//! Reads of kernel memory at the offsets the daemon computed from BTF.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_user,
    generated::{bpf_get_current_task, bpf_skc_to_tcp_sock, bpf_task_pt_regs},
};
use core::ffi::c_void;

use observer_common::{AF_INET, Event, IPPROTO_TCP, KernelOffsets, ListenerKey, Owner};

use crate::variant::Kernel;

/// A field of a kernel object the program holds a typed (BTF) pointer to (the socket a BTF
/// tracepoint was handed, the current task): a plain load, which the verifier checks against
/// the kernel's BTF (the offsets are constants of the frozen `OFFSETS`), instead of a helper
/// call.
#[inline(always)]
pub fn sock_field<T: Copy>(sk: u64, offset: u32) -> T {
    unsafe { core::ptr::read_volatile((sk as *const u8).add(offset as usize) as *const T) }
}

#[inline(always)]
unsafe fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// The process running now, identified by tgid and its leader's start time (through the
/// typed task pointer: plain loads; through probe reads on a legacy kernel, which has none).
#[inline(always)]
pub fn current_owner<K: Kernel>(off: &KernelOffsets) -> Owner {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if K::LEGACY {
        let task = unsafe { bpf_get_current_task() };
        let leader: u64 = unsafe { read(task, off.task_group_leader) }.unwrap_or(0);
        let comm: [u8; 16] = unsafe { read(leader, off.task_comm) }.unwrap_or([0; 16]);
        let start_ns = unsafe { read(leader, off.task_start_boottime) }.unwrap_or(0);
        return Owner { tgid, _pad: 0, start_ns, comm };
    }
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    let leader: u64 = sock_field(task, off.task_group_leader);
    let mut comm = [0u8; 16];
    let c: [u64; 2] = [sock_field(leader, off.task_comm), sock_field(leader, off.task_comm + 8)];
    comm[..8].copy_from_slice(&c[0].to_ne_bytes());
    comm[8..].copy_from_slice(&c[1].to_ne_bytes());
    Owner { tgid, _pad: 0, start_ns: sock_field(leader, off.task_start_boottime), comm }
}

/// Inode number of the socket's network namespace (`sk->__sk_common.skc_net.net->ns.inum`).
#[inline(always)]
pub fn sock_netns(off: &KernelOffsets, sk: u64) -> Option<u32> {
    let net: u64 = sock_field(sk, off.sock_net);
    if net == 0 {
        return None;
    }
    Some(sock_field(net, off.net_inum))
}

/// `sk->sk_err`.
#[inline(always)]
pub fn sock_err(off: &KernelOffsets, sk: u64) -> i32 {
    sock_field::<i32>(sk, off.sock_err)
}

/// Whether the socket is a TCP socket (`inet_sock_set_state` also fires for SCTP and MPTCP).
#[inline(always)]
pub fn sock_is_tcp(off: &KernelOffsets, sk: u64) -> bool {
    sock_field::<u16>(sk, off.sock_protocol) == IPPROTO_TCP
}

/// A field of `struct inet_sock`, beyond `struct sock`: a plain load through `tp`, the socket as
/// a typed tcp_sock (null if it is not one), else with the copy helper.
#[inline(always)]
fn inet_field<T: Copy + Default>(sk: u64, tp: u64, offset: u32) -> T {
    if tp != 0 { sock_field(tp, offset) } else { unsafe { read::<T>(sk, offset) }.unwrap_or_default() }
}

/// `tcp_sock.write_seq` and `tcp_sock.copied_seq`: the ends of what the application has written
/// and read.
#[inline(always)]
pub fn tcp_seqs(off: &KernelOffsets, sk: u64) -> (u32, u32) {
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) } as u64;
    (inet_field(sk, tp, off.tcp_write_seq), inet_field(sk, tp, off.tcp_copied_seq))
}

/// The socket's family, ports and addresses, into the event (ports in host order), from the
/// fields `inet_sock_set_state`'s own record uses.
#[inline(always)]
pub fn sock_tuple(off: &KernelOffsets, sk: u64, ev: &mut Event) {
    ev.family = sock_field::<u16>(sk, off.sock_family);
    ev.dport = u16::from_be(sock_field::<u16>(sk, off.sock_dport));
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) } as u64;
    ev.sport = u16::from_be(inet_field(sk, tp, off.inet_sport));
    if ev.family == AF_INET {
        ev.daddr[..4].copy_from_slice(&sock_field::<u32>(sk, off.sock_daddr).to_ne_bytes());
        ev.saddr[..4].copy_from_slice(&inet_field::<[u8; 4]>(sk, tp, off.inet_saddr));
    } else {
        let d: [u64; 2] = [sock_field(sk, off.sock_v6_daddr), sock_field(sk, off.sock_v6_daddr + 8)];
        let s: [u64; 2] = [sock_field(sk, off.sock_v6_saddr), sock_field(sk, off.sock_v6_saddr + 8)];
        ev.daddr[..8].copy_from_slice(&d[0].to_ne_bytes());
        ev.daddr[8..].copy_from_slice(&d[1].to_ne_bytes());
        ev.saddr[..8].copy_from_slice(&s[0].to_ne_bytes());
        ev.saddr[8..].copy_from_slice(&s[1].to_ne_bytes());
    }
}

/// The socket's own end, as a key of the listener map: its network namespace (0 if unknown),
/// family, local port (host order) and address, read as [`sock_tuple`] reads them.
#[inline(always)]
pub fn local_key(off: &KernelOffsets, sk: u64) -> ListenerKey {
    let family = sock_field::<u16>(sk, off.sock_family);
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) } as u64;
    let port = u16::from_be(inet_field(sk, tp, off.inet_sport));
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&inet_field::<[u8; 4]>(sk, tp, off.inet_saddr));
    } else {
        let s: [u64; 2] = [sock_field(sk, off.sock_v6_saddr), sock_field(sk, off.sock_v6_saddr + 8)];
        addr[..8].copy_from_slice(&s[0].to_ne_bytes());
        addr[8..].copy_from_slice(&s[1].to_ne_bytes());
    }
    ListenerKey { netns: sock_netns(off, sk).unwrap_or(0), family, port, addr }
}

/// x86-64 `struct pt_regs` offsets and system call numbers (the daemon turns TLS capture off on
/// other architectures).
mod x86_64 {
    pub const DX: usize = 96;
    pub const SI: usize = 104;
    pub const ORIG_AX: usize = 120;
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    /// `struct user_msghdr`: `msg_iov`.
    pub const MSGHDR_IOV: u64 = 16;
}

/// The user buffer (address, length) of the read or write system call the current task is in:
/// its second argument for read/write/recvfrom/sendto, the first `iovec` for the vector calls.
/// None for anything else.
#[inline(always)]
pub fn syscall_buffer() -> Option<(u64, u64)> {
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return None;
    }
    let field = |off: usize| unsafe { core::ptr::read_volatile((regs as *const u8).add(off) as *const u64) };
    let si = field(x86_64::SI);
    let iov = match field(x86_64::ORIG_AX) {
        x86_64::READ | x86_64::WRITE | x86_64::RECVFROM | x86_64::SENDTO => return Some((si, field(x86_64::DX))),
        x86_64::READV | x86_64::WRITEV => si,
        x86_64::RECVMSG | x86_64::SENDMSG => {
            unsafe { bpf_probe_read_user((si + x86_64::MSGHDR_IOV) as *const u64) }.ok()?
        }
        _ => return None,
    };
    let [base, len] = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.ok()?;
    Some((base, len))
}
