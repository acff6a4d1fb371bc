//! Each kind on the figures that trigger it, and on the healthy twin that must not.

use serde_json::json;

use super::*;
use crate::aggregate::PeerStats;
use crate::closewait::{Status, Verdict};
use crate::model::{FailureReason, PortRange, StateCounts, TcpState};
use crate::rate::RateWindow;
use crate::tls::Outcome;

const S: u64 = 1_000_000_000;
const NOW: u64 = 10_000 * S;

fn peer() -> Endpoint {
    "10.0.0.7:8080".parse().map(Endpoint).unwrap()
}

fn facts(stats: &PeerStats) -> Facts<'_> {
    Facts {
        now_ns: NOW,
        comm: "python3",
        direction: Direction::Outbound,
        peer: peer(),
        stats,
        sockets: StateCounts::default(),
        new_connections_per_second: 0.0,
        close_wait: Status { count: 0, oldest_ns: 0, growth_per_minute: 0.0, verdict: Verdict::None },
        port_range: None,
    }
}

fn kinds(f: &Facts<'_>) -> Vec<Kind> {
    diagnose_peer(f, &Thresholds::default()).into_iter().map(|x| x.kind).collect()
}

fn only(f: &Facts<'_>, kind: Kind) -> Finding {
    let v = diagnose_peer(f, &Thresholds::default());
    assert_eq!(v.iter().map(|x| x.kind).collect::<Vec<_>>(), vec![kind], "{v:#?}");
    v.into_iter().next().unwrap()
}

/// `n` connections opened over the last `secs` seconds, `per` requests each.
fn connections(st: &mut PeerStats, n: u64, per: u64, secs: u64) {
    let mut w = RateWindow::default();
    for i in 0..n {
        w.add(NOW - secs * S + i * secs * S / n);
    }
    st.new_connections = Some(Box::new(w));
    st.connections = n;
    st.requests = n * per;
}

#[test]
fn a_connection_per_request_is_session_not_reused() {
    let mut st = PeerStats::default();
    connections(&mut st, 120, 1, 4);
    let mut f = facts(&st);
    f.new_connections_per_second = st.new_connections_per_second(NOW);
    f.sockets.add(TcpState::TimeWait, 118);
    let x = only(&f, Kind::SessionNotReused);
    assert_eq!(x.severity, Severity::Warning);
    assert_eq!(
        serde_json::Value::Object(x.evidence),
        json!({"new_connections_per_second": 2.0, "requests_per_connection": 1.0, "connections": 120, "time_wait": 118})
    );
    assert!(
        x.summary.contains("1.00 requests per connection") && x.summary.contains("118 in TIME_WAIT"),
        "{}",
        x.summary
    );
    assert!(x.advice.contains("requests.Session"));
}

#[test]
fn a_reused_session_or_a_slow_rate_is_not() {
    let mut st = PeerStats::default();
    connections(&mut st, 120, 50, 4);
    let mut f = facts(&st);
    f.new_connections_per_second = st.new_connections_per_second(NOW);
    assert_eq!(kinds(&f), vec![], "50 requests per connection");
    let mut st = PeerStats::default();
    connections(&mut st, 30, 1, 4);
    let mut f = facts(&st);
    f.new_connections_per_second = st.new_connections_per_second(NOW);
    assert_eq!(kinds(&f), vec![], "30 connections in a minute: 0.5 per second");
}

#[test]
fn discards_next_to_reused_connections_are_pool_too_small() {
    let mut st = PeerStats::default();
    connections(&mut st, 14, 1, 4);
    st.requests = 14 + 400;
    st.discarded = 12;
    st.reused_connections = 2;
    st.peak_established = 8;
    st.last_discard_ns = NOW - 2 * S;
    let mut f = facts(&st);
    f.new_connections_per_second = st.new_connections_per_second(NOW);
    let x = only(&f, Kind::PoolTooSmall);
    assert_eq!(
        serde_json::Value::Object(x.evidence),
        json!({"discarded_connections": 12, "reused_connections": 2, "peak_concurrent_connections": 8, "requests_per_connection": 29.57})
    );
    assert!(x.advice.contains("maxsize") && x.advice.contains("up to 8"), "{}", x.advice);

    st.last_discard_ns = NOW - 601 * S;
    assert_eq!(kinds(&facts(&st)), vec![], "the last discard is older than hold_seconds");
    st.last_discard_ns = NOW - 2 * S;
    st.reused_connections = 0;
    assert_eq!(kinds(&facts(&st)), vec![], "nothing reused: not a pool");
}

