//! Resets sent and received, and errors the kernel reported on sockets. They often come just
//! after the socket's close, so they are charged to its bucket through its tombstone.

use super::{Aggregator, PeerKey};
use crate::event::SocketEvent;
use crate::model::{Direction, TcpState};

impl Aggregator {
    /// The bucket a socket event belongs to: its live record, its tombstone, or (for a socket we
    /// never tracked) the owner named by the kernel and the event's own addresses.
    fn bucket_of(&mut self, ev: &SocketEvent) -> Option<PeerKey> {
        if let Some(r) = self.sockets.get(&ev.sk) {
            return Some(r.key());
        }
        if let Some(t) = self.tombstones.get(&ev.sk) {
            return Some((t.owner, t.direction, t.peer));
        }
        let owner = ev.owner.as_ref()?;
        if ev.remote.port() == 0 {
            return None;
        }
        let key = self.ensure_process(owner, ev.ts_ns)?;
        Some(match self.find_listener(key, ev.netns, ev.local) {
            Some(l) => (key, Direction::Inbound, l),
            None => (key, Direction::Outbound, ev.remote.canonical()),
        })
    }

    pub(super) fn on_error_report(&mut self, ev: &SocketEvent) {
        if ev.error == 0 {
            return;
        }
        let Some((owner, direction, peer)) = self.bucket_of(ev) else { return };
        if let Some(stats) = self.peer_mut(owner, direction, peer) {
            *stats.socket_errors.entry(ev.error).or_default() += 1;
        }
    }

    pub(super) fn on_reset(&mut self, ev: &SocketEvent, received: bool) {
        let mut after_peer_close = false;
        if received && let Some(r) = self.sockets.get_mut(&ev.sk) {
            r.reset_received = true;
            // The peer had closed, and the process sent anyway: it reused a closed connection.
            after_peer_close = r.state == Some(TcpState::CloseWait);
        }
        let Some((owner, direction, peer)) = self.bucket_of(ev) else { return };
        if let Some(stats) = self.peer_mut(owner, direction, peer) {
            if received {
                stats.resets_received += 1;
            } else {
                stats.resets_sent += 1;
            }
            if after_peer_close {
                stats.resets_after_peer_close += 1;
                stats.last_reset_after_peer_close_ns = stats.last_reset_after_peer_close_ns.max(ev.ts_ns);
            }
        }
    }
}
