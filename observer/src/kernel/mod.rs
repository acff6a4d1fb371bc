//! Loading the kernel programs, attaching them to their tracepoints, and reading the kernel
//! side's counters. Dropping [`Probes`] detaches and unloads everything.

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::Map;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, tp_btf::BtfTracePointLinkId};
use aya::{Btf, Ebpf, EbpfLoader};
use observer_common::{
    AF_INET, AF_INET6, ListenerKey, ListenerValue, OverflowRecord, Owner, SockBucket, SockSlot, counter, io_source,
    names, tls_capture,
};

use observer_core::aggregate::{ListenerMove, SeedSocket};
use observer_core::event::Comm;
use observer_core::model::{Endpoint, IoCounts, ProcessKey, TcpState};

use observer_core::kernel_status::{Features, KernelCounters};
use observer_core::table_audit::TableSlot;
use socket_table::MappedArray;

#[cfg(feature = "bench")]
pub mod bench;
mod btf_offsets;
mod socket_table;

/// The eBPF object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// The kernel side's options: flags of `observer daemon`, passed as they are to [`Probes::load`].
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Size of the kernel-to-daemon ring buffer in MiB (a power of two).
    #[arg(long, default_value_t = 4, value_parser = parse_ring_mib)]
    pub ring_buffer_mib: u32,
    /// Sockets the kernel side can track at once (its table is preallocated: about 165 bytes
    /// each with its overflow map, 20 MiB at the default). Sockets beyond it are not tracked and are counted in
    /// observer_socket_storage_failures_total.
    #[arg(long, default_value_t = 131072, value_name = "N", value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_sockets: u32,
    /// Do not look for TLS handshakes (the first bytes of each new connection are then never
    /// read).
    #[arg(long)]
    pub no_tls: bool,
    /// aya-log level for kernel-side diagnostics (0 = off, 1 = error ... 5 = trace), from the
    /// daemon's --log-level.
    #[arg(skip)]
    pub kernel_log_level: u8,
    #[cfg(feature = "bench")]
    #[command(flatten)]
    pub bench: bench::Options,
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v == 0 || !v.is_power_of_two() || v > 1024 {
        return Err("must be a power of two between 1 and 1024".into());
    }
    Ok(v)
}

/// The programs on `sock/inet_sock_set_state`, in the order they must run.
const STATE_PROGRAMS: [&str; 2] = ["inet_sock_set_state", "inet_sock_set_state_nested"];

/// The same for kernels that refuse what those use (see the kernel programs' `variant`).
const LEGACY_STATE_PROGRAMS: [&str; 2] = ["inet_sock_set_state_legacy", "inet_sock_set_state_nested_legacy"];

/// A program that is loaded and never attached: the kernel accepts the [`STATE_PROGRAMS`] if it
/// accepts this one.
const PROBE_CURRENT: &str = "probe_current";

pub struct Probes {
    ebpf: Ebpf,
    pub features: Features,
    /// The attached tracepoint programs and their links (none while the bench build detaches
    /// them; read only there).
    #[cfg_attr(not(feature = "bench"), expect(dead_code))]
    links: Vec<(&'static str, Option<BtfTracePointLinkId>)>,
    /// The socket table's arrays, mapped into the daemon.
    sock_buckets: MappedArray<SockBucket>,
    sock_slots: MappedArray<SockSlot>,
}

/// Refuse early, with one clear line, when we cannot possibly load programs.
pub fn check_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_PERFMON: u64 = 38;
    const CAP_BPF: u64 = 39;
    let has = |c: u64| cap_eff & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!(
        "permission denied: the daemon must run as root, or with at least CAP_BPF and CAP_PERFMON (see \"Privileges\" in docs/configuration.md)"
    )
}

fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        // Harmless on kernels that charge BPF memory to the memory cgroup (5.11+).
        log::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}

