//! The pieces the documents are made of: sockets by state, failures, lifetimes, histograms,
//! CLOSE_WAIT, TLS handshakes, inherited sockets, the peer's idle timeout.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::nullable;

use crate::aggregate::Inherited;
use crate::closewait::{Status as CloseWaitStatus, Verdict};
use crate::exphist::ExpHistogram;
use crate::idle::IdleCloses;
use crate::lifetime::Lifetimes;
use crate::model::{FailureCounts, FailureReason, REPORTED_STATES, StateCounts};
use crate::tls::{self, TlsStats};

/// Live sockets by state: every reported state, in a fixed order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sockets(pub StateCounts);

impl Serialize for Sockets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.iter().count()))?;
        for (state, n) in self.0.iter() {
            m.serialize_entry(state.name(), &n)?;
        }
        m.end()
    }
}

/// Every reported state must be there (as a struct's fields must); states this observer does
/// not know are skipped, as unknown fields are.
impl<'de> Deserialize<'de> for Sockets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let by_name = BTreeMap::<String, u64>::deserialize(d)?;
        let mut counts = StateCounts::default();
        for state in REPORTED_STATES {
            let n = by_name.get(state.name()).ok_or_else(|| D::Error::missing_field(state.name()))?;
            counts.add(state, *n);
        }
        Ok(Sockets(counts))
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectFailures {
    pub refused: u64,
    pub timeout: u64,
    pub unreachable: u64,
    pub reset: u64,
    pub other: u64,
}

impl From<&FailureCounts> for ConnectFailures {
    fn from(f: &FailureCounts) -> Self {
        ConnectFailures {
            refused: f.get(FailureReason::Refused),
            timeout: f.get(FailureReason::Timeout),
            unreachable: f.get(FailureReason::Unreachable),
            reset: f.get(FailureReason::Reset),
            other: f.get(FailureReason::Other),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LifetimeSeconds {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl From<&Lifetimes> for LifetimeSeconds {
    fn from(l: &Lifetimes) -> Self {
        let s = |ns: u64| ns as f64 / 1e9;
        LifetimeSeconds {
            count: l.count,
            mean: if l.count == 0 { 0.0 } else { s(l.sum_ns) / l.count as f64 },
            min: s(l.min_ns),
            max: s(l.max_ns),
        }
    }
}

/// How long connections had been idle when the peer closed them: the peer's idle timeout.
/// The figures are null without samples.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct IdleCloseSeconds {
    #[serde(deserialize_with = "nullable")]
    pub min: Option<f64>,
    /// The median of the most recent 256 samples.
    #[serde(deserialize_with = "nullable")]
    pub p50: Option<f64>,
    #[serde(deserialize_with = "nullable")]
    pub max: Option<f64>,
    pub samples: u64,
}

impl From<&IdleCloses> for IdleCloseSeconds {
    fn from(c: &IdleCloses) -> Self {
        let s = |ns: u64| (c.samples > 0).then(|| ns as f64 / 1e9);
        IdleCloseSeconds { min: s(c.min_ns), p50: c.p50_ns().and_then(s), max: s(c.max_ns), samples: c.samples }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Upper bound (inclusive): 0, then powers of two.
    pub le: u64,
    pub count: u64,
}

/// Requests carried by each closed connection (whose opening was seen).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RequestsPerConnection {
    pub count: u64,
    pub sum: u64,
    pub max: u64,
    /// Non-empty buckets; bucket `le` holds the values in (le/2, le].
    pub buckets: Vec<Bucket>,
}

impl From<&ExpHistogram> for RequestsPerConnection {
    fn from(h: &ExpHistogram) -> Self {
        RequestsPerConnection {
            count: h.count,
            sum: h.sum,
            max: h.max,
            buckets: h.buckets().map(|(le, count)| Bucket { le, count }).collect(),
        }
    }
}

/// CLOSE_WAIT of a peer or a process: how many, since when, the trend, and the verdict.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CloseWait {
    pub count: u64,
    pub oldest_seconds: f64,
    pub growth_per_minute: f64,
    pub verdict: Verdict,
}

impl From<CloseWaitStatus> for CloseWait {
    fn from(s: CloseWaitStatus) -> Self {
        CloseWait {
            count: s.count,
            oldest_seconds: s.oldest_ns as f64 / 1e9,
            growth_per_minute: s.growth_per_minute,
            verdict: s.verdict,
        }
    }
}

/// Handshake counts for one server name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TlsCounts {
    pub handshakes: u64,
    pub resumed: u64,
    pub failed: u64,
}

impl From<&tls::Counts> for TlsCounts {
    fn from(c: &tls::Counts) -> Self {
        TlsCounts { handshakes: c.handshakes, resumed: c.resumed, failed: c.failed }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MsBucket {
    /// Upper bound in milliseconds (inclusive).
    pub le: f64,
    pub count: u64,
}

/// Durations of the handshakes that completed, from the ClientHello to the end of the
/// handshake.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HandshakeMs {
    pub count: u64,
    pub sum: f64,
    pub mean: f64,
    /// Non-empty buckets (non-cumulative); durations above the last bound only count in `count`.
    pub buckets: Vec<MsBucket>,
}

/// TLS handshakes of a peer, recognised on the wire bytes (any TLS library).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Tls {
    pub handshakes: u64,
    pub resumed: u64,
    pub failed: u64,
    /// By SNI server name ("" for handshakes without one).
    pub server_names: BTreeMap<String, TlsCounts>,
    /// By negotiated version ("TLS1.3", "TLS1.2"...).
    pub versions: BTreeMap<String, u64>,
    pub handshake_ms: HandshakeMs,
}

impl From<&TlsStats> for Tls {
    fn from(t: &TlsStats) -> Self {
        let d = &t.durations;
        let sum = d.sum_ns as f64 / 1e6;
        Tls {
            handshakes: t.counts.handshakes,
            resumed: t.counts.resumed,
            failed: t.counts.failed,
            server_names: t.server_names.iter().map(|(n, c)| (n.clone(), c.into())).collect(),
            versions: t.versions.iter().map(|(v, n)| (v.to_string(), *n)).collect(),
            handshake_ms: HandshakeMs {
                count: d.count,
                sum,
                mean: if d.count == 0 { 0.0 } else { sum / d.count as f64 },
                buckets: d
                    .buckets()
                    .filter(|(_, n)| *n > 0)
                    .map(|(le, count)| MsBucket { le: le * 1e3, count })
                    .collect(),
            },
        }
    }
}

/// The exited process an entry took live sockets over from (they are charged to the process
/// that holds them now; what happened before the exit stays with the exited process).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InheritedFrom {
    pub pid: u32,
    pub comm: String,
    /// Sockets taken over.
    pub sockets: u64,
}

impl From<&Inherited> for InheritedFrom {
    fn from(i: &Inherited) -> Self {
        InheritedFrom { pid: i.from.pid, comm: i.comm.clone(), sockets: i.sockets }
    }
}
