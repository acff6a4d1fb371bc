//! The figures the diagnosis reads: idle time at the peer's close, resets after it, connections
//! discarded and reused, the peak of open connections, failed connects in time.

use super::*;

/// A client connection to nginx carrying `requests` exchanges, then closed by the client.
fn discarded_or_reused(a: &mut Aggregator, sk: u64, requests: u64) {
    let mut s = Sock::new(sk, 100, &format!("127.0.0.1:{}", 40000 + sk), "127.0.0.1:8080");
    s.io = io(requests, requests);
    s.state(a, Close, SynSent);
    s.state(a, SynSent, Established);
    s.state(a, Established, FinWait1);
    s.state(a, FinWait1, FinWait2);
    s.close_with(a, FinWait2, 0);
}

#[test]
fn connections_closed_after_two_requests_are_discarded_and_three_or_more_reused() {
    let mut a = Aggregator::default();
    for (sk, n) in [(1, 1), (2, 2), (3, 3), (4, 40)] {
        discarded_or_reused(&mut a, sk, n);
    }
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!((st.discarded, st.reused_connections), (2, 2));
    assert!(st.last_discard_ns > 0);
}

#[test]
fn an_open_connection_is_counted_reused_once_when_its_flush_passes_three() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    a.flush_io(&[(1, io(2, 2))]);
    assert_eq!(out(&a, 100, "127.0.0.1:8080").reused_connections, 0);
    a.flush_io(&[(1, io(3, 3))]);
    a.flush_io(&[(1, io(9, 9))]);
    s.io = io(10, 10);
    s.state(&mut a, Established, FinWait1);
    s.state(&mut a, FinWait1, FinWait2);
    s.close_with(&mut a, FinWait2, 0);
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!((st.reused_connections, st.discarded, st.requests), (1, 0, 10));
}

#[test]
fn the_peak_of_established_sockets_is_kept() {
    let mut a = Aggregator::default();
    let mut socks: Vec<Sock> =
        (0..5).map(|i| Sock::new(10 + i, 100, &format!("127.0.0.1:{}", 41000 + i), "127.0.0.1:8080")).collect();
    for s in &mut socks {
        s.state(&mut a, Close, SynSent);
        s.state(&mut a, SynSent, Established);
    }
    for s in socks.iter_mut().take(3) {
        s.state(&mut a, Established, FinWait1);
    }
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!((st.peak_established, st.sockets.get(Established)), (5, 2));
}

#[test]
fn the_peer_closing_an_idle_connection_is_an_idle_sample_and_a_reset_after_it_is_stale_reuse() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    let mut fin = s.ev(EventKind::State { old: Established, new: CloseWait }, 0);
    fin.idle_ns = Some(2_003 * MS);
    a.apply(&fin);
    // The process sends anyway: the server's RST.
    s.other(&mut a, EventKind::ResetReceived, 0);
    s.close_with(&mut a, CloseWait, libc::EPIPE);
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!((st.idle_closes.samples, st.idle_closes.p50_ns()), (1, Some(2_003 * MS)));
    assert_eq!((st.resets_after_peer_close, st.resets_received), (1, 1));
    assert!(st.last_reset_after_peer_close_ns > 0);
}

#[test]
fn a_reset_on_an_open_connection_or_an_inbound_peer_close_is_neither() {
    let mut a = Aggregator::default();
    let mut s = Sock::new(1, 100, "127.0.0.1:40000", "127.0.0.1:8080");
    s.state(&mut a, Close, SynSent);
    s.state(&mut a, SynSent, Established);
    s.other(&mut a, EventKind::ResetReceived, 0);
    s.close_with(&mut a, Established, libc::ECONNRESET);
    let st = out(&a, 100, "127.0.0.1:8080");
    assert_eq!((st.resets_received, st.resets_after_peer_close, st.idle_closes.samples), (1, 0, 0));

    let mut l = Sock::new(2, 200, "0.0.0.0:8080", "0.0.0.0:0");
    l.state(&mut a, Close, Listen);
    let mut c = Sock::new(3, 200, "127.0.0.1:8080", "127.0.0.1:50000");
    accepted(&mut a, &mut c);
    let mut fin = c.ev(EventKind::State { old: Established, new: CloseWait }, 0);
    fin.idle_ns = Some(MS);
    a.apply(&fin);
    assert_eq!(inb(&a, 200, "0.0.0.0:8080").idle_closes.samples, 0, "measured for outbound peers only");
}

#[test]
fn failed_connects_are_logged_in_time() {
    let mut a = Aggregator::default();
    for i in 0..4 {
        let mut s = Sock::new(10 + i, 100, "127.0.0.1:0", "127.0.0.1:9");
        s.state(&mut a, Close, SynSent);
        s.close_with(&mut a, SynSent, libc::ECONNREFUSED);
    }
    let st = out(&a, 100, "127.0.0.1:9");
    let (b, _) = st.failure_log.as_ref().expect("failures logged").bursts(0, 1_000 * MS);
    assert_eq!((b.failures, b.bursts, b.last_burst_attempts), (4, 1, 4));
    assert_eq!(st.last_connected_ns, 0);
}
