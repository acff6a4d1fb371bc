//! Vocabulary shared by the aggregation, the API and the metrics: TCP states, endpoints,
//! process identity, failure reasons.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use observer_common::tcp_state;

/// A TCP state, numbered as in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    pub fn from_kernel(v: u8) -> Option<TcpState> {
        Some(match v {
            tcp_state::ESTABLISHED => TcpState::Established,
            tcp_state::SYN_SENT => TcpState::SynSent,
            tcp_state::SYN_RECV => TcpState::SynRecv,
            tcp_state::FIN_WAIT1 => TcpState::FinWait1,
            tcp_state::FIN_WAIT2 => TcpState::FinWait2,
            tcp_state::TIME_WAIT => TcpState::TimeWait,
            tcp_state::CLOSE => TcpState::Close,
            tcp_state::CLOSE_WAIT => TcpState::CloseWait,
            tcp_state::LAST_ACK => TcpState::LastAck,
            tcp_state::LISTEN => TcpState::Listen,
            tcp_state::CLOSING => TcpState::Closing,
            tcp_state::NEW_SYN_RECV => TcpState::NewSynRecv,
            _ => return None,
        })
    }

    /// The name used in the API and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    /// Index into [`StateCounts`], for the states a live socket is reported in.
    fn slot(self) -> Option<usize> {
        REPORTED_STATES.iter().position(|s| *s == self)
    }
}

/// The states reported for live sockets, in API order.
pub const REPORTED_STATES: [TcpState; 10] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::TimeWait,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Closing,
    TcpState::Listen,
];

/// Live sockets by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts([u64; REPORTED_STATES.len()]);

impl StateCounts {
    pub fn add(&mut self, state: TcpState, n: u64) {
        if let Some(i) = state.slot() {
            self.0[i] += n;
        }
    }

    pub fn sub(&mut self, state: TcpState, n: u64) {
        if let Some(i) = state.slot() {
            self.0[i] = self.0[i].saturating_sub(n);
        }
    }

    pub fn get(&self, state: TcpState) -> u64 {
        state.slot().map_or(0, |i| self.0[i])
    }

    pub fn merge(&mut self, other: &StateCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (TcpState, u64)> + '_ {
        REPORTED_STATES.iter().copied().zip(self.0.iter().copied())
    }
}

/// An IP endpoint, printed as `ip:port` or `[ipv6]:port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint(pub SocketAddr);

/// Hashes an address as one or two integers: `SocketAddr`'s derived hash feeds its fields one
/// by one (the IPv4 octets as a length-prefixed slice), and the aggregation hashes addresses on
/// every event. Equal addresses hash equally (the fields left out only make them differ more).
pub fn hash_addr<H: std::hash::Hasher>(a: &SocketAddr, h: &mut H) {
    match a {
        SocketAddr::V4(v) => h.write_u64(u64::from(u32::from(*v.ip())) << 16 | u64::from(v.port())),
        SocketAddr::V6(v) => {
            h.write_u128(u128::from(*v.ip()));
            h.write_u16(v.port());
        }
    }
}

impl std::hash::Hash for Endpoint {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        hash_addr(&self.0, h);
    }
}

impl Endpoint {
    /// From the kernel's representation: family, address bytes in network order, port.
    pub fn from_kernel(family: u16, addr: &[u8; 16], port: u16) -> Endpoint {
        let ip = if family == observer_common::AF_INET {
            IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*addr))
        };
        Endpoint(SocketAddr::new(ip, port))
    }

    /// The same endpoint with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) written as IPv4,
    /// so that a dual-stack socket and an IPv4 socket to the same peer aggregate together.
    pub fn canonical(self) -> Endpoint {
        Endpoint(SocketAddr::new(self.0.ip().to_canonical(), self.0.port()))
    }

    pub fn port(self) -> u16 {
        self.0.port()
    }

    pub fn ip(self) -> IpAddr {
        self.0.ip()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SocketAddr already prints "1.2.3.4:80" and "[::1]:80"; drop any v6 scope id.
        match self.0 {
            SocketAddr::V4(a) => write!(f, "{a}"),
            SocketAddr::V6(a) => write!(f, "[{}]:{}", a.ip(), a.port()),
        }
    }
}