/// Which build of the programs this kernel takes, and how they count sends and receives.
struct Build {
    /// Sends and receives counted on every call, from their tracepoints (Linux 6.3+); else from
    /// the sockets' sequence numbers when the application reads.
    calls: bool,
    /// The programs for kernels that refuse the current ones (see the kernel programs' `variant`).
    legacy: bool,
    /// The TLS capture budget of new connections (0: TLS recognition off).
    tls_capture: u32,
}

impl Build {
    fn choose(btf: &Btf, offsets: &observer_common::KernelOffsets, opts: &Options) -> Result<Build> {
        let calls = has_tracepoint(btf, "sock_send_length") && has_tracepoint(btf, "sock_recv_length");
        if !calls {
            log::warn!(
                "kernel {}: no sock_send_length or sock_recv_length tracepoints (Linux 6.3+): requests and bytes are \
                 counted from the sockets' sequence numbers when the application reads (the programs for older \
                 kernels, whose socket table is a hash map, carry them); TLS handshakes are not recognised",
                kernel_release()
            );
        }
        // The kernel side finds the application's buffer in x86-64 system call registers, from
        // the send and receive tracepoints.
        let tls = !opts.no_tls;
        let tls_capture: u32 = if tls && calls && cfg!(target_arch = "x86_64") { tls_capture::INITIAL } else { 0 };
        if tls && calls && tls_capture == 0 {
            log::warn!("TLS handshakes are only recognised on x86-64");
        }
        // Counting from sequence numbers takes the legacy build's records, which carry the marks:
        // the probe is only worth loading where the current build could be used.
        let refused = if calls { refuses_current_programs(btf, offsets)? } else { None };
        if let Some(why) = &refused {
            log::warn!(
                "kernel {}: the programs for Linux 5.12+ are refused ({why}): loading those for older kernels, \
                 whose socket table is a hash map (the same figures, a few hundred ns more per connection)",
                kernel_release()
            );
        }
        Ok(Build { calls, legacy: refused.is_some() || !calls, tls_capture })
    }
}

