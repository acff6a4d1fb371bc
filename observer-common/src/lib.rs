//! Types shared by the kernel programs (`observer-ebpf`) and the daemon (`observer`).
//!
//! Everything here is `#[repr(C)]` and `no_std`: the same bytes are written by the kernel
//! programs into the ring buffer and maps and read back by user space.
#![no_std]

/// Length of `task_struct.comm`.
pub const COMM_LEN: usize = 16;

/// TCP states as numbered by the kernel (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// The process that owns a socket, recorded in process context (connect, listen, accept).
///
/// A process is identified by its tgid and the start time of its thread-group leader, because
/// pids are reused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id (the "pid" users see). 0 means unknown.
    pub tgid: u32,
    pub _pad: u32,
    /// `task_struct.start_boottime` of the thread-group leader, in ns since boot.
    /// 0 when kernel offsets are unavailable.
    pub start_ns: u64,
    /// `comm` of the thread-group leader (NUL padded).
    pub comm: [u8; COMM_LEN],
}

/// What the application sent and received on a socket, counted in the kernel (in the
/// socket's record, [`SockState`]).
///
/// An exchange ("run") starts each time the direction of traffic changes: `send_runs` counts
/// the sends that follow a receive (or the first send), `recv_runs` the receives that follow a
/// send (or the first receive). On a client socket `send_runs` is the number of requests, on
/// a server socket `recv_runs` is, whatever the protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockIo {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub send_runs: u32,
    pub recv_runs: u32,
    /// [`io_dir`] of the last send or receive.
    pub last_dir: u32,
    /// 0 for a connection accepted from a listener until a process first sends or receives on
    /// it: that process claims it (see [`kind::CLAIM`]).
    pub claimed: u32,
}

impl SockIo {
    pub const fn zeroed() -> Self {
        SockIo { bytes_sent: 0, bytes_received: 0, send_runs: 0, recv_runs: 0, last_dir: 0, claimed: 0 }
    }
}

/// Where the kernel programs count what the application sends and receives (the read-only
/// global `IO_SOURCE`).
pub mod io_source {
    /// Every send and receive (`sock_send_length`, `sock_recv_length`: Linux 6.3+).
    pub const CALLS: u32 = 0;
    /// The socket's sequence numbers, brought up to date when the application reads
    /// (`tcp_rcv_space_adjust`, in the reader's context) and when the socket closes: the sends
    /// between two reads are one exchange, as the reads between two sends are. Only with the
    /// legacy build's socket table (every socket in the overflow map, see [`OverflowRecord`]).
    pub const SEQUENCE: u32 = 1;
}

/// Values of [`SockIo::last_dir`].
pub mod io_dir {
    pub const NONE: u32 = 0;
    pub const SEND: u32 = 1;
    pub const RECV: u32 = 2;
}

/// What the kernel keeps per socket, in the socket table (see [`SockBucket`]): from its creation
/// (connect, listen, or a child of a listener) until it reaches CLOSE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockState {
    /// The process that owns the socket.
    pub owner: Owner,
    pub io: SockIo,
    /// TLS handshake capture (see [`tls_capture`]): 0 once the connection is known not to
    /// start with a TLS handshake, or its capture budget is spent.
    pub tls: u32,
    /// 1 while an accepted connection is tracked without having been reported: its creation
    /// sends no record, its first one (the end of SYN_RECV) carries [`flags::FIRST_RECORD`].
    pub unannounced: u32,
    /// When the application last sent or received on the socket (a call [`SockIo`] counted):
    /// CLOCK_MONOTONIC ns, 0 if it never did. User space gets it as the idle time of the
    /// [`Transition`] into CLOSE_WAIT (not in [`SockIo`], which every close record copies).
    /// - [`io_source::CALLS`]: the clock is read for the first counted call of each tick (jiffy)
    ///   only, so this is up to a tick (1 to 10 ms) earlier than the last call. (Tracing programs
    ///   may not use the coarse clock.)
    /// - [`io_source::SEQUENCE`]: the last read that took something (what the application wrote
    ///   since then is not seen before the socket closes).
    pub last_io_ns: u64,
    /// [`io_source::CALLS`]: the low 32 bits of `jiffies` when `last_io_ns` was set (a call in the
    /// same tick does not read the clock again).
    pub last_io_tick: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SockState>() == 88);
