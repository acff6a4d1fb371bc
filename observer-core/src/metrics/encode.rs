//! The generic encoder: writes one family of [`super::families::FAMILIES`] from the rows of a
//! scrape.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NativeHistogram, NativeHistogramBuckets};
use prometheus_client::metrics::MetricType;

use crate::exphist::ExpHistogram;
use crate::lifetime::{Bounds, Durations};
use crate::model::Direction;

use super::families::{ByLabel, Family, OwnValue, PeerValue, Rows, Series};
use super::rows::{Observer, PeerRow, ProcessRow, Row};

type Labels = Vec<(&'static str, String)>;

/// Everything a scrape reads, built once per scrape.
pub(super) struct Scrape<'a> {
    pub peers: Vec<PeerRow<'a>>,
    pub processes: Vec<ProcessRow>,
    pub observer: Observer<'a>,
}

/// A histogram ready to encode: classic buckets (not cumulative, `+Inf` last), and the native
/// buckets for the protobuf format.
pub(super) struct Histogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
    native: Option<Native>,
}

/// Schema-0 native buckets: the zero bucket, then the positive spans and deltas.
struct Native {
    zero_count: u64,
    spans: Vec<(i32, u32)>,
    deltas: Vec<i64>,
}

impl Histogram {
    /// A duration histogram in seconds, with the `+Inf` bucket for what lies above its bounds.
    pub fn durations<B: Bounds>(d: &Durations<B>) -> Histogram {
        let mut buckets: Vec<(f64, u64)> = d.buckets().collect();
        let above = d.count - buckets.iter().map(|(_, n)| n).sum::<u64>();
        buckets.push((f64::INFINITY, above));
        Histogram { sum: d.sum_ns as f64 / 1e9, count: d.count, buckets, native: None }
    }

    /// A native histogram (schema 0), with classic buckets for scrapers without native
    /// histograms.
    pub fn native(h: &ExpHistogram) -> Histogram {
        let mut buckets = h.classic();
        let above: u64 = h.count - buckets.iter().map(|(_, n)| n).sum::<u64>();
        buckets.push((f64::INFINITY, above));
        let (spans, deltas) = h.native_spans();
        let native = Native { zero_count: h.zero, spans, deltas };
        Histogram { sum: h.sum as f64, count: h.count, buckets, native: Some(native) }
    }
}

/// One sample of a series.
enum Sample {
    Int(u64),
    Float(f64),
    Histogram(Histogram),
}

pub(super) fn family(enc: &mut DescriptorEncoder, f: &Family, scrape: &Scrape<'_>) -> fmt::Result {
    let mut m = enc.encode_descriptor(f.name, f.help, None, f.kind)?;
    match &f.series {
        Series::Peers(which, value) => {
            let wanted = |r: &&PeerRow<'_>| match which {
                Rows::All => true,
                Rows::Outbound => r.direction == Direction::Outbound,
                Rows::Inbound => r.direction == Direction::Inbound,
            };
            rows(&mut m, f, scrape.peers.iter().filter(wanted), |r| peer_samples(value, r))
        }
        Series::Processes(get) => rows(&mut m, f, scrape.processes.iter(), |r| by_label(get(r))),
        Series::Observer(OwnValue::Single(get)) => {
            rows(&mut m, f, [&scrape.observer], |o| vec![(None, Sample::Int(get(o)))])
        }
        Series::Observer(OwnValue::ByLabel(get)) => rows(&mut m, f, [&scrape.observer], |o| by_label(get(o))),
    }
}

/// A row's samples, each with the value of the family's last label if it has one of its own.
type Samples = Vec<(Option<String>, Sample)>;

fn peer_samples(value: &PeerValue, r: &PeerRow<'_>) -> Samples {
    match value {
        PeerValue::Int(get) => vec![(None, Sample::Int(get(r)))],
        PeerValue::Float(get) => get(r).map(|v| (None, Sample::Float(v))).into_iter().collect(),
        PeerValue::ByLabel(get) => by_label(get(r)),
        PeerValue::Histogram(get) => get(r).map(|h| (None, Sample::Histogram(h))).into_iter().collect(),
        PeerValue::FloatByLabel(get) => get(r).into_iter().map(|(label, v)| (Some(label), Sample::Float(v))).collect(),
    }
}

fn by_label(values: ByLabel) -> Samples {
    values.into_iter().map(|(label, n)| (Some(label), Sample::Int(n))).collect()
}

fn rows<'r, R: Row + 'r>(
    m: &mut MetricEncoder,
    f: &Family,
    rows: impl IntoIterator<Item = &'r R>,
    samples: impl Fn(&R) -> Samples,
) -> fmt::Result {
    for row in rows {
        for (last, sample) in samples(row) {
            let mut labels: Labels = f.labels.iter().copied().zip(row.label_values().iter().cloned()).collect();
            if let Some(v) = last {
                labels.push((f.labels[labels.len()], v));
            }
            debug_assert_eq!(labels.len(), f.labels.len(), "labels of {}", f.name);
            write(m, f.kind, &labels, sample)?;
        }
    }
    Ok(())
}

/// Series without labels are written without a label set (`name_total 3`, not `name_total{} 3`).
fn write(m: &mut MetricEncoder, kind: MetricType, labels: &Labels, sample: Sample) -> fmt::Result {
    if labels.is_empty() {
        return write_sample(m, kind, sample);
    }
    write_sample(&mut m.encode_family(labels)?, kind, sample)
}

fn write_sample(m: &mut MetricEncoder, kind: MetricType, sample: Sample) -> fmt::Result {
    match sample {
        Sample::Int(v) if matches!(kind, MetricType::Counter) => m.encode_counter::<Labels, u64, u64>(&v, None),
        Sample::Int(v) => m.encode_gauge(&v),
        Sample::Float(v) => m.encode_gauge(&v),
        Sample::Histogram(h) => {
            let Some(n) = h.native else {
                return m.encode_histogram::<Labels>(h.sum, h.count, &h.buckets, None);
            };
            let native = NativeHistogram {
                schema: 0,
                zero_threshold: 0.0,
                zero_count: n.zero_count,
                negative: NativeHistogramBuckets { spans: &[], deltas: &[] },
                positive: NativeHistogramBuckets { spans: &n.spans, deltas: &n.deltas },
                created: None,
            };
            m.encode_histogram_with_native::<Labels>(h.sum, h.count, &h.buckets, None, native)
        }
    }
}
