//! Decoding of the kernel's ring-buffer records into typed events.

use observer_common::{
    Claimed, Closed, Event, IDLE_NEVER, TlsChunkHeader, Transition, flags, io_dir, kind, tcp_state, tls_capture,
};

use crate::model::{Endpoint, IoCounts, ProcessKey, TICK_NS, TcpState};

/// The process a kernel record names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub key: ProcessKey,
    pub comm: Comm,
}

/// A task's `comm` as the kernel stores it (NUL-padded): decoded only when a process is first
/// seen, not for every event.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        &self.0[..end]
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// At most 15 bytes, as the kernel keeps them.
impl From<&str> for Comm {
    fn from(s: &str) -> Comm {
        let mut c = [0u8; 16];
        let n = s.len().min(15);
        c[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm(c)
    }
}

impl From<String> for Comm {
    fn from(s: String) -> Comm {
        Comm::from(s.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    State {
        old: TcpState,
        new: TcpState,
    },
    /// A process started using a connection accepted from a listener.
    Claim,
    ErrorReport,
    ResetSent,
    ResetReceived,
}

impl EventKind {
    /// The kinds' names, in [`EventKind::index`] order.
    pub const NAMES: [&'static str; 5] = ["state", "claim", "error_report", "reset_sent", "reset_received"];

    pub fn index(self) -> usize {
        match self {
            EventKind::State { .. } => 0,
            EventKind::Claim => 1,
            EventKind::ErrorReport => 2,
            EventKind::ResetSent => 3,
            EventKind::ResetReceived => 4,
        }
    }
}

/// A decoded kernel record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketEvent {
    /// CLOCK_MONOTONIC ns; 0 for a compact transition other than into CLOSE_WAIT (the kernel
    /// does not read the clock for those: nothing uses their time).
    pub ts_ns: u64,
    /// Kernel address of the socket (0 if none).
    pub sk: u64,
    pub owner: Option<Owner>,
    pub kind: EventKind,
    pub family: u16,
    pub local: Endpoint,
    pub remote: Endpoint,
    /// See [`observer_common::Event::error`].
    pub error: i32,
    pub netns: Option<u32>,
    /// STATE to CLOSE: the socket's final I/O counters.
    pub io: IoCounts,
    /// Whether `family`, `local`, `remote` and `netns` were reported (a compact transition of a
    /// tracked socket has only its states).
    pub has_tuple: bool,
    /// A compact SYN_SENT->ESTABLISHED: the local port the connect got (the rest of the tuple
    /// came with its first record). 0 otherwise.
    pub local_port: u16,
    /// A compact ESTABLISHED->CLOSE_WAIT: how long the connection had been idle (no send or
    /// receive by the application) when the peer's FIN arrived, to the millisecond (the kernel's
    /// last send or receive time can be up to a tick early: see
    /// [`observer_common::SockState::last_io_ns`]). None if unknown or never used.
    pub idle_ns: Option<u64>,
    /// The first record of a socket the kernel tracked silently since its creation (an accepted
    /// connection, first reported at the end of SYN_RECV): its creation, for user space.
    pub first: bool,
    /// The socket's cookie, in the records that report a tracked socket with its addresses (see
    /// [`observer_common::Event::cookie`]); 0 otherwise.
    pub cookie: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    UnknownKind(u8),
    UnknownState(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short(n) => write!(f, "record of {n} bytes is too short"),
            DecodeError::UnknownKind(k) => write!(f, "unknown event kind {k}"),
            DecodeError::UnknownState(s) => write!(f, "unknown TCP state {s}"),
        }
    }
}

/// Decode one ring-buffer record: an [`Event`], or a compact [`Transition`].
/// A record with the first bytes of a send or receive (see `observer_common::tls_capture`), or
/// None if the record is something else.
fn tls_chunk(bytes: &[u8]) -> Option<Result<crate::tls::Chunk, DecodeError>> {
    let header_len = size_of::<TlsChunkHeader>();
    if bytes.len() < 8 || u64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes")) != tls_capture::MAGIC {
        return None;
    }
    if bytes.len() < header_len {
        return Some(Err(DecodeError::Short(bytes.len())));
    }
    // SAFETY: TlsChunkHeader is plain old data and the record is at least as large.
    let h: TlsChunkHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TlsChunkHeader>()) };
    let data = &bytes[header_len..];
    if data.len() < h.captured as usize {
        return Some(Err(DecodeError::Short(bytes.len())));
    }
    let dir = match u32::from(h.dir) {
        io_dir::SEND => crate::tls::Dir::Send,
        io_dir::RECV => crate::tls::Dir::Recv,
        other => return Some(Err(DecodeError::UnknownKind(other as u8))),
    };
    Some(Ok(crate::tls::Chunk {
        ts_ns: h.ts_ns,
        sk: h.sk,
        dir,
        len: h.len,
        data: data[..h.captured as usize].to_vec(),
    }))
}