const _: () = assert!(core::mem::size_of::<SockSlot>() == 112);

/// A value of the socket table's overflow map: a socket's record and, where sends and receives
/// are counted from the socket's own sequence numbers ([`io_source::SEQUENCE`], whose kernels
/// keep every socket in that map), where [`SockIo`] was last brought up to date from them
/// (`tcp_sock.write_seq`, `tcp_sock.copied_seq`). The slots of the table's arrays do not carry
/// the marks: the kernels that fill them never need them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OverflowRecord {
    pub state: SockState,
    pub seq_write: u32,
    pub seq_copied: u32,
}

/// Sockets per bucket of the socket table.
pub const SOCK_BUCKET_WAYS: usize = 7;

/// A bucket of the socket table: the cookies (`bpf_get_socket_cookie`, unique per socket for the
/// kernel's lifetime) of the sockets in its [`SOCK_BUCKET_WAYS`] slots, 0 for a free slot. A
/// socket goes to the bucket its cookie hashes to ([`sock_bucket`]); its record is the
/// [`SockSlot`] of the same index (bucket * ways + way). A socket that finds its bucket full goes
/// to the overflow table (a hash map keyed by the socket's address), and `overflow` counts them.
///
/// Unlike a hash map, finding a socket takes no lock and no helper call, and taking or freeing a
/// slot is one compare-and-swap or one store: a hash map's insert and delete (a bucket lock and a
/// free list each) cost about 300 ns per connection on the machines observer was measured on.
/// 64 bytes: one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockBucket {
    pub cookies: [u64; SOCK_BUCKET_WAYS],
    pub overflow: u64,
}

const _: () = assert!(core::mem::size_of::<SockBucket>() == 64);

/// A socket's slot in the socket table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockSlot {
    /// The socket's cookie, written last: user space reads a slot only while it matches its
    /// bucket's cookie (a slot being taken is not yet filled in).
    pub cookie: u64,
    /// The socket's address (how events name it).
    pub sk: u64,
    /// Inode number of the socket's network namespace (for the daemon's audit of the table
    /// against the kernel's sockets, `observer::table_audit`).
    pub netns: u32,
    pub _pad: u32,
    pub state: SockState,
}

