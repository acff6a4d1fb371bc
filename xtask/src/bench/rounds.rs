//! The side-by-side rounds: every setup once per round against one nginx, the order rotating
//! from round to round; then the cost rounds of observer.

use std::collections::HashMap;

use anyhow::Result;

use super::running::{free_port, local_url, status_field};
use super::stats::WorkloadResult;
use super::{Bench, ROUND_SECONDS, Setup, Workload};

impl Bench {
    /// Every setup in every round, rotating which goes first; a tracer starts (attached) before
    /// its round and stops after it. Then a cost round for observer (and one for `--no-tls` when
    /// that setup is measured).
    pub(super) fn workload(&self, workload: Workload, setups: &[Setup], rounds: usize) -> Result<WorkloadResult> {
        let port = free_port()?;
        let _nginx = self.start_nginx(port, 4096)?;
        let url = local_url(port);
        self.wrk(&url, workload, 2)?; // warm-up
        let mut rps: HashMap<Setup, Vec<f64>> = HashMap::new();
        let mut events_lost = 0;
        for round in 0..rounds {
            for i in 0..setups.len() {
                let setup = setups[(round + i) % setups.len()];
                let tracer = self.start_tracer(setup)?;
                let r = self.wrk(&url, workload, ROUND_SECONDS)?;
                if let (Setup::Observer, Some((_, api))) = (setup, &tracer) {
                    events_lost += status_field(*api, "events_lost").unwrap_or(0);
                }
                drop(tracer);
                eprintln!("xtask: {} round {}: {:<52} {r:>9.0} req/s", workload.name(), round + 1, setup.name());
                rps.entry(setup).or_default().push(r);
            }
        }
        let cost = self.cost_round(port, workload, &[])?;
        let cost_no_tls = match setups.contains(&Setup::ObserverNoTls) {
            true => Some(self.cost_round(port, workload, &["--no-tls"])?),
            false => None,
        };
        Ok(WorkloadResult { workload, rounds, rps, cost, cost_no_tls, events_lost })
    }
}