/// One ring-buffer record: a socket event, or the first bytes of a send or receive.
pub enum Record {
    Socket(SocketEvent),
    Tls(crate::tls::Chunk),
}

/// Any ring-buffer record.
pub fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
    match tls_chunk(bytes) {
        Some(chunk) => chunk.map(Record::Tls),
        None => decode(bytes).map(Record::Socket),
    }
}

pub fn decode(bytes: &[u8]) -> Result<SocketEvent, DecodeError> {
    if bytes.len() == size_of::<Transition>() {
        // SAFETY: Transition is plain old data of this size.
        let t: Transition = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Transition>()) };
        return from_transition(&t);
    }
    if bytes.len() == size_of::<Closed>() {
        // A Claimed has the same size, and its kind at the same offset.
        if bytes[std::mem::offset_of!(Closed, kind)] == kind::CLAIM {
            // SAFETY: Claimed is plain old data of this size.
            let c: Claimed = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Claimed>()) };
            return Ok(from_claimed(&c));
        }
        // SAFETY: Closed is plain old data of this size.
        let c: Closed = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Closed>()) };
        return from_closed(&c);
    }
    if bytes.len() < size_of::<Event>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: Event is plain old data and the record is at least as large; read_unaligned copes
    // with any alignment.
    let raw: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
    from_raw(&raw)
}

fn state(v: u8) -> Result<TcpState, DecodeError> {
    TcpState::from_kernel(v).ok_or(DecodeError::UnknownState(v))
}

pub fn from_transition(t: &Transition) -> Result<SocketEvent, DecodeError> {
    if t.kind != kind::TRANSITION {
        return Err(DecodeError::UnknownKind(t.kind));
    }
    let kind = EventKind::State { old: state(t.oldstate)?, new: state(t.newstate)? };
    let mut ev = compact(t.ts_ns, t.sk, kind);
    if t.oldstate == tcp_state::SYN_SENT && t.newstate == tcp_state::ESTABLISHED {
        ev.local_port = t.arg as u16;
    } else if t.newstate == tcp_state::CLOSE_WAIT && t.arg != IDLE_NEVER {
        ev.idle_ns = Some(u64::from(t.arg) * 1_000_000);
    }
    Ok(ev)
}

pub fn from_closed(c: &Closed) -> Result<SocketEvent, DecodeError> {
    if c.kind != kind::CLOSED {
        return Err(DecodeError::UnknownKind(c.kind));
    }
    let kind = EventKind::State { old: state(c.oldstate)?, new: TcpState::Close };
    Ok(SocketEvent { error: c.error, io: IoCounts::from_kernel(&c.io), ..compact(c.ts_ns, c.sk, kind) })
}

pub fn from_claimed(c: &Claimed) -> SocketEvent {
    SocketEvent { owner: owner_of(&c.owner), ..compact(c.ts_ns, c.sk, EventKind::Claim) }
}

