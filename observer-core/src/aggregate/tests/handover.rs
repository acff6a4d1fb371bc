//! Ownership that follows the socket, with synthetic kernel events.

use super::*;

/// A launcher (10) listens on 0.0.0.0:8080 and exits; its daemon (20) holds the listener.
fn daemonized(a: &mut Aggregator) -> Sock {
    let mut l = Sock::new(1, 10, "0.0.0.0:8080", "0.0.0.0:0");
    l.state(a, Close, Listen);
    a.mark_exited(key(10), 5 * MS);
    assert_eq!(a.take_exits(), vec![key(10)]);
    l
}

#[test]
fn a_listener_left_by_an_exited_launcher_moves_to_the_process_holding_it() {
    let mut a = Aggregator::default();
    let mut l = daemonized(&mut a);
    let held = a.held_sockets(key(10));
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].id, held[0].cookie, held[0].netns), (SocketId::Tracked(1), l.cookie, 7));
    let moves = a.hand_over(key(10), &[(held[0].id, owner(20))], 6 * MS);
    assert_eq!(moves, vec![ListenerMove { netns: 7, local: ep("0.0.0.0:8080"), owner: owner(20) }]);
    assert_eq!(inb(&a, 10, "0.0.0.0:8080").sockets.total(), 0, "nothing live left with the launcher");
    let d = inb(&a, 20, "0.0.0.0:8080");
    assert_eq!(d.sockets.get(Listen), 1);
    assert_eq!(d.inherited, Some(Inherited { from: key(10), comm: "proc10".into(), sockets: 1 }));
    assert!(a.held_sockets(key(10)).is_empty());

    // Its connections, accepted and served by a worker (21), count on that listener.
    for i in 0..3u64 {
        let mut c = Sock::new(100 + i, 20, "127.0.0.1:8080", &format!("127.0.0.1:{}", 50000 + i));
        c.state(&mut a, Listen, SynRecv);
        c.state(&mut a, SynRecv, Established);
        c.owner = Some(owner(21));
        c.other(&mut a, EventKind::Claim, 0);
        c.state(&mut a, Established, CloseWait);
        c.state(&mut a, CloseWait, LastAck);
        c.close_with(&mut a, LastAck, 0);
    }
    let w = inb(&a, 21, "0.0.0.0:8080");
    assert_eq!((w.connections, w.closed_by_peer, w.sockets.total()), (3, 3, 0));
    assert_eq!(inb(&a, 20, "0.0.0.0:8080").connections, 0);

    // The kernel's record of the listener still names the launcher: it stays with its holder,
    // and it closes there, even after the launcher is pruned.
    a.tick(40 * SECOND);
    assert!(a.process(10).is_none(), "pruned");
    assert_eq!(inb(&a, 20, "0.0.0.0:8080").sockets.get(Listen), 1, "still there after the retention");
    l.close_with(&mut a, Listen, 0);
    assert_eq!(inb(&a, 20, "0.0.0.0:8080").sockets.total(), 0);
    assert_eq!(a.tracked_sockets(), 0);
}

#[test]
fn new_connections_charged_to_the_exited_launcher_go_to_the_listeners_heir() {
    let mut a = Aggregator::default();
    daemonized(&mut a);
    a.hand_over(key(10), &[(SocketId::Tracked(1), owner(20))], 6 * MS);
    // Before the kernel's listener map is told, a child is still charged to the launcher.
    let mut c = Sock::new(2, 10, "127.0.0.1:8080", "127.0.0.1:50000");
    c.state(&mut a, Listen, SynRecv);
    c.state(&mut a, SynRecv, Established);
    assert_eq!(inb(&a, 20, "0.0.0.0:8080").sockets.get(Established), 1);
    assert!(a.process(10).unwrap().inbound[&ep("0.0.0.0:8080")].sockets.total() == 0);
    c.close_with(&mut a, Established, 0);
    assert_eq!(inb(&a, 20, "0.0.0.0:8080").connections, 1, "counted on the heir when it closes unaccepted");
}

#[test]
fn established_connections_move_with_their_counters_and_whole_lifetimes() {
    let mut a = Aggregator::default();
    // A server (10) accepted a connection and served 2 requests, then double-forked (30).
    let mut l = Sock::new(1, 10, "0.0.0.0:8080", "0.0.0.0:0");
    l.state(&mut a, Close, Listen);
    let mut c = Sock::new(2, 10, "127.0.0.1:8080", "127.0.0.1:50000");
    accepted(&mut a, &mut c);
    c.other(&mut a, EventKind::Claim, 0);
    let io =
        |runs: u64, bytes: u64| IoCounts { bytes_sent: bytes, bytes_received: bytes, send_runs: runs, recv_runs: runs };
    a.flush_io(&[(2, io(2, 200))]);
    assert_eq!(inb(&a, 10, "0.0.0.0:8080").requests, 2);
    a.mark_exited(key(10), 10 * MS);
    let held = a.held_sockets(key(10));
    assert_eq!(held.len(), 2, "{held:?}");
    let found: Vec<_> = held.iter().map(|h| (h.id, owner(30))).collect();
    let moves = a.hand_over(key(10), &found, 11 * MS);
    assert_eq!(moves.len(), 1, "the listener");
    let g = inb(&a, 30, "0.0.0.0:8080");
    assert_eq!((g.sockets.get(Listen), g.sockets.get(Established)), (1, 1));
    assert_eq!(g.inherited.as_ref().map(|i| i.sockets), Some(2));
    // 3 more requests on the same connection, then it ends.
    a.flush_io(&[(2, io(5, 500))]);
    c.io = io(5, 600);
    c.state(&mut a, Established, CloseWait);
    c.state(&mut a, CloseWait, LastAck);
    c.close_with(&mut a, LastAck, 0);
    let (old, new) = (inb(&a, 10, "0.0.0.0:8080"), inb(&a, 30, "0.0.0.0:8080"));
    assert_eq!((old.requests, old.bytes_sent, old.connections), (2, 200, 1), "history stays");
    assert_eq!((new.requests, new.bytes_sent, new.bytes_received), (3, 400, 400));
    assert_eq!((new.closed_by_peer, new.lifetimes.count), (1, 1));
    assert_eq!(new.lifetimes.min_ns, c.t - MS, "the whole lifetime, from its establishment");
    assert_eq!(new.requests_per_connection.sum, 5, "all of the connection's requests");
}

