//! The kernel's own TCP socket table through sock_diag netlink (what `ss -tan` reads), in any
//! network namespace.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, Timer},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

pub use netlink_packet_sock_diag::inet::StateFlags;

use observer_core::model::TcpState;
use observer_core::table_audit::KernelCookies;
use observer_core::timewait::{KernelTimeWait, TIME_WAIT_NS};

/// One socket of the kernel's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// For timewait sockets, the sub-state (TIME_WAIT or FIN_WAIT2).
    pub state: TcpState,
    /// Inode of the socket's file (0 for orphaned and timewait sockets).
    pub inode: u32,
    /// The socket's cookie (`bpf_get_socket_cookie`'s; a timewait socket keeps the cookie of
    /// the full socket it was made from).
    pub cookie: u64,
    /// A timewait socket (TIME_WAIT, or FIN_WAIT2 for an orphan): the full socket is gone.
    pub timewait: bool,
    /// Milliseconds until the socket's timer fires, as the kernel reported them (`idiag_expires`;
    /// for a timewait socket, the end of its TIME_WAIT or FIN_WAIT2), 0 with no timer.
    pub expires_ms: u32,
}

/// Where `idiag_expires` is in a sock_diag answer: after the netlink header (16 bytes), and in
/// `struct inet_diag_msg` after family, state, timer, retransmits (4 bytes) and the socket's id
/// (48). netlink-packet-sock-diag parses it for every timer but a timewait socket's.
const EXPIRES_OFFSET: usize = 16 + 4 + 48;

/// `idiag_expires` of the answer `msg` (0 if it is too short to hold one).
fn expires_ms(msg: &[u8]) -> u32 {
    msg.get(EXPIRES_OFFSET..EXPIRES_OFFSET + 4).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// TCP sockets in `states` of the current network namespace, IPv4 and IPv6.
pub fn dump(states: StateFlags) -> Result<Vec<DiagSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
    socket.bind_auto().context("binding the netlink socket")?;
    socket.connect(&NlAddr::new(0, 0)).context("connecting the netlink socket")?;
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump_family(&socket, family, states.clone(), &mut out)?;
    }
    Ok(out)
}

/// The same, inside the network namespace at `netns_path` (`/proc/<pid>/ns/net`).
pub fn dump_in(netns_path: &Path, states: StateFlags) -> Result<Vec<DiagSocket>> {
    super::netns::run_in(netns_path, move || dump(states))
}

/// TCP sockets in `states` of the network namespace at `netns_path`, or (None) of this one.
fn dump_at(netns_path: Option<&Path>, states: StateFlags) -> Result<Vec<DiagSocket>> {
    match netns_path {
        Some(p) => dump_in(p, states),
        None => dump(states),
    }
}

/// The cookies of the TCP sockets in `states` (all of them with `all_states`, else only the
/// closing and timewait ones), in `netns_path` or (None) here.
pub fn dump_cookies(netns_path: Option<&Path>, all_states: bool) -> Result<KernelCookies> {
    let states = if all_states {
        StateFlags::all()
    } else {
        StateFlags::FIN_WAIT1
            | StateFlags::FIN_WAIT2
            | StateFlags::CLOSING
            | StateFlags::LAST_ACK
            | StateFlags::TIME_WAIT
    };
    let mut out = KernelCookies::default();
    let sockets = dump_at(netns_path, states)?;
    // After the dump: the times derived from it are never earlier than the kernel's.
    let dumped_ns = crate::clock::monotonic_ns();
    for s in sockets {
        if s.timewait {
            out.timewait.insert(s.cookie, time_wait_began(&s, dumped_ns));
        } else {
            out.full.insert(s.cookie);
        }
    }
    out.dumped_ns = dumped_ns;
    Ok(out)
}

/// When the timewait socket `s`, listed at `dumped_ns` (CLOCK_MONOTONIC), entered TIME_WAIT: its
/// timer, set to `TCP_TIMEWAIT_LEN` (60 s, fixed in the kernel) then, has `expires_ms` left. None
/// in the FIN_WAIT2 sub-state, whose timer depends on settings and on the connection.
///
/// The timer is set again when a segment comes in TIME_WAIT, and when the peer's FIN turns an
/// orphan's FIN_WAIT2 into TIME_WAIT: the time is then that of the segment, later than the full
/// socket's end, never earlier.
pub fn time_wait_began(s: &DiagSocket, dumped_ns: u64) -> Option<u64> {
    let left_ns = u64::from(s.expires_ms) * 1_000_000;
    if s.state != TcpState::TimeWait || left_ns > TIME_WAIT_NS {
        return None;
    }
    dumped_ns.checked_sub(TIME_WAIT_NS - left_ns)
}