#[test]
fn the_leak_verdict_is_close_wait_leak() {
    let st = PeerStats::default();
    let mut f = facts(&st);
    f.close_wait = Status { count: 40, oldest_ns: 95 * S, growth_per_minute: 12.04, verdict: Verdict::Leak };
    let x = only(&f, Kind::CloseWaitLeak);
    assert_eq!(x.severity, Severity::Critical);
    assert_eq!(
        serde_json::Value::Object(x.evidence),
        json!({"count": 40, "oldest_seconds": 95.0, "growth_per_minute": 12.0})
    );
    f.close_wait.verdict = Verdict::PooledIdle;
    assert_eq!(kinds(&f), vec![]);
}

#[test]
fn resets_after_the_peer_closed_are_stale_reuse_with_its_timeout() {
    let mut st =
        PeerStats { resets_after_peer_close: 3, last_reset_after_peer_close_ns: NOW - S, ..PeerStats::default() };
    for ms in [2004, 2001, 2010] {
        st.idle_closes.observe(ms * 1_000_000);
    }
    let x = only(&facts(&st), Kind::StaleReuse);
    assert_eq!(
        serde_json::Value::Object(x.evidence),
        json!({"resets_after_peer_close": 3, "idle_close_seconds_p50": 2.0, "idle_close_samples": 3})
    );
    assert!(x.advice.contains("after 2.0 s (3 closes measured)"), "{}", x.advice);

    st.resets_after_peer_close = 0;
    assert_eq!(kinds(&facts(&st)), vec![], "closes alone are a healthy pool's");
}

#[test]
fn retries_are_counted_in_bursts() {
    let mut st = PeerStats::default();
    for start in [NOW - 10 * S, NOW - 5 * S] {
        for i in 0..4 {
            st.connect_failed(FailureReason::Refused, start + i * S / 10);
        }
    }
    let x = only(&facts(&st), Kind::ConnectFailures);
    assert_eq!(x.severity, Severity::Critical, "nothing connected since");
    assert_eq!(
        serde_json::Value::Object(x.evidence.clone()),
        json!({
            "failures": {"refused": 8, "timeout": 0, "unreachable": 0, "reset": 0, "other": 0},
            "bursts": 2, "attempts_per_burst": 4.0, "last_burst_attempts": 4, "seconds_since_last_failure": 4.7
        })
    );
    assert!(x.summary.contains("failed 8 times (8 refused) in 2 bursts of 4 attempts"), "{}", x.summary);
    st.last_connected_ns = NOW - S;
    assert_eq!(only(&facts(&st), Kind::ConnectFailures).severity, Severity::Warning, "it connects again");
}

#[test]
fn one_failure_or_old_ones_are_no_finding() {
    let mut st = PeerStats::default();
    st.connect_failed(FailureReason::Timeout, NOW - S);
    assert_eq!(kinds(&facts(&st)), vec![]);
    let mut st = PeerStats::default();
    st.connect_failed(FailureReason::Refused, NOW - 700 * S);
    st.connect_failed(FailureReason::Refused, NOW - 699 * S);
    assert_eq!(kinds(&facts(&st)), vec![], "older than hold_seconds");
}

fn handshake(resumed: bool) -> Outcome {
    Outcome {
        server_name: Some("localhost".into()),
        version: Some("TLS1.3"),
        resumption_offered: resumed,
        resumed,
        failed: false,
        duration_ns: Some(4_000_000),
    }
}

