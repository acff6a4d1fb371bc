//! Replays real handshakes recorded by `testdata/make.py` (Python's ssl, OpenSSL), as the
//! client's socket and as the server's socket would see them.

use super::*;

const MS: u64 = 1_000_000;

/// A recorded exchange: (direction from the client's side, bytes) per write.
pub(crate) fn recorded(name: &str) -> Vec<(Dir, Vec<u8>)> {
    let all: serde_json::Value = serde_json::from_str(include_str!("testdata/handshakes.json")).unwrap();
    all[name]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let dir = if c[0] == "send" { Dir::Send } else { Dir::Recv };
            let hex = c[1].as_str().unwrap();
            let bytes = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            (dir, bytes)
        })
        .collect()
}

fn flip(d: Dir) -> Dir {
    match d {
        Dir::Send => Dir::Recv,
        Dir::Recv => Dir::Send,
    }
}

/// How the application reads: whole flights, or record by record (a 5-byte header, then the
/// body), as OpenSSL does on a socket.
#[derive(Clone, Copy, PartialEq)]
enum Reads {
    Whole,
    ByRecord,
}

fn split_records(b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= b.len() {
        let len = u16::from_be_bytes([b[i + 3], b[i + 4]]) as usize;
        out.push(b[i..i + 5].to_vec());
        out.push(b[i + 5..(i + 5 + len).min(b.len())].to_vec());
        i += 5 + len;
    }
    out
}

/// The chunks of a recorded exchange as one socket sees them, 1 ms apart.
fn chunks(name: &str, server_side: bool, reads: Reads) -> Vec<Chunk> {
    let mut out = Vec::new();
    for (dir, bytes) in recorded(name) {
        let dir = if server_side { flip(dir) } else { dir };
        let parts = if dir == Dir::Recv && reads == Reads::ByRecord { split_records(&bytes) } else { vec![bytes] };
        for data in parts {
            out.push(Chunk { ts_ns: (out.len() as u64 + 1) * MS, sk: 1, dir, len: data.len() as u32, data });
        }
    }
    out
}

/// Feeds every chunk; returns the one outcome and the connection.
fn replay(chunks: &[Chunk]) -> (Vec<Outcome>, Conn) {
    let mut conn = Conn::default();
    let outcomes = chunks.iter().filter_map(|c| conn.feed(c)).collect();
    (outcomes, conn)
}

#[test]
fn a_full_tls13_handshake_as_the_client_and_as_the_server_sees_it() {
    for server_side in [false, true] {
        for reads in [Reads::Whole, Reads::ByRecord] {
            let c = chunks("tls13_full", server_side, reads);
            let (outcomes, conn) = replay(&c);
            assert_eq!(outcomes.len(), 1, "server_side={server_side}");
            let o = &outcomes[0];
            assert_eq!(o.server_name.as_deref(), Some("api.example.test"));
            assert_eq!(o.version, Some("TLS1.3"));
            assert!(!o.resumed && !o.failed && !o.resumption_offered, "{o:?}");
            // The client's Finished is its first encrypted record, in its second chunk.
            if reads == Reads::Whole {
                let client = if server_side { Dir::Recv } else { Dir::Send };
                let finished = c.iter().filter(|c| c.dir == client).nth(1).unwrap();
                assert_eq!(o.duration_ns, Some(finished.ts_ns - c[0].ts_ns));
            } else {
                assert!(o.duration_ns.unwrap() > 0);
            }
            // ClientHello; Finished, answered by the server's session tickets; then the request:
            // two of the client's three exchanges were handshake.
            assert_eq!(conn.handshake_runs(), 2, "server_side={server_side}");
            assert!(conn.is_tls());
        }
    }
}

#[test]
fn a_resumed_tls13_handshake() {
    let (outcomes, _) = replay(&chunks("tls13_resumed", false, Reads::ByRecord));
    assert_eq!(outcomes.len(), 1);
    let o = &outcomes[0];
    assert!(o.resumption_offered && o.resumed && !o.failed, "{o:?}");
    assert_eq!(o.version, Some("TLS1.3"));
}

