//! TLS handshakes, recognised from the first bytes of connections' sends and receives: counted
//! once per connection in its bucket, and their exchanges kept out of the requests.

use super::Aggregator;
use crate::tls;

/// Connections whose handshake is followed at once (each until it closes): a bound on memory
/// if sockets are never seen closing.
const MAX_TLS_CONNS: usize = 65536;

impl Aggregator {
    /// The first bytes of a send or receive of a connection that may start with a TLS
    /// handshake.
    pub fn apply_tls(&mut self, chunk: &tls::Chunk) {
        self.stats.tls_chunks += 1;
        let Some(rec) = self.sockets.get_mut(&chunk.sk) else { return };
        let full = self.tls.len() >= MAX_TLS_CONNS;
        let conn = match self.tls.entry(chunk.sk) {
            hashbrown::hash_map::Entry::Occupied(e) => e.into_mut(),
            hashbrown::hash_map::Entry::Vacant(e) => {
                if full {
                    self.stats.tls_dropped += 1;
                    return;
                }
                e.insert(tls::Conn::default())
            }
        };
        let outcome = conn.feed(chunk);
        rec.handshake_runs = conn.handshake_runs();
        let (owner, direction, peer) = rec.key();
        if let Some(o) = outcome
            && let Some(stats) = self.peer_mut(owner, direction, peer)
        {
            stats.tls.get_or_insert_default().add(&o);
        }
    }
}