#[test]
fn a_handshake_per_request_is_tls_handshake_per_request() {
    let mut st = PeerStats::default();
    connections(&mut st, 30, 1, 3);
    for _ in 0..30 {
        st.tls.get_or_insert_default().add(&handshake(false));
    }
    let mut f = facts(&st);
    f.new_connections_per_second = 30.0 / 60.0 * 3.0; // the test's own rate, above 1 per second
    let v = diagnose_peer(&f, &Thresholds::default());
    let x = v.iter().find(|x| x.kind == Kind::TlsHandshakePerRequest).expect("tls finding");
    assert_eq!(
        serde_json::Value::Object(x.evidence.clone()),
        json!({"handshakes": 30, "resumed": 0, "connections": 30, "handshake_seconds_per_minute": 0.36})
    );

    let mut st2 = st.clone();
    let tls = st2.tls.as_mut().unwrap();
    for _ in 0..10 {
        tls.add(&handshake(true));
    }
    let mut f = facts(&st2);
    f.new_connections_per_second = 1.5;
    assert!(!kinds(&f).contains(&Kind::TlsHandshakePerRequest), "a quarter resumed");
}

#[test]
fn time_wait_taking_the_port_range_is_exhaustion_risk() {
    let st = PeerStats::default();
    let mut f = facts(&st);
    f.port_range = PortRange::parse("40000\t40099");
    f.sockets.add(TcpState::TimeWait, 70);
    f.new_connections_per_second = 70.0 / 60.0;
    let x = only(&f, Kind::TimeWaitExhaustionRisk);
    assert_eq!(x.severity, Severity::Warning);
    assert_eq!(
        serde_json::Value::Object(x.evidence),
        json!({"time_wait": 70, "port_range_size": 100, "share": 0.7, "new_connections_per_second": 1.17, "seconds_to_exhaustion": null})
    );
    f.new_connections_per_second = 2.0;
    let x = only(&f, Kind::TimeWaitExhaustionRisk);
    assert_eq!((x.severity, x.evidence["seconds_to_exhaustion"].clone()), (Severity::Critical, json!(15.0)));

    f.port_range = PortRange::parse("32768 60999");
    f.new_connections_per_second = 70.0 / 60.0;
    assert_eq!(kinds(&f), vec![], "70 of 28232 ports");
    f.port_range = None;
    assert_eq!(kinds(&f), vec![], "range unknown");
}

#[test]
fn port_ranges_parse_like_the_sysctl() {
    assert_eq!(PortRange::parse("32768\t60999\n"), Some(PortRange { low: 32768, high: 60999 }));
    assert_eq!(PortRange::parse("40000 40099").map(PortRange::size), Some(100));
    assert_eq!(PortRange::parse("5 4"), None);
    assert_eq!(PortRange::parse("1"), None);
    assert_eq!(PortRange::parse("1 2 3"), None);
}

#[test]
fn critical_findings_come_first() {
    let st = PeerStats::default();
    let mut f = facts(&st);
    f.close_wait = Status { count: 40, oldest_ns: 95 * S, growth_per_minute: 0.0, verdict: Verdict::Leak };
    let st2 = PeerStats { resets_after_peer_close: 1, last_reset_after_peer_close_ns: NOW, ..PeerStats::default() };
    let mut v = diagnose_peer(&facts(&st2), &Thresholds::default());
    v.extend(diagnose_peer(&f, &Thresholds::default()));
    sort(&mut v);
    assert_eq!(v.iter().map(|x| x.kind).collect::<Vec<_>>(), vec![Kind::CloseWaitLeak, Kind::StaleReuse]);
}

#[test]
fn thresholds_are_checked() {
    assert_eq!(Thresholds::default().validate(), Ok(()));
    let bad = Thresholds { time_wait_max_share: 1.5, ..Thresholds::default() };
    assert!(bad.validate().unwrap_err().contains("time_wait_max_share"));
    let bad = Thresholds { max_requests_per_connection: 0.5, ..Thresholds::default() };
    assert!(bad.validate().unwrap_err().contains("max_requests_per_connection"));
    let bad = Thresholds { hold_seconds: 0, ..Thresholds::default() };
    assert!(bad.validate().is_err());
}