#[test]
fn connections_nobody_accepted_follow_the_listener_and_others_stay() {
    let mut a = Aggregator::default();
    let mut l = Sock::new(1, 10, "0.0.0.0:8080", "0.0.0.0:0");
    l.state(&mut a, Close, Listen);
    // In the accept queue when the launcher exits: no file holds it yet.
    let mut queued = Sock::new(2, 10, "127.0.0.1:8080", "127.0.0.1:50000");
    accepted(&mut a, &mut queued);
    // One the launcher closed itself: an orphan of the kernel's, it stays.
    let mut closed = Sock::new(3, 10, "127.0.0.1:40000", "127.0.0.1:9000");
    closed.state(&mut a, Close, SynSent);
    closed.state(&mut a, SynSent, Established);
    closed.state(&mut a, Established, FinWait1);
    a.mark_exited(key(10), 10 * MS);
    let held: Vec<SocketId> = a.held_sockets(key(10)).iter().map(|h| h.id).collect();
    assert!(held.contains(&SocketId::Tracked(1)) && held.contains(&SocketId::Tracked(2)), "{held:?}");
    assert!(!held.contains(&SocketId::Tracked(3)), "closed by its process: not held");
    // The scan finds the listener held by the daemon; the queued connection has no file yet.
    a.hand_over(key(10), &[(SocketId::Tracked(1), owner(20))], 11 * MS);
    assert_eq!(inb(&a, 20, "0.0.0.0:8080").sockets.get(Established), 1, "followed its listener");
    assert_eq!(out(&a, 10, "127.0.0.1:9000").sockets.get(FinWait1), 1, "stays with the exited process");
    // The daemon's worker takes it.
    queued.owner = Some(owner(21));
    queued.other(&mut a, EventKind::Claim, 0);
    assert_eq!(inb(&a, 21, "0.0.0.0:8080").connections, 1);
}

#[test]
fn seeded_sockets_are_handed_over_too() {
    let mut a = Aggregator::default();
    a.seed(
        &[
            SeedSocket {
                netns: 7,
                local: ep("0.0.0.0:8080"),
                remote: ep("0.0.0.0:0"),
                state: Listen,
                owner: owner(10),
            },
            SeedSocket {
                netns: 7,
                local: ep("127.0.0.1:40000"),
                remote: ep("10.0.0.9:443"),
                state: Established,
                owner: owner(10),
            },
        ],
        0,
    );
    a.mark_exited(key(10), MS);
    let found: Vec<_> = a.held_sockets(key(10)).iter().map(|h| (h.id, owner(20))).collect();
    assert_eq!(found.len(), 2);
    let moves = a.hand_over(key(10), &found, 2 * MS);
    assert_eq!(moves.len(), 1);
    assert_eq!(inb(&a, 20, "0.0.0.0:8080").sockets.get(Listen), 1);
    assert_eq!(out(&a, 20, "10.0.0.9:443").sockets.get(Established), 1);
    assert_eq!(out(&a, 10, "10.0.0.9:443").sockets.total(), 0);
    // Its first event adopts it under the heir; a new child finds the heir's listener.
    let mut s = Sock::new(0x77, 10, "127.0.0.1:40000", "10.0.0.9:443");
    s.owner = None;
    s.state(&mut a, Established, CloseWait);
    assert_eq!(out(&a, 20, "10.0.0.9:443").sockets.get(CloseWait), 1);
    let mut c = Sock::new(0x88, 20, "127.0.0.1:8080", "127.0.0.1:50001");
    c.state(&mut a, Listen, SynRecv);
    assert_eq!(inb(&a, 20, "0.0.0.0:8080").sockets.get(SynRecv), 1);
}

#[test]
fn a_socket_its_own_exited_process_is_named_for_is_not_moved() {
    let mut a = Aggregator::default();
    daemonized(&mut a);
    assert!(a.hand_over(key(10), &[(SocketId::Tracked(1), owner(10))], 6 * MS).is_empty());
    assert_eq!(inb(&a, 10, "0.0.0.0:8080").sockets.get(Listen), 1);
    // A process that exited with nothing live is not looked for.
    let mut c = Sock::new(5, 40, "127.0.0.1:40000", "127.0.0.1:8080");
    c.state(&mut a, Close, SynSent);
    c.state(&mut a, SynSent, Established);
    c.state(&mut a, Established, FinWait1);
    c.state(&mut a, FinWait1, FinWait2);
    c.close_with(&mut a, FinWait2, 0);
    a.mark_exited(key(40), 10 * MS);
    assert!(a.held_sockets(key(40)).is_empty());
}