/// The bucket of the socket with this cookie, in a table of `buckets` buckets.
#[inline(always)]
pub fn sock_bucket(cookie: u64, buckets: u32) -> u32 {
    // The kernel hands cookies out in runs of consecutive numbers. Each aligned group of 64
    // cookies takes 64 consecutive buckets (a CPU's new sockets, one after the other, find their
    // bucket in the cache line next to the previous one's, which the prefetchers bring in ahead:
    // measured about 35 ns less per state change than a bucket anywhere), from a place in the
    // table hashed from the group's number (Fibonacci hashing, scaled without a division), so
    // that no arithmetic pattern in the cookies piles sockets up in a few buckets.
    let group = (cookie >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    let index = ((group * buckets as u64) >> 32) + (cookie & 63);
    if index < buckets as u64 { index as u32 } else { (index % u64::from(buckets.max(1))) as u32 }
}

/// The index in the slot array of way `way` of bucket `bucket` (the slot of the socket whose
/// cookie is in that way).
#[inline(always)]
pub fn sock_slot_index(bucket: u32, way: usize) -> u32 {
    bucket * SOCK_BUCKET_WAYS as u32 + way as u32
}

/// Capture of a connection's first bytes, to recognise and parse its TLS handshake in user
/// space. [`SockState::tls`] holds the budget: the low byte counts the sends still to copy, the
/// next byte the receives, and [`tls_capture::CLASSIFIED`] is set once the first byte was seen to
/// be a TLS handshake record. Every later send and receive on other connections costs one load.
pub mod tls_capture {
    /// Sends copied per connection (ClientHello, the client's second flight).
    pub const SENDS: u32 = 4;
    /// Receives copied per connection (TLS libraries often read a record header, then its body).
    pub const RECVS: u32 = 16;
    /// The initial budget of a new connection.
    pub const INITIAL: u32 = SENDS | (RECVS << 8);
    /// The connection's first byte was a TLS handshake record.
    pub const CLASSIFIED: u32 = 1 << 16;
    /// TLS record type of a handshake message.
    pub const HANDSHAKE_RECORD: u8 = 22;
    /// Bytes copied at most from one send or receive.
    pub const MAX_BYTES: usize = 4096;
    /// First word of a [`super::TlsChunkHeader`]: tells these records apart from the others in
    /// the ring buffer (no timestamp has this value).
    pub const MAGIC: u64 = 0xffff_ffff_7715_0001;
}

/// Header of a ring-buffer record carrying the first bytes of one send or receive of a
/// connection in TLS capture; `captured` bytes of data follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsChunkHeader {
    /// [`tls_capture::MAGIC`].
    pub magic: u64,
    pub ts_ns: u64,
    pub sk: u64,
    /// Bytes the call sent or received (the data beyond `captured` was not copied).
    pub len: u32,
    pub captured: u16,
    /// [`io_dir`].
    pub dir: u8,
    pub _pad: u8,
}

/// The per-CPU scratch a [`TlsChunkHeader`] and its data are assembled in.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsChunk {
    pub header: TlsChunkHeader,
    pub data: [u8; tls_capture::MAX_BYTES],
}

/// Kinds of [`Event`] (and of [`Transition`]).
pub mod kind {
    /// A TCP state change of a socket (`sock/inet_sock_set_state`), with the socket's addresses,
    /// owner and (at CLOSE) error and final I/O counters: at creation, establishment and close,
    /// and for sockets observer has no storage for.
    pub const STATE: u8 = 1;
    /// Any other state change of a socket observer tracks: a [`super::Transition`].
    pub const TRANSITION: u8 = 9;
    /// A socket observer tracks reached CLOSE (from any state but SYN_SENT, SYN_RECV and
    /// LISTEN): a [`super::Closed`], with its error and final I/O counters.
    pub const CLOSED: u8 = 10;
    /// The first process to send or receive on a connection accepted from a listener (the
    /// process that accepted it) claims it: the socket's owner is now that process. A
    /// [`super::Claimed`].
    pub const CLAIM: u8 = 2;
    /// The kernel reported an error on the socket (`sock/inet_sk_error_report`).
    pub const ERROR_REPORT: u8 = 4;
    /// The socket sent a RST (`tcp/tcp_send_reset`).
    pub const RESET_SENT: u8 = 5;
    /// The socket received a RST (`tcp/tcp_receive_reset`).
    pub const RESET_RECEIVED: u8 = 6;
    // 7 was a process's exit: the daemon now watches processes through pidfds.
}

/// [`Event::flags`] bits.
pub mod flags {
    /// The kernel knew the owner of the socket ([`super::Event::owner`] is valid).
    pub const OWNER_KNOWN: u8 = 1;
    /// [`super::Event::netns`] is valid.
    pub const NETNS_KNOWN: u8 = 2;
    /// The first record of a socket the kernel has tracked silently since its creation: an
    /// accepted connection, reported once it leaves SYN_RECV, when its peer's address is known.
    pub const FIRST_RECORD: u8 = 4;
}