/// Timewait sockets (TIME_WAIT and FIN_WAIT2 sub-states), in `netns_path` or (None) here.
pub fn dump_timewait(netns_path: Option<&Path>) -> Result<Vec<KernelTimeWait>> {
    let states = StateFlags::TIME_WAIT | StateFlags::FIN_WAIT2;
    Ok(dump_at(netns_path, states)?
        .into_iter()
        .filter(|s| matches!(s.state, TcpState::TimeWait | TcpState::FinWait2))
        .map(|s| KernelTimeWait { local: s.local, remote: s.remote, substate: s.state })
        .collect())
}

fn dump_family(socket: &Socket, family: u8, states: StateFlags, out: &mut Vec<DiagSocket>) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id: if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() },
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf[..], 0).context("sending the sock_diag request")?;

    let mut rx = vec![0u8; 1 << 16];
    loop {
        let size = socket.recv(&mut &mut rx[..], 0).context("reading sock_diag")?;
        let mut offset = 0;
        while offset < size {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[offset..size])
                .map_err(|e| anyhow!("decoding sock_diag: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => bail!("sock_diag error: {e:?}"),
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    if let Some(state) = TcpState::from_kernel(h.state) {
                        // Two 32-bit halves, low first, each in host order.
                        let c = h.socket_id.cookie;
                        let half = |i: usize| u64::from(u32::from_ne_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]));
                        out.push(DiagSocket {
                            local: SocketAddr::new(h.socket_id.source_address, h.socket_id.source_port),
                            remote: SocketAddr::new(h.socket_id.destination_address, h.socket_id.destination_port),
                            state,
                            inode: h.inode,
                            cookie: half(0) | half(4) << 32,
                            timewait: state == TcpState::TimeWait || h.timer == Some(Timer::TimeWait),
                            expires_ms: expires_ms(&rx[offset..size.min(offset + len)]),
                        });
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timewait(state: TcpState, expires_ms: u32) -> DiagSocket {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        DiagSocket { local: a, remote: a, state, inode: 0, cookie: 9, timewait: true, expires_ms }
    }

    #[test]
    fn a_time_wait_began_when_its_60_s_timer_was_set() {
        const S: u64 = 1_000_000_000;
        // 59.25 s left when listed at 100 s: set 0.75 s before.
        assert_eq!(time_wait_began(&timewait(TcpState::TimeWait, 59_250), 100 * S), Some(100 * S - 750_000_000));
        assert_eq!(time_wait_began(&timewait(TcpState::TimeWait, 60_000), 100 * S), Some(100 * S));
        // FIN_WAIT2's timer is not TIME_WAIT's; a timer longer than 60 s is not one it set.
        assert_eq!(time_wait_began(&timewait(TcpState::FinWait2, 59_250), 100 * S), None);
        assert_eq!(time_wait_began(&timewait(TcpState::TimeWait, 60_001), 100 * S), None);
        // Listed before the clock reached its start (cannot be: no time).
        assert_eq!(time_wait_began(&timewait(TcpState::TimeWait, 0), S), None);
    }

    /// Against this machine's kernel: a loopback connection closed by its client leaves the
    /// client's socket in TIME_WAIT; listed 1.2 s later, it began when the connection closed.
    #[test]
    fn the_kernel_says_when_a_time_wait_began() {
        use std::io::Read as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let local = client.local_addr().unwrap();
        let (mut server, _) = listener.accept().unwrap();
        drop(client);
        // The client's FIN read, the server closes: the client's socket enters TIME_WAIT.
        assert_eq!(server.read(&mut [0u8; 1]).unwrap(), 0);
        drop(server);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let closed = crate::clock::monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(1200));
        let sockets = dump(StateFlags::TIME_WAIT).unwrap();
        let now = crate::clock::monotonic_ns();
        let s = sockets.iter().find(|s| s.local == local).expect("the client's socket in TIME_WAIT");
        assert!(s.timewait && s.state == TcpState::TimeWait, "{s:?}");
        assert!((58_500..=58_900).contains(&s.expires_ms), "{s:?}");
        let began = time_wait_began(s, now).unwrap();
        // Between the close and 50 ms before it (a jiffy or two of rounding on top).
        assert!(began <= closed + 20_000_000 && began + 80_000_000 >= closed, "began {began}, closed by {closed}");
    }

    #[test]
    fn reads_idiag_expires_after_the_netlink_header_and_the_socket_id() {
        let mut msg = vec![0u8; 16 + 72];
        msg[EXPIRES_OFFSET..EXPIRES_OFFSET + 4].copy_from_slice(&59_250u32.to_ne_bytes());
        assert_eq!(expires_ms(&msg), 59_250);
        assert_eq!(expires_ms(&msg[..EXPIRES_OFFSET + 3]), 0, "too short");
    }
}
