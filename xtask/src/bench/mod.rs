//! `cargo xtask bench`: what observer costs the services it watches, measured side by side in
//! one run: every setup (no tracer, observer, a naive bpftrace script, libbpf-tools' `tcplife`
//! and `tcpstates`, `ss -tanp` polling) runs in every round, in a rotated order, against the same
//! nginx. Results go to docs/benchmarks.md, docs/benchmarks.png and the README's overhead table.
//!
//! All traffic is on loopback; every load run is bounded in time (wrk -d) and killed if it
//! overruns; every server and tracer is stopped when the bench ends.

mod cost;
mod interleaved;
mod machine;
mod plot;
mod profile;
mod report;
mod rounds;
mod running;
mod scale;
mod stats;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, ensure};

use crate::step;
use interleaved::{Programs, Summary};
use scale::Scale;
use stats::WorkloadResult;

pub use interleaved::DEFAULT_PAIRS;
pub use plot::FONT;

/// The cases, in the order they run.
pub const CASES: &[&str] = &["reuse", "keepalive", "close", "interleaved", "profile", "scale"];

/// Seconds of load per round.
const ROUND_SECONDS: u64 = 4;
/// CPU the load generator is pinned to (the tracers are not pinned).
const CLIENT_CPU: &str = "1";
/// CPU nginx is pinned to.
const SERVER_CPU: &str = "0";
/// wrk connections and threads.
const CONNECTIONS: u32 = 20;
const THREADS: u32 = 1;

/// The setups of `bench reuse`, and of the full workloads.
/// Keep-alive with and without TLS recognition: what that feature costs on the hot path.
const REUSE_SETUPS: &[Setup] = &[Setup::None, Setup::Observer, Setup::ObserverNoTls];
const ALL_SETUPS: &[Setup] =
    &[Setup::None, Setup::Observer, Setup::Bpftrace, Setup::Tcplife, Setup::Tcpstates, Setup::SsPoll];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Setup {
    None,
    Observer,
    /// The daemon with `--no-tls`.
    ObserverNoTls,
    Bpftrace,
    /// libbpf-tools' `tcplife`: a line per closed connection.
    Tcplife,
    /// libbpf-tools' `tcpstates`: a line per state change.
    Tcpstates,
    SsPoll,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::None => "no tracer",
            Setup::Observer => "observer daemon",
            Setup::ObserverNoTls => "observer daemon --no-tls",
            Setup::Bpftrace => "bpftrace printing each transition",
            Setup::Tcplife => "`tcplife` (libbpf-tools) printing each connection",
            Setup::Tcpstates => "`tcpstates` (libbpf-tools) printing each transition",
            Setup::SsPoll => "`ss -tanp` every second",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// HTTP keep-alive: many sends and receives, few state changes.
    KeepAlive,
    /// `Connection: close`: a connection per request, many state changes.
    ConnectionClose,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::KeepAlive => "keep-alive",
            Workload::ConnectionClose => "connection per request",
        }
    }

    fn wrk_args(self) -> &'static [&'static str] {
        match self {
            Workload::KeepAlive => &[],
            Workload::ConnectionClose => &["-H", "Connection: close"],
        }
    }

    /// The wrk command line of this workload's load, as the results show it.
    fn wrk_command(self) -> String {
        let mut cmd = format!("wrk -t{THREADS} -c{CONNECTIONS}");
        for a in self.wrk_args() {
            cmd.push(' ');
            cmd.push_str(&if a.contains(' ') { format!("'{a}'") } else { a.to_string() });
        }
        cmd
    }

    /// The throughput ratio observer must keep.
    fn target(self) -> f64 {
        match self {
            Workload::KeepAlive => 0.97,
            Workload::ConnectionClose => 0.95,
        }
    }
}

/// Where the bench works and what it runs.
struct Bench {
    root: PathBuf,
    /// The daemon, built with the `bench` feature.
    observer: PathBuf,
    /// Scratch space: nginx's configuration, the tracers' output, perf's data.
    work: PathBuf,
}

impl Bench {
    /// The daemon runs from a copy in the work directory, so that a build of the product while
    /// the bench runs (without the `bench` feature, at the same path) cannot swap it out.
    fn new(root: &Path, built: &Path) -> Result<Bench> {
        let work = root.join("target/bench");
        std::fs::create_dir_all(&work)?;
        let observer = work.join("observer");
        std::fs::copy(built, &observer).with_context(|| format!("copying {}", built.display()))?;
        Ok(Bench { root: root.to_path_buf(), observer, work })
    }
}

/// What the cases of one run measured, for the targets, the README and the plot.
#[derive(Default)]
struct Run {
    /// The keepalive and close cases.
    results: Vec<WorkloadResult>,
    /// Observer's interleaved summary per workload.
    interleaved: Vec<(Workload, Summary)>,
    scale: Option<Scale>,
    /// The last file written, shown at the end.
    written: Option<PathBuf>,
}

impl Run {
    fn result(&self, workload: Workload) -> Option<&WorkloadResult> {
        self.results.iter().find(|r| r.workload == workload)
    }
}