#[test]
fn tls12_full_and_resumed() {
    let (outcomes, conn) = replay(&chunks("tls12_full", false, Reads::ByRecord));
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].version, Some("TLS1.2"));
    assert!(!outcomes[0].resumed && !outcomes[0].failed);
    // ClientHello, then the key exchange and Finished: two runs before the request.
    assert_eq!(conn.handshake_runs(), 2);

    let (outcomes, conn) = replay(&chunks("tls12_resumed", false, Reads::Whole));
    assert_eq!(outcomes.len(), 1);
    let o = &outcomes[0];
    assert!(o.resumption_offered && o.resumed && !o.failed, "{o:?}");
    // Finished, then the request in a separate write of the same run: that run is a request.
    assert_eq!(conn.handshake_runs(), 1);

    let (outcomes, conn) = replay(&chunks("tls12_full", true, Reads::Whole));
    assert_eq!(outcomes.len(), 1);
    assert!(!outcomes[0].failed);
    assert_eq!(conn.handshake_runs(), 2, "the server read the ClientHello and the client's Finished first");
}

#[test]
fn a_rejected_certificate_and_a_refused_version_are_failures() {
    for (name, server_side) in
        [("tls13_untrusted", false), ("tls13_untrusted", true), ("tls12_untrusted", false), ("version_refused", false)]
    {
        let (outcomes, _) = replay(&chunks(name, server_side, Reads::ByRecord));
        assert_eq!(outcomes.len(), 1, "{name}");
        let o = &outcomes[0];
        assert!(o.failed && !o.resumed, "{name}: {o:?}");
        assert_eq!(o.duration_ns, None);
        assert_eq!(o.server_name.as_deref(), Some("api.example.test"));
    }
}

#[test]
fn closing_before_the_handshake_completes_is_a_failure() {
    let c = chunks("tls13_full", false, Reads::Whole);
    let mut conn = Conn::default();
    assert_eq!(conn.feed(&c[0]), None);
    assert_eq!(conn.feed(&c[1]), None);
    let o = conn.close(10 * MS).expect("a handshake under way");
    assert!(o.failed);
    assert_eq!(o.version, Some("TLS1.3"), "the ServerHello was seen");
    // After completion, a close reports nothing more.
    let (_, mut done) = replay(&c);
    assert_eq!(done.close(100 * MS), None);
}

#[test]
fn the_first_bytes_of_a_call_are_enough_when_headers_fall_in_them() {
    // Only the first 300 bytes of the server's 801-byte flight were copied: the ServerHello is
    // in them, the rest of that direction is unreadable, and the client's side still tells.
    let mut c = chunks("tls13_full", false, Reads::Whole);
    assert_eq!(c[1].dir, Dir::Recv);
    c[1].data.truncate(300);
    let (outcomes, _) = replay(&c);
    assert_eq!(outcomes.len(), 1);
    assert!(!outcomes[0].failed);
    assert_eq!(outcomes[0].version, Some("TLS1.3"));

    // A ClientHello cut short cannot be read: not counted at all.
    let mut c = chunks("tls13_full", false, Reads::Whole);
    c[0].data.truncate(100);
    let (outcomes, conn) = replay(&c);
    assert!(outcomes.is_empty());
    assert!(!conn.is_tls());
}

#[test]
fn plain_http_is_never_tls() {
    let mut conn = Conn::default();
    let data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    assert_eq!(conn.feed(&Chunk { ts_ns: 1, sk: 1, dir: Dir::Send, len: data.len() as u32, data }), None);
    assert!(!conn.is_tls());
    assert_eq!(conn.close(2), None);
    // A handshake record that is not a ClientHello (garbage after 0x16) is not TLS either.
    let data = vec![22, 3, 1, 0, 4, 99, 0, 0, 0];
    let mut conn = Conn::default();
    assert_eq!(conn.feed(&Chunk { ts_ns: 1, sk: 1, dir: Dir::Send, len: 9, data }), None);
    assert!(!conn.is_tls());
}

#[test]
fn stats_add_up_by_server_name_and_version() {
    let mut st = TlsStats::default();
    for name in ["tls13_full", "tls13_resumed", "tls13_untrusted"] {
        for o in replay(&chunks(name, false, Reads::Whole)).0 {
            st.add(&o);
        }
    }
    assert_eq!(st.counts, Counts { handshakes: 3, resumed: 1, failed: 1 });
    assert_eq!(st.server_names["api.example.test"], Counts { handshakes: 3, resumed: 1, failed: 1 });
    assert_eq!(st.versions["TLS1.3"], 3);
    assert_eq!(st.durations.count, 2, "failed handshakes have no duration");
    assert_eq!(st.durations.buckets().map(|(_, n)| n).sum::<u64>(), 2);
}
