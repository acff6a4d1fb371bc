//! `GET /api/v1/processes`: one summary line per tracked process.

use serde::{Deserialize, Serialize};

use super::nullable;
use super::parts::Sockets;
use crate::aggregate::{Aggregator, Process};
use crate::model::{Direction, StateCounts};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    /// The container it runs in (from its cgroup), or null.
    #[serde(deserialize_with = "nullable")]
    pub container_id: Option<String>,
    /// The Kubernetes pod it belongs to (from its cgroup), or null.
    #[serde(deserialize_with = "nullable")]
    pub pod_uid: Option<String>,
    pub exited: bool,
    pub sockets: Sockets,
    pub connections_opened: u64,
    pub connections_accepted: u64,
}

/// Live sockets, connections opened and connections accepted over all peers of a process.
pub fn process_totals(agg: &Aggregator, p: &Process) -> (StateCounts, u64, u64) {
    let mut total = StateCounts::default();
    let (mut opened, mut accepted) = (0, 0);
    for (peer, st) in &p.outbound {
        total.merge(&agg.peer_sockets(p, Direction::Outbound, *peer, st));
        opened += st.connections;
    }
    for (local, st) in &p.inbound {
        total.merge(&agg.peer_sockets(p, Direction::Inbound, *local, st));
        accepted += st.connections;
    }
    (total, opened, accepted)
}

pub fn process_summary(agg: &Aggregator, p: &Process) -> ProcessSummary {
    let (sockets, connections_opened, connections_accepted) = process_totals(agg, p);
    ProcessSummary {
        pid: p.key.pid,
        comm: p.comm.clone(),
        container_id: p.container.container_id.clone(),
        pod_uid: p.container.pod_uid.clone(),
        exited: p.exited_ns.is_some(),
        sockets: Sockets(sockets),
        connections_opened,
        connections_accepted,
    }
}

/// The list document, by pid.
pub fn process_list(agg: &Aggregator) -> Vec<ProcessSummary> {
    let mut v: Vec<ProcessSummary> = agg.processes().map(|p| process_summary(agg, p)).collect();
    v.sort_by_key(|s| s.pid);
    v
}