/// Runs `cases` (every case when empty) with `rounds` rounds per workload and `pairs` pairs of
/// interleaved windows, with the daemon at `observer` (built with the `bench` feature); then
/// writes docs/benchmarks.md, docs/benchmarks.png and the README's overhead table.
pub fn run(root: &Path, observer: &Path, cases: &[String], rounds: usize, pairs: usize) -> Result<()> {
    ensure!(rounds > 0 && pairs > 0, "--rounds and --pairs must be at least 1");
    let b = Bench::new(root, observer)?;
    let wants = |c: &str| cases.is_empty() || cases.iter().any(|x| x == c);
    let mut run = Run::default();
    if wants("reuse") {
        b.reuse_case(rounds, &mut run)?;
    }
    for (case, workload) in [("keepalive", Workload::KeepAlive), ("close", Workload::ConnectionClose)] {
        if wants(case) {
            b.workload_case(case, workload, rounds, &mut run)?;
        }
    }
    if wants("interleaved") {
        b.interleaved_case(pairs, &mut run)?;
    }
    if wants("profile") {
        b.profile_case(rounds, &mut run)?;
    }
    if wants("scale") {
        step("bench scale: 10,000 established connections");
        let s = b.scale()?;
        run.written = Some(b.write_section("scale", &report::scale_markdown(&s))?);
        run.scale = Some(s);
    }
    b.finish(run)
}

impl Bench {
    fn reuse_case(&self, rounds: usize, run: &mut Run) -> Result<()> {
        step("bench reuse: keep-alive throughput with and without observer");
        // Twice the rounds: this ratio is the keep-alive target's, and the rounds are noisy.
        let r = self.workload(Workload::KeepAlive, REUSE_SETUPS, rounds * 2)?;
        run.written = Some(self.write_section("reuse", &report::reuse_markdown(&r))?);
        Ok(())
    }

    fn workload_case(&self, case: &str, workload: Workload, rounds: usize, run: &mut Run) -> Result<()> {
        step(&format!("bench {case}: {} under every setup", workload.name()));
        let r = self.workload(workload, ALL_SETUPS, rounds)?;
        run.written = Some(self.write_section(case, &report::workload_markdown(&r, ALL_SETUPS))?);
        run.results.push(r);
        Ok(())
    }

    /// Observer against no tracer in interleaved windows, both workloads; at connection per
    /// request also the least observer's design and the least its records would cost.
    fn interleaved_case(&self, pairs: usize, run: &mut Run) -> Result<()> {
        let mut md = interleaved::method_markdown();
        for workload in [Workload::KeepAlive, Workload::ConnectionClose] {
            let measure = |programs: Programs| -> Result<(Summary, u64)> {
                step(&format!("bench interleaved: {}{}, {pairs} pairs of windows", workload.name(), programs.label()));
                let (measured, lost) = self.interleaved(workload, pairs, programs)?;
                Ok((Summary::of(&measured).context("no pairs measured")?, lost))
            };
            let (s, lost) = measure(Programs::Observer)?;
            let (floor, _) = measure(Programs::Floor)?;
            md.push_str(&interleaved::markdown(workload.name(), &workload.wrk_command(), &s, workload.target(), lost));
            if workload == Workload::ConnectionClose {
                let (table_only, _) = measure(Programs::TableOnly)?;
                let (region_records, _) = measure(Programs::RegionRecords)?;
                md.push_str(&interleaved::region_records_markdown(&region_records, &s, workload.target()));
                md.push_str(&interleaved::table_only_markdown(&table_only, workload.target()));
            }
            md.push_str(&interleaved::floor_markdown(&floor, workload.target()));
            run.interleaved.push((workload, s));
        }
        run.written = Some(self.write_section("interleaved", &md)?);
        Ok(())
    }

    fn profile_case(&self, rounds: usize, run: &mut Run) -> Result<()> {
        let mut md = profile::method_markdown();
        // Half the rounds: the parts of a request vary less than the throughput.
        let profile_rounds = rounds.div_ceil(2);
        for workload in [Workload::ConnectionClose, Workload::KeepAlive] {
            step(&format!("bench profile: {}, {profile_rounds} rounds with perf", workload.name()));
            let (none, observer) = self.profile(workload, profile_rounds)?;
            md.push_str(&profile::workload_markdown(workload, profile_rounds, &none, &observer));
            md.push('\n');
        }
        run.written = Some(self.write_section("profile", &md)?);
        Ok(())
    }

    /// The targets (keeping those this run did not measure), the README's table when both
    /// workloads ran under every setup, and the plot.
    fn finish(&self, run: Run) -> Result<()> {
        let (keep, close) = (run.result(Workload::KeepAlive), run.result(Workload::ConnectionClose));
        let mut written = run.written.clone();
        if !run.results.is_empty() || run.scale.is_some() || !run.interleaved.is_empty() {
            let targets = report::targets_markdown(keep, close, &run.interleaved, run.scale.as_ref());
            let old = std::fs::read_to_string(self.results_path()).unwrap_or_default();
            written = Some(self.write_section("targets", &report::carry_target_rows(&old, &targets))?);
        }
        if let (Some(keep), Some(close)) = (keep, close) {
            self.update_readme(keep, close)?;
        }
        if !run.results.is_empty() {
            let png = self.root.join(report::PLOT_PATH);
            let refs: Vec<&WorkloadResult> = run.results.iter().collect();
            plot::plot(&png, &refs, ALL_SETUPS)?;
            step(&format!("wrote {}", png.display()));
        }
        if let Some(path) = written {
            step(&format!("wrote {}", path.display()));
            print!("{}", std::fs::read_to_string(path)?);
        }
        Ok(())
    }
}