impl Probes {
    pub fn load(opts: &Options) -> Result<Probes> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this binary was built without its eBPF programs (AYA_BUILD_SKIP); build it with `cargo xtask build`"
            );
        }
        check_privileges()?;
        // The socket programs are BTF tracepoints and read the socket at offsets from BTF.
        let offsets = btf_offsets::from_file(Path::new(btf_offsets::VMLINUX_BTF)).with_context(needs_btf)?;
        let btf = Btf::from_sys_fs().with_context(needs_btf)?;
        raise_memlock();
        let build = Build::choose(&btf, &offsets, opts)?;
        let table = if build.legacy {
            socket_table::Size::hash_only(opts.max_sockets)
        } else {
            socket_table::Size::for_max_sockets(opts.max_sockets)
        };
        let mut ebpf = load_object(&btf, &offsets, opts, &build, &table)?;

        let array_fd = |name: &str| -> Result<RawFd> {
            match ebpf.map(name) {
                Some(Map::Array(m)) => Ok(m.fd().as_fd().as_raw_fd()),
                _ => bail!("{name} map missing"),
            }
        };
        // Writable: the daemon frees the slots of sockets whose close the kernel never reported.
        let sock_buckets = MappedArray::new_writable(array_fd(names::SOCK_BUCKETS)?, table.buckets)?;
        let sock_slots = MappedArray::new(array_fd(names::SOCK_SLOTS)?, table.slots)?;

        #[cfg(feature = "bench")]
        if opts.bench.floor {
            let links = bench::attach_floor(&mut ebpf, &btf)?;
            return Ok(Probes { ebpf, features: Features::default(), links, sock_buckets, sock_slots });
        }
        let mut links = attach_state_programs(&mut ebpf, &btf, opts, build.legacy)?;
        let features = attach_optional(&mut ebpf, &btf, &build, &mut links);
        #[cfg(feature = "bench")]
        bench::attach_calibration(&mut ebpf, &btf, &opts.bench, &mut links)?;
        Ok(Probes { ebpf, features, links, sock_buckets, sock_slots })
    }

    /// The ring buffer of events (can be taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(names::EVENTS).ok_or_else(|| anyhow!("EVENTS map missing"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The kernel-side log reader (aya-log), if the object has log statements.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!("no kernel log reader: {e}");
                None
            }
        }
    }

    pub fn counters(&self) -> Result<KernelCounters> {
        let map = self.ebpf.map(names::COUNTERS).ok_or_else(|| anyhow!("COUNTERS map missing"))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let get = |i: u32| -> Result<u64> { Ok(arr.get(&i, 0)?.iter().sum()) };
        Ok(KernelCounters {
            events_lost: get(counter::EVENTS_LOST)?,
            storage_failed: get(counter::STORAGE_FAILED)?,
            sock_overflow: get(counter::SOCK_OVERFLOW)?,
            state_nested: get(counter::STATE_NESTED)?,
            listener_inserted: get(counter::LISTENER_INSERTED)?,
            listener_deleted: get(counter::LISTENER_DELETED)?,
            listener_insert_failed: get(counter::LISTENER_INSERT_FAILED)?,
        })
    }

    /// Tell the kernel programs about listeners older than the daemon, so that their new
    /// connections are charged to their owner. Returns how many were recorded.
    pub fn seed_listeners(&mut self, seeds: &[SeedSocket]) -> usize {
        let Some(mut m) = self.listeners() else { return 0 };
        let mut n = 0;
        for s in seeds.iter().filter(|s| s.state == TcpState::Listen) {
            // sk 0: the kernel program removes it when any listener on this endpoint closes.
            let value = ListenerValue { sk: 0, owner: kernel_owner(&s.owner.key, &s.owner.comm) };
            if m.insert(listener_key(s.netns, s.local), value, 0).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// A listener changed hands (its owner exited, another process holds it): charge its new
    /// connections to the new owner. Returns whether the kernel's listener map took it.
    pub fn reassign_listener(&mut self, mv: &ListenerMove) -> bool {
        let Some(mut m) = self.listeners() else { return false };
        let key = listener_key(mv.netns, mv.local);
        // Keep the socket the entry names (0 if the kernel lost it: see seed_listeners).
        let sk = m.get(&key, 0).map_or(0, |v| v.sk);
        let value = ListenerValue { sk, owner: kernel_owner(&mv.owner.key, &mv.owner.comm) };
        m.insert(key, value, 0).is_ok()
    }

    fn listeners(&mut self) -> Option<BpfHashMap<&mut MapData, ListenerKey, ListenerValue>> {
        BpfHashMap::try_from(self.ebpf.map_mut(names::LISTENERS)?).ok()
    }

    /// The I/O counters of every socket the kernel tracks: read in place from the socket table's
    /// mapped arrays, and in batches from its overflow map (`BPF_MAP_LOOKUP_BATCH`: one system
    /// call per few thousand sockets). (A BPF iterator would do it in the kernel, but some kernels
    /// refuse iterator programs, as they refuse fentry.)
    pub fn io_counters(&self) -> Result<Vec<(u64, IoCounts)>> {
        let mut out = Vec::new();
        socket_table::live_slots(
            |b| self.sock_buckets.get(b),
            |i| self.sock_slots.get(i),
            |_, s| out.push((s.sk, IoCounts::from_kernel(&s.state.io))),
        );
        let map_fd = match self.ebpf.map(names::SOCK_OVERFLOW) {
            Some(Map::HashMap(m)) => m.fd().as_fd().as_raw_fd(),
            _ => bail!("SOCK_OVERFLOW map missing"),
        };
        read_batches::<u64, OverflowRecord>(map_fd, |sk, r| out.push((*sk, IoCounts::from_kernel(&r.state.io))))
            .context("reading the socket table's overflow map")?;
        Ok(out)
    }

    /// Every taken slot of the socket table (not the overflow map: its records have no cookie).
    pub fn table_slots(&self) -> Vec<TableSlot> {
        let mut out = Vec::new();
        socket_table::live_slots(
            |b| self.sock_buckets.get(b),
            |i| self.sock_slots.get(i),
            |index, s| {
                out.push(TableSlot {
                    index,
                    cookie: s.cookie,
                    sk: s.sk,
                    netns: s.netns,
                    owner_pid: s.state.owner.tgid,
                    io: IoCounts::from_kernel(&s.state.io),
                })
            },
        );
        out
    }

    /// Free the socket table's slot `index` if it still holds `cookie` (see
    /// `socket_table::free_slot`).
    pub fn free_slot(&self, index: u32, cookie: u64) -> bool {
        socket_table::free_slot(&self.sock_buckets, index, cookie)
    }

    /// Entries in the kernel's listener map now (walks the map).
    pub fn listener_map_entries(&self) -> Result<u64> {
        let map = self.ebpf.map(names::LISTENERS).ok_or_else(|| anyhow!("LISTENERS map missing"))?;
        let m: BpfHashMap<&MapData, ListenerKey, ListenerValue> = BpfHashMap::try_from(map)?;
        Ok(m.keys().filter(|k| k.is_ok()).count() as u64)
    }
}

/// The kernel's listener map key of the endpoint `local` in `netns`.
fn listener_key(netns: u32, local: Endpoint) -> ListenerKey {
    let (family, addr) = match local.ip() {
        std::net::IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (AF_INET, b)
        }
        std::net::IpAddr::V6(a) => (AF_INET6, a.octets()),
    };
    ListenerKey { netns, family, port: local.port(), addr }
}

