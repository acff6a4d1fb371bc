//! `GET /api/v1/processes/{pid}/diagnosis` and `GET /api/v1/findings`: the failure patterns
//! found, with their evidence and fix.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::aggregate::{Aggregator, Process};
use crate::diagnosis::{self, Thresholds};

/// One finding, as the API gives it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Finding {
    pub kind: String,
    /// "warning" or "critical".
    pub severity: String,
    pub direction: String,
    /// The remote endpoint (outbound) or the listening endpoint (inbound).
    pub peer: String,
    pub summary: String,
    pub evidence: Map<String, Value>,
    pub advice: String,
}

impl From<diagnosis::Finding> for Finding {
    fn from(f: diagnosis::Finding) -> Self {
        Finding {
            kind: f.kind.name().into(),
            severity: f.severity.name().into(),
            direction: f.direction.name().into(),
            peer: f.peer.to_string(),
            summary: f.summary,
            evidence: f.evidence,
            advice: f.advice,
        }
    }
}

/// The findings of one process, most severe first.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Diagnosis {
    pub pid: u32,
    pub comm: String,
    pub findings: Vec<Finding>,
}

/// A finding with the process it is about, as `GET /api/v1/findings` lists it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProcessFinding {
    pub pid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub finding: Finding,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FindingList {
    pub findings: Vec<ProcessFinding>,
}

pub fn diagnosis(agg: &Aggregator, p: &Process, t: &Thresholds, now_ns: u64) -> Diagnosis {
    let findings = diagnosis::diagnose(agg, p, t, now_ns).into_iter().map(Finding::from).collect();
    Diagnosis { pid: p.key.pid, comm: p.comm.clone(), findings }
}

/// Every process's findings, by pid.
pub fn findings(agg: &Aggregator, t: &Thresholds, now_ns: u64) -> FindingList {
    let mut processes: Vec<&Process> = agg.processes().collect();
    processes.sort_by_key(|p| p.key.pid);
    let findings = processes
        .into_iter()
        .flat_map(|p| {
            let d = diagnosis(agg, p, t, now_ns);
            let (pid, comm) = (d.pid, d.comm);
            d.findings.into_iter().map(move |finding| ProcessFinding { pid, comm: comm.clone(), finding })
        })
        .collect();
    FindingList { findings }
}
