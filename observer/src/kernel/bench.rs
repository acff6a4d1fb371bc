//! The benchmark's scaffolding on the daemon's side, built only with the `bench` feature
//! (`cargo xtask bench`): its flags, its programs (calibration, floor) and where the records go.

use anyhow::{Context as _, Result};
use aya::programs::tp_btf::BtfTracePointLinkId;
use aya::{Btf, Ebpf, EbpfLoader};
use observer_common::{names, record_sink};

use super::{Probes, attach_btf_tracepoint, tracepoint_program};

/// The bench's flags of `observer daemon`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Options {
    /// Also attach calibration programs to sock_send_length (one does nothing, the others one
    /// operation each): the floor and price list of the per-run figures.
    #[arg(long = "bench-calibration")]
    pub calibration: bool,
    /// Attach empty programs to observer's three hooks instead of observer's own (nothing is
    /// observed).
    #[arg(long = "bench-floor")]
    pub floor: bool,
    /// Observer's programs keep the socket table but queue no records, and state changes are
    /// not handled exactly once (nothing is reported): the least a tracer that records each
    /// socket's owner costs.
    #[arg(long = "bench-table-only", conflicts_with = "floor")]
    pub table_only: bool,
    /// Observer's programs write their records to a per-CPU region of a shared array that
    /// nobody reads instead of the ring buffer (nothing is reported): the least observer's
    /// records cost with the cheapest write.
    #[arg(long = "bench-region-records", conflicts_with_all = ["floor", "table_only"])]
    pub region_records: bool,
    /// SIGUSR1 detaches the kernel programs, SIGUSR2 attaches them again (each logged at warn
    /// level once done).
    #[arg(long = "bench-toggle")]
    pub toggle: bool,
}

/// The calibration programs (see the kernel programs' `bench`), all on `sock_send_length`.
pub const CALIBRATION_PROGRAMS: [&str; 6] = [
    "calibrate_empty",
    "calibrate_clock",
    "calibrate_lookup",
    "calibrate_record",
    "calibrate_cpu_region",
    "calibrate_user_read",
];

/// The empty programs and their tracepoints.
const FLOOR_PROGRAMS: [(&str, &str); 3] =
    [("floor_state", "inet_sock_set_state"), ("floor_send", "sock_send_length"), ("floor_recv", "sock_recv_length")];

type Links = Vec<(&'static str, Option<BtfTracePointLinkId>)>;

impl Options {
    /// Whether the daemon observes anything (its programs report to it).
    pub fn observes(&self) -> bool {
        !(self.floor || self.table_only || self.region_records)
    }

    /// How many of the two state programs to attach: the table-only bound runs the first alone.
    pub fn state_programs(&self) -> usize {
        if self.table_only { 1 } else { 2 }
    }

    /// Where the records go, and the per-CPU regions' size.
    pub fn configure(&self, loader: &mut EbpfLoader<'_>) {
        let sink = match (self.table_only, self.region_records) {
            (true, _) => &record_sink::NONE,
            (false, true) => &record_sink::CPU_REGIONS,
            (false, false) => &record_sink::RING,
        };
        if self.table_only {
            log::warn!("--bench-table-only: the kernel programs queue no records, nothing is reported");
        }
        if self.region_records {
            log::warn!("--bench-region-records: the kernel programs write records nobody reads, nothing is reported");
        }
        let regions = if self.calibration || self.region_records { 8 } else { 1 };
        loader.override_global(names::RECORD_SINK, sink, true).map_max_entries(names::BENCH_REGIONS, regions);
    }
}

/// The empty programs, instead of observer's.
pub fn attach_floor(ebpf: &mut Ebpf, btf: &Btf) -> Result<Links> {
    let mut links = Vec::new();
    for (prog, target) in FLOOR_PROGRAMS {
        links.push((prog, Some(attach_btf_tracepoint(ebpf, btf, prog, target)?)));
    }
    log::warn!("--bench-floor: only empty programs are attached, nothing is observed");
    Ok(links)
}

/// The calibration programs, beside observer's, when asked for.
pub fn attach_calibration(ebpf: &mut Ebpf, btf: &Btf, opts: &Options, links: &mut Links) -> Result<()> {
    if !opts.calibration {
        return Ok(());
    }
    for prog in CALIBRATION_PROGRAMS {
        let link = attach_btf_tracepoint(ebpf, btf, prog, "sock_send_length")
            .with_context(|| format!("attaching the calibration program {prog}"))?;
        links.push((prog, Some(link)));
    }
    Ok(())
}

impl Probes {
    /// Detach every tracepoint program, or attach them again (`--bench-toggle`: the same daemon
    /// measured with its programs in and out of the kernel). The programs and maps stay loaded.
    pub fn set_attached(&mut self, attached: bool) -> Result<()> {
        for (prog, link) in &mut self.links {
            let p = tracepoint_program(&mut self.ebpf, prog)?;
            match (attached, link.take()) {
                (false, Some(id)) => p.detach(id).with_context(|| format!("detaching {prog}"))?,
                (true, None) => *link = Some(p.attach().with_context(|| format!("attaching {prog}"))?),
                (_, id) => *link = id,
            }
        }
        Ok(())
    }
}