/// One record in the ring buffer.
///
/// Addresses are in network byte order as the kernel stores them; for AF_INET only the first
/// 4 bytes of `saddr`/`daddr` are used. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock` (0 when the event has no socket).
    pub sk: u64,
    pub owner: Owner,
    /// One of [`kind`].
    pub kind: u8,
    pub oldstate: u8,
    pub newstate: u8,
    /// [`flags`] bits.
    pub flags: u8,
    pub family: u16,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    pub _pad: u16,
    /// STATE to CLOSE: `sk_err` at that moment; ERROR_REPORT: the reported errno.
    pub error: i32,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// Local address.
    pub saddr: [u8; 16],
    /// Remote address.
    pub daddr: [u8; 16],
    /// STATE to CLOSE: the socket's final I/O counters.
    pub io: SockIo,
    /// The socket's cookie, as its slot in the socket table has it: set in the records that
    /// report a tracked socket with its addresses (its creation, its first record), 0 otherwise.
    pub cookie: u64,
}

impl Event {
    pub const fn zeroed() -> Self {
        Event {
            ts_ns: 0,
            sk: 0,
            owner: Owner { tgid: 0, _pad: 0, start_ns: 0, comm: [0; COMM_LEN] },
            kind: 0,
            oldstate: 0,
            newstate: 0,
            flags: 0,
            family: 0,
            sport: 0,
            dport: 0,
            _pad: 0,
            error: 0,
            netns: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            io: SockIo::zeroed(),
            cookie: 0,
        }
    }
}

/// A state change of a socket observer tracks, when nothing else changed but, at the end of a
/// connect's SYN_SENT, its local port (and, into CLOSE_WAIT, how long it had been idle): 24 bytes
/// instead of an [`Event`]'s 136, on the path of every connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Transition {
    /// Set only on entering CLOSE_WAIT (a CLOSE_WAIT socket's age) and at SYN_SENT->ESTABLISHED
    /// (when a connection opened), the transitions of a known socket whose time user space uses;
    /// 0 otherwise. A clock read costs 60-80 ns on a virtual machine, and these records are the
    /// most frequent.
    pub ts_ns: u64,
    pub sk: u64,
    /// [`kind::TRANSITION`].
    pub kind: u8,
    pub oldstate: u8,
    pub newstate: u8,
    pub _pad0: u8,
    /// SYN_SENT->ESTABLISHED: the local port the connect got (host order; it is 0 when the
    /// connect's first record is written). Into CLOSE_WAIT: how long the connection had been
    /// idle when the peer's FIN arrived, in milliseconds since the application's last send or
    /// receive on the socket ([`SockState::last_io_ns`]; at most `u32::MAX - 1`), or `u32::MAX`
    /// if it never sent or received. 0 otherwise.
    pub arg: u32,
}

const _: () = assert!(core::mem::size_of::<Transition>() == 24);

/// [`Transition::arg`] into CLOSE_WAIT of a socket the application never sent or received on.
pub const IDLE_NEVER: u32 = u32::MAX;

/// The end of a socket observer tracks, when user space already has its addresses: 56 bytes
/// instead of an [`Event`]'s. (The end of SYN_SENT, SYN_RECV and LISTEN sends a full [`Event`]:
/// user space needs the port a connect got, an accepted connection's peer, a listener's address.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Closed {
    pub ts_ns: u64,
    pub sk: u64,
    /// [`kind::CLOSED`].
    pub kind: u8,
    pub oldstate: u8,
    pub _pad: [u8; 2],
    /// `sk_err` at CLOSE.
    pub error: i32,
    /// The socket's final I/O counters.
    pub io: SockIo,
}

/// A process claimed a connection accepted from a listener ([`kind::CLAIM`]): 56 bytes instead of
/// an [`Event`]'s 136, on the path of every accepted connection. The same size as a [`Closed`],
/// told apart by `kind` at the same offset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Claimed {
    pub ts_ns: u64,
    pub sk: u64,
    /// [`kind::CLAIM`].
    pub kind: u8,
    pub _pad: [u8; 7],
    /// The process that sent or received first on the connection: its owner from now on.
    pub owner: Owner,
}