/// Why the kernel refuses the [`STATE_PROGRAMS`], None if it accepts them: whether it loads
/// [`PROBE_CURRENT`] (from a copy of the object of its own, dropped at once).
fn refuses_current_programs(btf: &Btf, offsets: &observer_common::KernelOffsets) -> Result<Option<String>> {
    let page = 4096;
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(btf))
        .override_global(names::OFFSETS, offsets, true)
        // Its maps, made for it alone, as small as they go.
        .map_max_entries(names::EVENTS, page)
        .map_max_entries(names::SOCK_BUCKETS, 1)
        .map_max_entries(names::SOCK_SLOTS, observer_common::SOCK_BUCKET_WAYS as u32)
        .map_max_entries(names::SOCK_OVERFLOW, 1);
    #[cfg(feature = "bench")]
    loader.map_max_entries(names::BENCH_REGIONS, 1);
    let mut probe = loader.load(EBPF_OBJECT).map_err(|e| anyhow!("loading the eBPF object failed: {e}"))?;
    let p = tracepoint_program(&mut probe, PROBE_CURRENT)?;
    match p.load("inet_sock_set_state", btf) {
        Ok(()) => Ok(None),
        Err(e) => {
            let why = format!("{:#}", anyhow::Error::from(e));
            log::debug!("the kernel refuses {PROBE_CURRENT}: {why}");
            Ok(Some(verifier_verdict(&why)))
        }
    }
}

/// The line of a program load error that says why: the verifier's last word before its
/// statistics, else the error's first line.
fn verifier_verdict(error: &str) -> String {
    let stats = ["verification time", "stack depth", "processed ", ":"];
    let last =
        error.lines().map(str::trim).filter(|l| !l.is_empty()).rfind(|l| !stats.iter().any(|s| l.starts_with(s)));
    last.or(error.lines().next()).unwrap_or("").chars().take(200).collect()
}

/// Whether the kernel has the BTF tracepoint `name`.
fn has_tracepoint(btf: &Btf, name: &str) -> bool {
    btf.id_by_type_name_kind(&format!("btf_trace_{name}"), aya_obj::btf::BtfKind::Typedef).is_ok()
}

/// The kernels observer is tested on, for the errors that refuse the others.
const SUPPORTED: &str = "observer runs on Linux 5.10 or later with BTF: tested on 5.10, 6.1, 6.12 and 6.18";