/// The owner the kernel recorded (None for tgid 0: unknown).
fn owner_of(o: &observer_common::Owner) -> Option<Owner> {
    (o.tgid != 0).then(|| Owner {
        key: ProcessKey { pid: o.tgid, start_ns: o.start_ns / TICK_NS * TICK_NS },
        comm: Comm(o.comm),
    })
}

/// A record of a socket user space already knows (a compact one): the kernel sends neither its
/// addresses nor, but for a claim, its owner.
pub fn compact(ts_ns: u64, sk: u64, kind: EventKind) -> SocketEvent {
    let none = Endpoint::from_kernel(0, &[0; 16], 0);
    SocketEvent {
        ts_ns,
        sk,
        owner: None,
        kind,
        family: 0,
        local: none,
        remote: none,
        error: 0,
        netns: None,
        io: IoCounts::default(),
        has_tuple: false,
        local_port: 0,
        idle_ns: None,
        first: false,
        cookie: 0,
    }
}

pub fn from_raw(raw: &Event) -> Result<SocketEvent, DecodeError> {
    let kind = match raw.kind {
        kind::STATE => EventKind::State { old: state(raw.oldstate)?, new: state(raw.newstate)? },
        kind::CLAIM => EventKind::Claim,
        kind::ERROR_REPORT => EventKind::ErrorReport,
        kind::RESET_SENT => EventKind::ResetSent,
        kind::RESET_RECEIVED => EventKind::ResetReceived,
        k => return Err(DecodeError::UnknownKind(k)),
    };
    let owner = if raw.flags & flags::OWNER_KNOWN != 0 { owner_of(&raw.owner) } else { None };
    Ok(SocketEvent {
        ts_ns: raw.ts_ns,
        sk: raw.sk,
        owner,
        kind,
        family: raw.family,
        local: Endpoint::from_kernel(raw.family, &raw.saddr, raw.sport),
        remote: Endpoint::from_kernel(raw.family, &raw.daddr, raw.dport),
        error: raw.error,
        netns: (raw.flags & flags::NETNS_KNOWN != 0).then_some(raw.netns),
        io: IoCounts::from_kernel(&raw.io),
        has_tuple: raw.kind == kind::STATE,
        local_port: 0,
        idle_ns: None,
        first: raw.flags & flags::FIRST_RECORD != 0,
        cookie: raw.cookie,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_state(old: u8, new: u8) -> Event {
        let mut e = Event::zeroed();
        e.ts_ns = 42;
        e.sk = 0xffff_0000_1234;
        e.kind = kind::STATE;
        e.oldstate = old;
        e.newstate = new;
        e.flags = flags::OWNER_KNOWN | flags::NETNS_KNOWN;
        e.family = observer_common::AF_INET;
        e.sport = 40000;
        e.dport = 80;
        e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        e.netns = 4026531840;
        e.owner.tgid = 1234;
        e.owner.start_ns = 1_234_567_891;
        e.owner.comm[..7].copy_from_slice(b"python3");
        e
    }

    fn bytes(e: &Event) -> Vec<u8> {
        let p = (e as *const Event).cast::<u8>();
        unsafe { std::slice::from_raw_parts(p, size_of::<Event>()) }.to_vec()
    }

    #[test]
    fn decodes_a_state_change() {
        let ev = decode(&bytes(&raw_state(tcp_state::CLOSE, tcp_state::SYN_SENT))).unwrap();
        assert_eq!(ev.kind, EventKind::State { old: TcpState::Close, new: TcpState::SynSent });
        assert_eq!(ev.local.to_string(), "127.0.0.1:40000");
        assert_eq!(ev.remote.to_string(), "10.1.2.3:80");
        let owner = ev.owner.unwrap();
        assert_eq!(owner.key, ProcessKey { pid: 1234, start_ns: 1_230_000_000 }, "truncated to a /proc tick");
        assert_eq!(owner.comm.to_string(), "python3");
        assert_eq!(ev.netns, Some(4026531840));
    }

    #[test]
    fn an_owner_the_kernel_did_not_know_is_none() {
        let mut e = raw_state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT);
        e.flags = 0;
        assert_eq!(decode(&bytes(&e)).unwrap().owner, None);
        assert_eq!(decode(&bytes(&e)).unwrap().netns, None);
    }

    #[test]
    fn decodes_a_compact_transition() {
        let t =
            Transition { ts_ns: 7, sk: 0xabc, kind: kind::TRANSITION, oldstate: 1, newstate: 4, ..Default::default() };
        let p = (&t as *const Transition).cast::<u8>();
        let b = unsafe { std::slice::from_raw_parts(p, size_of::<Transition>()) };
        let ev = decode(b).unwrap();
        assert_eq!(ev.kind, EventKind::State { old: TcpState::Established, new: TcpState::FinWait1 });
        assert_eq!((ev.sk, ev.ts_ns, ev.has_tuple, ev.owner, ev.local_port), (0xabc, 7, false, None, 0));
        assert_eq!(ev.idle_ns, None);
        let t = Transition { ts_ns: 8, sk: 0xabc, kind: kind::TRANSITION, oldstate: 2, newstate: 1, arg: 41234, ..t };
        let ev = decode(transition_bytes(&t)).unwrap();
        assert_eq!(ev.kind, EventKind::State { old: TcpState::SynSent, new: TcpState::Established });
        assert_eq!((ev.ts_ns, ev.local_port, ev.has_tuple, ev.idle_ns), (8, 41234, false, None));
    }

    fn transition_bytes(t: &Transition) -> &[u8] {
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(t).cast::<u8>(), size_of::<Transition>()) }
    }

    #[test]
    fn the_record_layouts_keep_their_sizes() {
        assert_eq!(size_of::<Transition>(), 24);
        assert_eq!(std::mem::offset_of!(Transition, arg), 20);
        assert_eq!(size_of::<observer_common::SockSlot>(), 112);
    }

    #[test]
    fn a_transition_into_close_wait_carries_the_idle_time() {
        let t = Transition {
            ts_ns: 9_000_000_000,
            sk: 0xabc,
            kind: kind::TRANSITION,
            oldstate: tcp_state::ESTABLISHED,
            newstate: tcp_state::CLOSE_WAIT,
            arg: 2_003,
            ..Default::default()
        };
        let ev = decode(transition_bytes(&t)).unwrap();
        assert_eq!(ev.kind, EventKind::State { old: TcpState::Established, new: TcpState::CloseWait });
        assert_eq!((ev.ts_ns, ev.idle_ns, ev.local_port), (9_000_000_000, Some(2_003_000_000), 0));
        let fresh = Transition { arg: 0, ..t };
        assert_eq!(decode(transition_bytes(&fresh)).unwrap().idle_ns, Some(0), "a FIN right after a request");
        let long = Transition { arg: u32::MAX - 1, ..t };
        assert_eq!(decode(transition_bytes(&long)).unwrap().idle_ns, Some(u64::from(u32::MAX - 1) * 1_000_000));
        let never = Transition { arg: IDLE_NEVER, ..t };
        assert_eq!(decode(transition_bytes(&never)).unwrap().idle_ns, None, "never sent nor received");
        // The argument means nothing on other transitions.
        let other = Transition { oldstate: tcp_state::ESTABLISHED, newstate: tcp_state::FIN_WAIT1, arg: 5, ..t };
        let ev = decode(transition_bytes(&other)).unwrap();
        assert_eq!((ev.idle_ns, ev.local_port), (None, 0));
    }

    #[test]
    fn decodes_a_compact_claim_told_apart_from_a_close_of_the_same_size() {
        let mut owner = observer_common::Owner { tgid: 4321, start_ns: 2_345_678_901, ..Default::default() };
        owner.comm[..5].copy_from_slice(b"nginx");
        let c = Claimed { ts_ns: 9, sk: 0xdef, kind: kind::CLAIM, owner, ..Default::default() };
        let p = (&c as *const Claimed).cast::<u8>();
        let b = unsafe { std::slice::from_raw_parts(p, size_of::<Claimed>()) };
        assert_eq!(b.len(), size_of::<Closed>());
        let ev = decode(b).unwrap();
        assert_eq!(ev.kind, EventKind::Claim);
        assert_eq!((ev.sk, ev.ts_ns, ev.has_tuple, ev.netns), (0xdef, 9, false, None));
        let o = ev.owner.unwrap();
        assert_eq!(o.key, ProcessKey { pid: 4321, start_ns: 2_340_000_000 });
        assert_eq!(o.comm.to_string(), "nginx");
        let unknown = Claimed { owner: observer_common::Owner::default(), ..c };
        let p = (&unknown as *const Claimed).cast::<u8>();
        assert_eq!(decode(unsafe { std::slice::from_raw_parts(p, size_of::<Claimed>()) }).unwrap().owner, None);
    }

    #[test]
    fn decodes_a_compact_close() {
        let io = observer_common::SockIo {
            bytes_sent: 300,
            bytes_received: 4000,
            send_runs: 2,
            recv_runs: 3,
            last_dir: 2,
            claimed: 1,
        };
        let c = Closed {
            ts_ns: 9,
            sk: 0xdef,
            kind: kind::CLOSED,
            oldstate: tcp_state::FIN_WAIT2,
            _pad: [0; 2],
            error: 104,
            io,
        };
        let p = (&c as *const Closed).cast::<u8>();
        let b = unsafe { std::slice::from_raw_parts(p, size_of::<Closed>()) };
        let ev = decode(b).unwrap();
        assert_eq!(ev.kind, EventKind::State { old: TcpState::FinWait2, new: TcpState::Close });
        assert_eq!((ev.sk, ev.ts_ns, ev.error, ev.has_tuple, ev.owner), (0xdef, 9, 104, false, None));
        assert_eq!(ev.io, IoCounts::from_kernel(&io));
        assert_eq!((ev.io.bytes_sent, ev.io.bytes_received), (300, 4000));
        let mut bad = b.to_vec();
        bad[16] = kind::TRANSITION;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(kind::TRANSITION)));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode(&[0u8; 8]), Err(DecodeError::Short(8)));
        let mut e = raw_state(1, 2);
        e.kind = 99;
        assert_eq!(decode(&bytes(&e)), Err(DecodeError::UnknownKind(99)));
        let e = raw_state(1, 77);
        assert_eq!(decode(&bytes(&e)), Err(DecodeError::UnknownState(77)));
    }

    #[test]
    fn a_tls_chunk_is_told_apart_by_its_magic() {
        let h = TlsChunkHeader {
            magic: tls_capture::MAGIC,
            ts_ns: 5,
            sk: 0xffff_8881_0000_1000,
            len: 517,
            captured: 3,
            dir: io_dir::SEND as u8,
            _pad: 0,
        };
        let mut b =
            unsafe { std::slice::from_raw_parts(std::ptr::from_ref(&h).cast::<u8>(), size_of::<TlsChunkHeader>()) }
                .to_vec();
        b.extend_from_slice(&[22, 3, 1]);
        let Ok(Record::Tls(c)) = decode_record(&b) else { panic!("not a TLS chunk") };
        assert_eq!(
            (c.ts_ns, c.sk, c.len, c.dir, c.data),
            (5, 0xffff_8881_0000_1000, 517, crate::tls::Dir::Send, vec![22, 3, 1])
        );
        assert!(matches!(decode_record(&b[..b.len() - 1]), Err(DecodeError::Short(_))), "fewer bytes than captured");
        assert!(matches!(
            decode_record(&bytes(&raw_state(tcp_state::CLOSE, tcp_state::SYN_SENT))),
            Ok(Record::Socket(_))
        ));
    }
}