const _: () = assert!(core::mem::size_of::<Claimed>() == core::mem::size_of::<Closed>());
const _: () = assert!(core::mem::offset_of!(Claimed, kind) == core::mem::offset_of!(Closed, kind));

/// Offsets of kernel struct members, computed by the daemon from the running kernel's BTF
/// (`/sys/kernel/btf/vmlinux`) and handed to the kernel programs as the `OFFSETS` global.
///
/// Programs read kernel memory with `bpf_probe_read_kernel` at these offsets. When `valid` is 0
/// (no BTF), the programs skip everything that needs them: network namespaces, `sk_err`,
/// process start times.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub valid: u32,
    /// `struct sock`: `__sk_common.skc_net.net` (a `struct net *`).
    pub sock_net: u32,
    /// `struct net`: `ns.inum`.
    pub net_inum: u32,
    /// `struct sock`: `sk_err`.
    pub sock_err: u32,
    /// `struct sock`: `sk_protocol` (u16).
    pub sock_protocol: u32,
    /// `struct sock`: `sk_type` (u16).
    pub sock_type: u32,
    /// `struct sock`: `__sk_common.skc_family` (u16).
    pub sock_family: u32,
    /// The socket's addresses and ports, read where `inet_sock_set_state`'s own record reads them
    /// (`skc_num` and `skc_rcv_saddr` are already cleared when an active close hands the port
    /// over to the timewait socket; `inet_sport` and `inet_saddr` are not).
    /// `struct sock`: `__sk_common.skc_daddr` (IPv4 remote address).
    pub sock_daddr: u32,
    /// `struct inet_sock`: `inet_saddr` (IPv4 local address).
    pub inet_saddr: u32,
    /// `struct sock`: `__sk_common.skc_dport` (remote port, network order).
    pub sock_dport: u32,
    /// `struct inet_sock`: `inet_sport` (local port, network order).
    pub inet_sport: u32,
    /// `struct sock`: `__sk_common.skc_num` (local port, host order; a plain load through the
    /// socket's typed pointer, read at the end of a connect's SYN_SENT).
    pub sock_num: u32,
    /// `struct sock`: `__sk_common.skc_cookie` (u64, 0 until the socket's cookie is first asked
    /// for).
    pub sock_cookie: u32,
    /// `struct sock`: `__sk_common.skc_v6_daddr`.
    pub sock_v6_daddr: u32,
    /// `struct sock`: `__sk_common.skc_v6_rcv_saddr`.
    pub sock_v6_saddr: u32,
    /// `struct task_struct`: `group_leader`.
    pub task_group_leader: u32,
    /// `struct task_struct`: `start_boottime` (u64 ns).
    pub task_start_boottime: u32,
    /// `struct task_struct`: `comm`.
    pub task_comm: u32,
    /// `struct sock`: `sk_lock.owned` (int: 1 while a process holds the socket with
    /// `lock_sock`).
    pub sock_lock_owned: u32,
    /// `struct tcp_sock`: `write_seq` (the end of what the application has written) and
    /// `copied_seq` (the end of what it has read), u32.
    pub tcp_write_seq: u32,
    pub tcp_copied_seq: u32,
}

impl KernelOffsets {
    pub const fn zeroed() -> Self {
        KernelOffsets {
            valid: 0,
            sock_net: 0,
            net_inum: 0,
            sock_err: 0,
            sock_protocol: 0,
            sock_type: 0,
            sock_family: 0,
            sock_daddr: 0,
            inet_saddr: 0,
            sock_dport: 0,
            inet_sport: 0,
            sock_num: 0,
            sock_cookie: 0,
            sock_v6_daddr: 0,
            sock_v6_saddr: 0,
            task_group_leader: 0,
            task_start_boottime: 0,
            task_comm: 0,
            sock_lock_owned: 0,
            tcp_write_seq: 0,
            tcp_copied_seq: 0,
        }
    }
}

