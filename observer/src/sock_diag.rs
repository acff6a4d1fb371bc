//! The kernel's own TCP socket table through sock_diag netlink (what `ss -tan` reads), in any
//! network namespace.

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
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

use crate::model::TcpState;
use crate::table_audit::KernelCookies;
use crate::timewait::KernelTimeWait;

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

/// The same, inside the network namespace at `netns_path` (`/proc/<pid>/ns/net`). Runs on a
/// short-lived thread, since entering a namespace changes the calling thread.
pub fn dump_in(netns_path: &Path, states: StateFlags) -> Result<Vec<DiagSocket>> {
    let ns = std::fs::File::open(netns_path).with_context(|| format!("opening {}", netns_path.display()))?;
    std::thread::spawn(move || {
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::Error::new(std::io::Error::last_os_error()).context("setns"));
        }
        dump(states)
    })
    .join()
    .map_err(|_| anyhow!("sock_diag thread panicked"))?
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
    for s in dump_at(netns_path, states)? {
        if s.timewait {
            out.timewait.insert(s.cookie)
        } else {
            out.full.insert(s.cookie)
        };
    }
    Ok(out)
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