fn needs_btf() -> String {
    format!(
        "observer needs the kernel's BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y), which kernel {} lacks \
         ({SUPPORTED})",
        kernel_release()
    )
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn kernel_owner(key: &ProcessKey, comm: &Comm) -> Owner {
    Owner { tgid: key.pid, _pad: 0, start_ns: key.start_ns, comm: comm.0 }
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Size of the `union bpf_attr` we pass (the kernel checks that the unused tail is zero).
const BPF_ATTR_SIZE: usize = 128;

/// Every entry of a hash map, in batches. `K` and `V` must be the map's key and value types
/// (plain old data).
fn read_batches<K: Copy, V: Copy>(map_fd: RawFd, mut each: impl FnMut(&K, &V)) -> std::io::Result<()> {
    // A batch must hold a whole hash bucket: it grows if the kernel says one does not fit.
    let mut capacity = 4096usize;
    let mut keys = Vec::<K>::with_capacity(capacity);
    let mut values = Vec::<V>::with_capacity(capacity);
    // The kernel's position in the table (a bucket index for hash maps): none before the first
    // batch, then where the previous one ended.
    let mut position: Option<u64> = None;
    let mut next = 0u64;
    loop {
        keys.clear();
        values.clear();
        keys.reserve(capacity);
        values.reserve(capacity);
        // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32; elem_flags, flags: u64 }
        let mut attr = [0u8; BPF_ATTR_SIZE];
        let in_batch = position.as_ref().map_or(0, |p| std::ptr::from_ref(p) as u64);
        attr[0..8].copy_from_slice(&in_batch.to_ne_bytes());
        attr[8..16].copy_from_slice(&(std::ptr::from_mut(&mut next) as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(keys.as_mut_ptr() as u64).to_ne_bytes());
        attr[24..32].copy_from_slice(&(values.as_mut_ptr() as u64).to_ne_bytes());
        attr[32..36].copy_from_slice(&(capacity as u32).to_ne_bytes());
        attr[36..40].copy_from_slice(&(map_fd as u32).to_ne_bytes());
        // SAFETY: a bpf_attr-sized, zero-padded buffer whose pointers point to buffers of
        // `capacity` keys and values, and to the two batch positions, all live across the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, attr.as_mut_ptr(), BPF_ATTR_SIZE as u32) };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        match err.as_ref().and_then(|e| e.raw_os_error()) {
            Some(libc::ENOSPC) if capacity < 1 << 20 => {
                capacity *= 4;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            _ => return Err(err.expect("an error")),
        }
        // The kernel wrote back how many entries it copied (some, even with ENOENT: the last).
        let count = (u32::from_ne_bytes(attr[32..36].try_into().expect("4 bytes")) as usize).min(capacity);
        // SAFETY: the kernel initialised the first `count` keys and values.
        unsafe {
            keys.set_len(count);
            values.set_len(count);
        }
        for (k, v) in keys.iter().zip(&values) {
            each(k, v);
        }
        if err.is_some() {
            // ENOENT: the end of the table.
            return Ok(());
        }
        position = Some(next);
    }
}

/// The BTF tracepoint program `prog` of the object.
fn tracepoint_program<'a>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut BtfTracePoint> {
    Ok(ebpf.program_mut(prog).ok_or_else(|| anyhow!("program {prog} missing from the object"))?.try_into()?)
}

/// Attach program `prog` to the BTF tracepoint `target`.
fn attach_btf_tracepoint(ebpf: &mut Ebpf, btf: &Btf, prog: &str, target: &str) -> Result<BtfTracePointLinkId> {
    let p = tracepoint_program(ebpf, prog)?;
    p.load(target, btf)?;
    Ok(p.attach()?)
}

/// The object, loaded with this kernel's offsets and the table's and ring buffer's sizes.
fn load_object(
    btf: &Btf,
    offsets: &observer_common::KernelOffsets,
    opts: &Options,
    build: &Build,
    table: &socket_table::Size,
) -> Result<Ebpf> {
    let io_source = if build.calls { io_source::CALLS } else { io_source::SEQUENCE };
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(btf))
        .override_global(names::OFFSETS, offsets, true)
        .override_global(names::TLS_CAPTURE, &build.tls_capture, true)
        .override_global(names::IO_SOURCE, &io_source, true)
        .override_global("AYA_LOG_LEVEL", &opts.kernel_log_level, false)
        .map_max_entries(names::EVENTS, opts.ring_buffer_mib << 20)
        .override_global(names::SOCK_BUCKET_COUNT, &table.buckets, true)
        .map_max_entries(names::SOCK_BUCKETS, table.buckets)
        .map_max_entries(names::SOCK_SLOTS, table.slots)
        .map_max_entries(names::SOCK_OVERFLOW, table.overflow);
    #[cfg(feature = "bench")]
    opts.bench.configure(&mut loader);
    loader.load(EBPF_OBJECT).map_err(|e| anyhow!("loading the eBPF programs failed: {e}"))
}

/// The one hook observer cannot work without: two programs, attached (and so run) in this order,
/// for each state change to be handled exactly once (see the kernel programs).
fn attach_state_programs(
    ebpf: &mut Ebpf,
    btf: &Btf,
    opts: &Options,
    legacy: bool,
) -> Result<Vec<(&'static str, Option<BtfTracePointLinkId>)>> {
    let programs: &[&'static str] = if legacy { &LEGACY_STATE_PROGRAMS } else { &STATE_PROGRAMS };
    #[cfg(feature = "bench")]
    let programs = &programs[..opts.bench.state_programs()];
    #[cfg(not(feature = "bench"))]
    let _ = opts;
    let mut links = Vec::new();
    for prog in programs {
        let link = attach_btf_tracepoint(ebpf, btf, prog, "inet_sock_set_state").with_context(|| {
            format!("kernel {} has no usable sock/inet_sock_set_state BTF tracepoint ({SUPPORTED})", kernel_release())
        })?;
        links.push((*prog, Some(link)));
    }
    Ok(links)
}

/// The programs a kernel may lack (each one's absence logged, with what is then not counted),
/// and the features they give.
fn attach_optional(
    ebpf: &mut Ebpf,
    btf: &Btf,
    build: &Build,
    links: &mut Vec<(&'static str, Option<BtfTracePointLinkId>)>,
) -> Features {
    let mut optional = |prog: &'static str, target: &str, what: &str| -> bool {
        match attach_btf_tracepoint(ebpf, btf, prog, target) {
            Ok(link) => {
                links.push((prog, Some(link)));
                true
            }
            Err(e) => {
                log::warn!("tracepoint {target} unavailable ({e:#}): {what}");
                false
            }
        }
    };
    let error_reports = optional("inet_sk_error_report", "inet_sk_error_report", "socket errors are not counted");
    let sent = optional("tcp_send_reset", "tcp_send_reset", "resets sent are not counted");
    let received = optional("tcp_receive_reset", "tcp_receive_reset", "resets received are not counted");
    let lost = "requests and bytes are not counted, accepted connections stay charged to the listener's owner";
    let requests = if build.calls {
        let (send, recv) = if build.legacy {
            ("sock_send_length_legacy", "sock_recv_length_legacy")
        } else {
            ("sock_send_length", "sock_recv_length")
        };
        optional(send, "sock_send_length", lost) && optional(recv, "sock_recv_length", lost)
    } else {
        optional("tcp_rcv_space_adjust_legacy", "tcp_rcv_space_adjust", lost)
    };
    // Process exits are the daemon's to find (through pidfds), not the kernel programs'.
    Features {
        error_reports,
        resets: sent && received,
        requests,
        tls: requests && build.tls_capture != 0,
        process_exits: false,
    }
}