/// Granularity of process start times: one clock tick of /proc (USER_HZ is 100 on Linux).
/// Start times from the kernel (ns) are truncated to it so that they compare equal with the
/// ones read from `/proc/<pid>/stat`.
pub const TICK_NS: u64 = 10_000_000;

/// A process: pid plus the start time of its thread-group leader (pids are reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub pid: u32,
    /// ns since boot, truncated to [`TICK_NS`]; 0 when unknown.
    pub start_ns: u64,
}

impl ProcessKey {
    /// Whether two keys can name the same process (an unknown start time matches any).
    pub fn same_process(&self, other: &ProcessKey) -> bool {
        self.pid == other.pid && (self.start_ns == 0 || other.start_ns == 0 || self.start_ns == other.start_ns)
    }
}

/// Which side opened the connection, as seen by the owning process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The process connected (aggregated by remote endpoint).
    Outbound,
    /// The process accepted (aggregated by the local listening endpoint).
    Inbound,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// What an application sent and received on a socket (see `observer_common::SockIo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounts {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Sends that follow a receive, or the first send.
    pub send_runs: u64,
    /// Receives that follow a send, or the first receive.
    pub recv_runs: u64,
}

impl IoCounts {
    pub fn from_kernel(io: &observer_common::SockIo) -> IoCounts {
        IoCounts {
            bytes_sent: io.bytes_sent,
            bytes_received: io.bytes_received,
            send_runs: u64::from(io.send_runs),
            recv_runs: u64::from(io.recv_runs),
        }
    }

    /// What was added since `prev` (counters only grow; if they went back, the kernel record
    /// was replaced and everything is new).
    pub fn since(&self, prev: &IoCounts) -> IoCounts {
        if self.bytes_sent < prev.bytes_sent
            || self.bytes_received < prev.bytes_received
            || self.send_runs < prev.send_runs
            || self.recv_runs < prev.recv_runs
        {
            return *self;
        }
        IoCounts {
            bytes_sent: self.bytes_sent - prev.bytes_sent,
            bytes_received: self.bytes_received - prev.bytes_received,
            send_runs: self.send_runs - prev.send_runs,
            recv_runs: self.recv_runs - prev.recv_runs,
        }
    }

    /// Request/response exchanges: a client's requests start with a send, a server's with a
    /// receive.
    pub fn requests(&self, direction: Direction) -> u64 {
        match direction {
            Direction::Outbound => self.send_runs,
            Direction::Inbound => self.recv_runs,
        }
    }
}

/// An ephemeral port range (`net.ipv4.ip_local_port_range`), both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    /// From the sysctl's text, "32768\t60999".
    pub fn parse(text: &str) -> Option<PortRange> {
        let mut it = text.split_whitespace().map(|s| s.parse::<u16>());
        let (Some(Ok(low)), Some(Ok(high)), None) = (it.next(), it.next(), it.next()) else { return None };
        (low <= high).then_some(PortRange { low, high })
    }

    pub fn size(self) -> u64 {
        u64::from(self.high - self.low) + 1
    }
}

/// Why an outbound connect failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// RST in answer to the SYN (ECONNREFUSED).
    Refused,
    /// The kernel gave up (ETIMEDOUT) or the application closed the socket in SYN_SENT.
    Timeout,
    /// EHOSTUNREACH / ENETUNREACH (ICMP errors, no route).
    Unreachable,
    /// ECONNRESET during the handshake.
    Reset,
    /// Anything else (EADDRNOTAVAIL: no local port left, EACCES/EPERM: firewall, ...).
    Other,
}

pub const FAILURE_REASONS: [FailureReason; 5] = [
    FailureReason::Refused,
    FailureReason::Timeout,
    FailureReason::Unreachable,
    FailureReason::Reset,
    FailureReason::Other,
];

impl FailureReason {
    /// Classify a connect that ended in SYN_SENT from the socket's error and its local port.
    /// No error means the socket closed while still in SYN_SENT: the application's own connect
    /// timeout, unless the kernel never found it a local port (port exhaustion: connect() fails
    /// with EADDRNOTAVAIL right after the move to SYN_SENT, before any SYN).
    pub fn of_connect(errno: i32, local_port: u16) -> FailureReason {
        if errno == 0 && local_port == 0 {
            return FailureReason::Other;
        }
        FailureReason::from_errno(errno)
    }

