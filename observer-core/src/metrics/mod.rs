//! Prometheus exposition of the aggregation, built fresh at each scrape (so that series of
//! pruned processes disappear with them), with prometheus-client: OpenMetrics text by default,
//! the Prometheus protobuf format (with native histograms) when the scraper asks for it.
//!
//! Per peer, labels are `pid`, `comm`, `container_id`, `pod_uid`, `direction`
//! (`outbound`/`inbound`) and `peer`: the remote endpoint for outbound sockets, the local
//! listening endpoint for inbound ones.
//!
//! The families are declared as data in `families.rs`; `rows.rs` builds the rows they read
//! (and folds the peers beyond the limit), `encode.rs` writes them.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::aggregate::Aggregator;
use crate::diagnosis::Thresholds;
use crate::kernel_status::KernelStatus;

mod encode;
mod families;
mod rows;

pub const TEXT_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// The `peer` label of the folded series.
pub const OTHER_PEER: &str = "other";

/// Whether an `Accept` header asks for the protobuf format (Prometheus does, with native
/// histograms enabled).
pub fn wants_protobuf(accept: &str) -> bool {
    accept.contains("application/vnd.google.protobuf") && accept.contains("io.prometheus.client.MetricFamily")
}

/// The registry serving observer's metrics; each process gets per-peer series for at most
/// `max_peers` peers, the others are folded into `peer="other"`; `thresholds` are the
/// findings'. `clock` gives the time of a scrape (CLOCK_MONOTONIC in ns, the kernel records'
/// clock).
pub fn registry(
    agg: Arc<Mutex<Aggregator>>,
    kernel: Arc<Mutex<KernelStatus>>,
    max_peers: usize,
    thresholds: Thresholds,
    clock: fn() -> u64,
) -> Registry {
    let mut r = Registry::default();
    let admitted = Mutex::default();
    r.register_collector(Box::new(ObserverCollector { agg, kernel, admitted, max_peers, thresholds, clock }));
    r
}

pub fn render_text(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("text encoding to memory");
    out
}

pub fn render_protobuf(registry: &Registry) -> Vec<u8> {
    prometheus_client::encoding::prometheus_protobuf::encode_to_vec(registry).expect("protobuf encoding to memory")
}

struct ObserverCollector {
    agg: Arc<Mutex<Aggregator>>,
    kernel: Arc<Mutex<KernelStatus>>,
    admitted: Mutex<rows::Admitted>,
    max_peers: usize,
    thresholds: Thresholds,
    clock: fn() -> u64,
}

impl std::fmt::Debug for ObserverCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObserverCollector")
    }
}

impl Collector for ObserverCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kernel = self.kernel.lock().expect("kernel status lock").clone();
        let agg = self.agg.lock().expect("aggregator lock");
        let now = (self.clock)();
        let mut admitted = self.admitted.lock().expect("admission lock");
        let peers = rows::peer_rows(&agg, &mut admitted, (self.max_peers, &self.thresholds), now);
        let scrape = encode::Scrape {
            peers,
            processes: rows::process_rows(&agg),
            observer: rows::Observer { agg: &agg, kernel: &kernel },
        };
        for f in families::FAMILIES {
            encode::family(&mut enc, f, &scrape)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
