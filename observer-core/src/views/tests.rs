//! Every document reads back into its own type, unchanged: what clients rely on.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;
use crate::closewait::Verdict;
use crate::model::StateCounts;
use crate::model::TcpState;

/// Serialize, read back, compare, and serialize again to the same bytes.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(doc: &T) {
    let json = serde_json::to_string(doc).unwrap();
    let back: T = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(&back, doc);
    assert_eq!(serde_json::to_string(&back).unwrap(), json, "the same bytes again");
}

fn sockets(counts: &[(TcpState, u64)]) -> Sockets {
    let mut s = StateCounts::default();
    for (state, n) in counts {
        s.add(*state, *n);
    }
    Sockets(s)
}

fn close_wait(count: u64, verdict: Verdict) -> CloseWait {
    CloseWait { count, oldest_seconds: 31.5, growth_per_minute: -0.5, verdict }
}

fn reuse(reuse_ratio: Option<f64>) -> Reuse {
    Reuse {
        requests: 150,
        bytes_sent: 9803,
        bytes_received: 803,
        reuse_ratio,
        new_connections_per_second: 0.85,
        requests_per_connection: RequestsPerConnection {
            count: 51,
            sum: 150,
            max: 4,
            buckets: vec![Bucket { le: 0, count: 1 }, Bucket { le: 4, count: 50 }],
        },
    }
}

fn tls() -> Tls {
    Tls {
        handshakes: 51,
        resumed: 3,
        failed: 1,
        server_names: [("api.example.com".into(), TlsCounts { handshakes: 51, resumed: 3, failed: 1 })].into(),
        versions: [("TLS1.3".into(), 51)].into(),
        handshake_ms: HandshakeMs { count: 50, sum: 100.0, mean: 2.0, buckets: vec![MsBucket { le: 2.5, count: 50 }] },
    }
}

fn outbound() -> Outbound {
    Outbound {
        remote: "10.0.0.7:443".into(),
        sockets: sockets(&[(TcpState::Established, 1), (TcpState::TimeWait, 50)]),
        connections_opened: 51,
        closed_by_local: 50,
        closed_by_peer: 0,
        connect_failures: ConnectFailures { refused: 4, timeout: 1, unreachable: 2, reset: 3, other: 5 },
        resets_sent: 0,
        resets_received: 3,
        socket_errors: [("ECONNRESET".into(), 3)].into(),
        connection_lifetime_seconds: LifetimeSeconds { count: 50, mean: 0.25, min: 0.125, max: 1.5 },
        reuse: reuse(Some(2.9375)),
        close_wait: close_wait(0, Verdict::None),
        idle_close_seconds: IdleCloseSeconds { min: Some(1.5), p50: Some(2.0), max: Some(2.25), samples: 3 },
        tls: Some(tls()),
        inherited_from: Some(InheritedFrom { pid: 7, comm: "nginx".into(), sockets: 1 }),
    }
}

fn inbound() -> Inbound {
    Inbound {
        local: "0.0.0.0:9001".into(),
        sockets: sockets(&[(TcpState::CloseWait, 25), (TcpState::Listen, 1)]),
        connections_accepted: 25,
        closed_by_local: 0,
        closed_by_peer: 25,
        resets_sent: 1,
        resets_received: 0,
        socket_errors: Default::default(),
        connection_lifetime_seconds: LifetimeSeconds { count: 0, mean: 0.0, min: 0.0, max: 0.0 },
        reuse: reuse(None),
        close_wait: close_wait(25, Verdict::Leak),
        tls: None,
        inherited_from: None,
    }
}

fn detail() -> ProcessDetail {
    ProcessDetail {
        pid: 42,
        comm: "python3".into(),
        cmdline: "python3 client.py".into(),
        container_id: Some("3f4c0a3c8a0f5e2b9d1c7e6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c".into()),
        pod_uid: None,
        exited: false,
        sockets: sockets(&[(TcpState::Established, 1), (TcpState::TimeWait, 50), (TcpState::CloseWait, 25)]),
        connections_opened: 51,
        connections_accepted: 25,
        close_wait: close_wait(25, Verdict::Leak),
        outbound: vec![outbound()],
        inbound: vec![inbound()],
    }
}

#[test]
fn the_process_document_reads_back() {
    round_trip(&detail());
    round_trip(&ProcessDetail { outbound: vec![], inbound: vec![], ..detail() });
}

#[test]
fn the_process_list_reads_back() {
    let summary = |pid, exited, pod_uid: Option<&str>| ProcessSummary {
        pid,
        comm: "curl".into(),
        container_id: None,
        pod_uid: pod_uid.map(Into::into),
        exited,
        sockets: sockets(&[(TcpState::TimeWait, 1)]),
        connections_opened: 1,
        connections_accepted: 0,
    };
    round_trip(&vec![summary(1, false, None), summary(2, true, Some("5f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8"))]);
    round_trip(&Vec::<ProcessSummary>::new());
}

#[test]
fn the_other_documents_read_back() {
    round_trip(&ApiError { error: "no TCP activity seen for pid 7".into() });
    round_trip(&Health::ok());
    let alert = Alert {
        kind: "close_wait_leak".into(),
        pid: 42,
        comm: "python3".into(),
        direction: "inbound".into(),
        peer: "0.0.0.0:9001".into(),
        count: 25,
        oldest_seconds: 31.5,
        growth_per_minute: 12.0,
        since: "2026-11-22T04:30:12Z".into(),
    };
    round_trip(&vec![alert]);
    let features =
        FeatureStatus { error_reports: true, process_exits: false, requests: true, resets: true, tls: false };
    let status = Status {
        closes_awaiting_final_counters: 1,
        closes_not_seen: 2,
        closes_without_final_counters: 3,
        events_lost: 4,
        features,
        listener_map_entries: 5,
        listener_map_evictions: 6,
        nested_state_changes: 7,
        socket_storage_failures: 8,
        socket_table_overflows: 9,
        stale_slots_freed: 10,
        table_audits: 11,
        tracked_processes: 12,
        tracked_sockets: 13,
        unattributed_events: 14,
        version: "0.1.0".into(),
    };
    round_trip(&status);
}

/// Every CLOSE_WAIT verdict reads back as itself.
#[test]
fn every_verdict_reads_back() {
    // Exhaustive: a new verdict does not compile until it is listed here.
    let all = |v: Verdict| match v {
        Verdict::None | Verdict::PooledIdle | Verdict::Leak => v,
    };
    for v in [Verdict::None, Verdict::PooledIdle, Verdict::Leak].map(all) {
        round_trip(&close_wait(1, v));
    }
}

/// A field that may be null must still be there, and so must every state.
#[test]
fn missing_fields_are_errors() {
    let doc = serde_json::to_value(detail()).unwrap();
    for (pointer, field) in [
        ("/outbound/0", "tls"),
        ("/inbound/0", "reuse_ratio"),
        ("", "pod_uid"),
        ("/inbound/0/sockets", "LISTEN"),
        ("/outbound/0", "requests"),
    ] {
        let mut d = doc.clone();
        d.pointer_mut(pointer).and_then(|v| v.as_object_mut()).unwrap().remove(field).unwrap();
        let e = serde_json::from_value::<ProcessDetail>(d).unwrap_err().to_string();
        assert!(e.contains(&format!("missing field `{field}`")), "{pointer}/{field}: {e}");
    }
}