    /// Classify the error of a connect that ended. `errno` 0 means the application closed the
    /// socket while it was still in SYN_SENT, i.e. its own connect timeout.
    pub fn from_errno(errno: i32) -> FailureReason {
        match errno {
            libc::ECONNREFUSED => FailureReason::Refused,
            0 | libc::ETIMEDOUT => FailureReason::Timeout,
            libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN => FailureReason::Unreachable,
            libc::ECONNRESET => FailureReason::Reset,
            _ => FailureReason::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FailureReason::Refused => "refused",
            FailureReason::Timeout => "timeout",
            FailureReason::Unreachable => "unreachable",
            FailureReason::Reset => "reset",
            FailureReason::Other => "other",
        }
    }

    fn slot(self) -> usize {
        FAILURE_REASONS.iter().position(|r| *r == self).unwrap_or(4)
    }
}

/// Connect failures by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureCounts([u64; FAILURE_REASONS.len()]);

impl FailureCounts {
    pub fn add(&mut self, reason: FailureReason) {
        self.0[reason.slot()] += 1;
    }

    pub fn get(&self, reason: FailureReason) -> u64 {
        self.0[reason.slot()]
    }

    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn merge(&mut self, other: &FailureCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
}

/// Symbolic name of an errno, for the `socket_errors` maps.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::ENETDOWN => "ENETDOWN",
        libc::EPIPE => "EPIPE",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOBUFS => "ENOBUFS",
        libc::EAGAIN => "EAGAIN",
        libc::EINVAL => "EINVAL",
        _ => return format!("errno_{errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_print_like_the_api_contract() {
        let v4 = Endpoint::from_kernel(2, &[127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8080);
        assert_eq!(v4.to_string(), "127.0.0.1:8080");
        let mut one = [0u8; 16];
        one[15] = 1;
        let v6 = Endpoint::from_kernel(10, &one, 443);
        assert_eq!(v6.to_string(), "[::1]:443");
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[10, 0, 0, 7]);
        let m = Endpoint::from_kernel(10, &mapped, 80);
        assert_eq!(m.to_string(), "[::ffff:10.0.0.7]:80");
        assert_eq!(m.canonical().to_string(), "10.0.0.7:80");
    }

    #[test]
    fn failure_reasons_follow_the_errno() {
        assert_eq!(FailureReason::from_errno(libc::ECONNREFUSED), FailureReason::Refused);
        assert_eq!(FailureReason::from_errno(0), FailureReason::Timeout);
        assert_eq!(FailureReason::from_errno(libc::ETIMEDOUT), FailureReason::Timeout);
        assert_eq!(FailureReason::from_errno(libc::EHOSTUNREACH), FailureReason::Unreachable);
        assert_eq!(FailureReason::from_errno(libc::ENETUNREACH), FailureReason::Unreachable);
        assert_eq!(FailureReason::from_errno(libc::ECONNRESET), FailureReason::Reset);
        assert_eq!(FailureReason::from_errno(libc::EADDRNOTAVAIL), FailureReason::Other);
        assert_eq!(FailureReason::of_connect(0, 40000), FailureReason::Timeout);
        assert_eq!(FailureReason::of_connect(0, 0), FailureReason::Other, "no local port");
        assert_eq!(FailureReason::of_connect(libc::ECONNREFUSED, 40000), FailureReason::Refused);
    }

    #[test]
    fn state_counts_only_hold_reported_states() {
        let mut c = StateCounts::default();
        c.add(TcpState::Established, 2);
        c.add(TcpState::Close, 5);
        c.add(TcpState::NewSynRecv, 5);
        c.sub(TcpState::Established, 1);
        c.sub(TcpState::Listen, 1);
        assert_eq!(c.get(TcpState::Established), 1);
        assert_eq!(c.get(TcpState::Close), 0);
        assert_eq!(c.total(), 1);
        assert_eq!(c.iter().count(), 10);
    }

    #[test]
    fn process_keys_with_unknown_start_match_any_start() {
        let a = ProcessKey { pid: 7, start_ns: 100 };
        let b = ProcessKey { pid: 7, start_ns: 200 };
        let c = ProcessKey { pid: 7, start_ns: 0 };
        assert!(!a.same_process(&b));
        assert!(a.same_process(&c));
        assert!(!a.same_process(&ProcessKey { pid: 8, start_ns: 100 }));
    }
}