/// Indices into the `COUNTERS` per-CPU array: things the kernel programs count.
pub mod counter {
    /// Ring buffer reservations that failed: events lost.
    pub const EVENTS_LOST: u32 = 0;
    /// Sockets not tracked: the socket table was full.
    pub const STORAGE_FAILED: u32 = 1;
    /// Listener records inserted into `LISTENERS` (with `LISTENER_DELETED` and the map's size,
    /// user space derives how many the LRU evicted).
    pub const LISTENER_INSERTED: u32 = 2;
    /// Listener records deleted when their listener closed.
    pub const LISTENER_DELETED: u32 = 3;
    /// Listener records that could not be inserted.
    pub const LISTENER_INSERT_FAILED: u32 = 4;
    /// Sockets kept in the socket table's overflow map: their bucket was full.
    pub const SOCK_OVERFLOW: u32 = 5;
    /// State changes the kernel skipped `inet_sock_set_state` for (they interrupted it on the
    /// same CPU), handled by `inet_sock_set_state_nested`.
    pub const STATE_NESTED: u32 = 6;
    /// Written only by the feature probe `probe_current`, which is loaded and never attached.
    pub const PROBE: u32 = 7;
    /// Number of counters.
    pub const COUNT: u32 = 8;
}

/// Key of the `LISTENERS` map: a listening endpoint in a network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerKey {
    pub netns: u32,
    pub family: u16,
    pub port: u16,
    /// Bound address (all zeros for a wildcard listener).
    pub addr: [u8; 16],
}

/// Value of the `LISTENERS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenerValue {
    /// The listening socket (so that only its own close removes the record).
    pub sk: u64,
    pub owner: Owner,
}

/// Names of the maps and programs, shared so both sides agree.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const SOCK_BUCKETS: &str = "SOCK_BUCKETS";
    pub const SOCK_SLOTS: &str = "SOCK_SLOTS";
    pub const SOCK_OVERFLOW: &str = "SOCK_OVERFLOW";
    /// Global: the socket table's number of buckets.
    pub const SOCK_BUCKET_COUNT: &str = "SOCK_BUCKET_COUNT";
    pub const LISTENERS: &str = "LISTENERS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const OFFSETS: &str = "OFFSETS";
    /// Global: the initial [`super::SockState::tls`] of new connections (0: TLS capture off).
    pub const TLS_CAPTURE: &str = "TLS_CAPTURE";
    /// Global: where the programs write their records ([`super::record_sink`]).
    pub const RECORD_SINK: &str = "RECORD_SINK";
    pub const IO_SOURCE: &str = "IO_SOURCE";
    /// The benchmark's per-CPU regions (one entry unless the benchmark's calibration programs or
    /// its `--bench-region-records` need them).
    pub const BENCH_REGIONS: &str = "BENCH_REGIONS";
}

/// Where the kernel programs write their records (a read-only global, fixed at load time: the
/// verifier removes the branches it decides).
pub mod record_sink {
    /// The ring buffer the daemon reads: always, but in the benchmark's measurements below.
    pub const RING: u32 = 0;
    /// Nowhere (the daemon's hidden `--bench-table-only`).
    pub const NONE: u32 = 1;
    /// This CPU's region of the benchmark's shared array, which nobody reads (the daemon's hidden
    /// `--bench-region-records`): what the records would cost with the cheapest write this
    /// machine prices instead of a ring-buffer reservation.
    pub const CPU_REGIONS: u32 = 2;
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerValue {}
    unsafe impl aya::Pod for super::SockIo {}
    unsafe impl aya::Pod for super::SockState {}
    unsafe impl aya::Pod for super::OverflowRecord {}
    unsafe impl aya::Pod for super::SockBucket {}
    unsafe impl aya::Pod for super::SockSlot {}
    unsafe impl aya::Pod for super::Transition {}
    unsafe impl aya::Pod for super::Claimed {}
}
