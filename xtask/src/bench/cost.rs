//! Observer's cost from inside: a round with `kernel.bpf_stats_enabled`, what each of its
//! programs costs per run, the calibration programs' price list, and the daemon's CPU and memory.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};

use super::machine::{self, busy_fractions, cpu_times, prog_stats, stats_delta};
use super::running::local_url;
use super::{Bench, ROUND_SECONDS, Workload};

/// The programs observer loads.
const PROGRAMS: &[&str] = &[
    "inet_sock_set_state",
    "inet_sock_set_state_nested",
    "sock_send_length",
    "sock_recv_length",
    "tcp_send_reset",
    "tcp_receive_reset",
    "inet_sk_error_report",
];

/// Programs that only calibrate the cost figures (the daemon attaches them to `sock_send_length`
/// with its `--bench-calibration` flag): the first does nothing, and what `bpf_stats` reads for it
/// is the floor of every ns-per-run figure on this machine; each other one does one of the
/// operations observer's programs are made of, and its difference with the first is the price of
/// that operation here.
pub(super) const CALIBRATION: [(&str, &str); 6] = [
    ("calibrate_empty", "nothing (the floor)"),
    ("calibrate_clock", "read the clock (`bpf_ktime_get_ns`)"),
    ("calibrate_lookup", "find the socket's record (its slot in the socket table)"),
    ("calibrate_record", "reserve a 24-byte ring-buffer record (and discard it)"),
    (
        "calibrate_cpu_region",
        "write a 24-byte record in this CPU's region of a shared array instead (a load and a store of its head, three stores)",
    ),
    ("calibrate_user_read", "read the first byte the application sent (TLS recognition)"),
];

/// Runs of each rare path in [`exercise_rare_paths`].
pub(super) const RARE_RUNS: u32 = 200;

/// (program, runs, ns) per program.
pub(super) type ProgramRuns = Vec<(String, u64, u64)>;

/// What observer cost during one round.
pub(super) struct Cost {
    pub rps: f64,
    pub elapsed: f64,
    /// CPU seconds the daemon used, and its peak RSS.
    pub daemon_cpu: f64,
    pub daemon_peak_rss_kib: u64,
    /// (program, runs, ns) during the round.
    pub programs: ProgramRuns,
    /// (program, runs, ns) during the exercise of rare paths after it (see [`exercise_rare_paths`]).
    pub rare: ProgramRuns,
    /// ns per run of the [`CALIBRATION`] programs during the round (0 if they did not run).
    pub floor_ns: [f64; CALIBRATION.len()],
    /// Busy fraction of each CPU during the round (`/proc/stat`).
    pub cpu_busy: Vec<f64>,
}

impl Cost {
    pub fn requests(&self) -> f64 {
        self.rps * self.elapsed
    }

    pub fn bpf_ns_per_request(&self) -> f64 {
        self.programs.iter().map(|(_, _, ns)| *ns as f64).sum::<f64>() / self.requests()
    }

    /// Kernel time in the send and receive programs per request.
    pub fn io_ns_per_request(&self) -> f64 {
        self.programs
            .iter()
            .filter(|(n, _, _)| n == "sock_send_length" || n == "sock_recv_length")
            .map(|(_, _, ns)| *ns as f64)
            .sum::<f64>()
            / self.requests()
    }

    pub fn daemon_ns_per_request(&self) -> f64 {
        self.daemon_cpu * 1e9 / self.requests()
    }

    /// A program's runs and ns in the rare-path exercise.
    pub fn rare_of(&self, name: &str) -> (u64, u64) {
        self.rare.iter().filter(|(n, _, _)| n == name).fold((0, 0), |(r, t), (_, runs, ns)| (r + runs, t + ns))
    }

    /// A program's runs and ns per run over the round and the rare-path exercise together.
    pub fn per_run(&self, name: &str) -> (u64, f64) {
        let (rare_runs, rare_ns) = self.rare_of(name);
        let (runs, ns) = self
            .programs
            .iter()
            .filter(|(n, _, _)| n == name)
            .fold((rare_runs, rare_ns), |(r, t), (_, runs, ns)| (r + runs, t + ns));
        (runs, if runs > 0 { ns as f64 / runs as f64 } else { 0.0 })
    }

    /// The highest per-run cost of any program that ran.
    pub fn max_ns_per_run(&self) -> (String, f64) {
        self.programs
            .iter()
            .map(|(n, _, _)| (n.clone(), self.per_run(n)))
            .filter(|(_, (runs, _))| *runs > 0)
            .map(|(n, (_, ns))| (n, ns))
            .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a })
    }
}

/// Each of [`PROGRAMS`]' runs and run time between two [`prog_stats`] readings.
fn program_runs(from: &HashMap<String, (u64, u64)>, to: &HashMap<String, (u64, u64)>) -> ProgramRuns {
    PROGRAMS
        .iter()
        .map(|name| {
            let (runs, ns) = stats_delta(from, to, name);
            (name.to_string(), runs, ns)
        })
        .collect()
}

impl Bench {
    /// One observer round with `kernel.bpf_stats_enabled`: what each program costs per run, and
    /// the daemon's own CPU time and peak memory. (Stats add to every program run, so the cost
    /// figures are upper bounds and this round's throughput is not used for the ratios.)
    pub(super) fn cost_round(&self, port: u16, workload: Workload, extra: &[&str]) -> Result<Cost> {
        machine::set_bpf_stats(true)?;
        let result = self.measure_cost(port, workload, extra);
        machine::set_bpf_stats(false)?;
        result
    }

    fn measure_cost(&self, port: u16, workload: Workload, extra: &[&str]) -> Result<Cost> {
        let mut args = vec!["--bench-calibration"];
        args.extend_from_slice(extra);
        let (daemon, _api) = self.start_observer(&args)?;
        let pid = daemon.pid();
        let before = prog_stats()?;
        let cpu0 = machine::process_cpu_seconds(pid)?;
        let times0 = cpu_times()?;
        let t0 = Instant::now();
        let rps = self.wrk(&local_url(port), workload, ROUND_SECONDS)?;
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu_busy = busy_fractions(&times0, &cpu_times()?);
        let cpu1 = machine::process_cpu_seconds(pid)?;
        let after = prog_stats()?;
        exercise_rare_paths(port)?;
        let after_rare = prog_stats()?;
        let daemon_peak_rss_kib = machine::process_status_kib(pid, "VmHWM")?;
        drop(daemon);
        let floor_ns = CALIBRATION.map(|(name, _)| {
            let (runs, ns) = stats_delta(&before, &after, name);
            if runs > 0 { ns as f64 / runs as f64 } else { 0.0 }
        });
        Ok(Cost {
            rps,
            elapsed,
            daemon_cpu: cpu1 - cpu0,
            daemon_peak_rss_kib,
            programs: program_runs(&before, &after),
            rare: program_runs(&after, &after_rare),
            floor_ns,
            cpu_busy,
        })
    }
}

/// The paths a wrk round barely takes, each run [`RARE_RUNS`] times after the round (all on
/// loopback, bounded in count): refused connects (a reset received and an error report),
/// abortive closes (a reset sent). A program that ran a handful of times, cold, would
/// otherwise be judged on those.
fn exercise_rare_paths(port: u16) -> Result<()> {
    let src = format!(
        "import socket, struct\n\
         s = socket.socket(); s.bind(('127.0.0.1', 0)); closed = s.getsockname()[1]; s.close()\n\
         for _ in range({RARE_RUNS}):\n\
         \x20   c = socket.socket()\n\
         \x20   try:\n\
         \x20       c.connect(('127.0.0.1', closed))\n\
         \x20   except ConnectionRefusedError:\n\
         \x20       pass\n\
         \x20   c.close()\n\
         for _ in range({RARE_RUNS}):\n\
         \x20   c = socket.create_connection(('127.0.0.1', {port}))\n\
         \x20   c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
         \x20   c.close()\n"
    );
    let status = Command::new("python3")
        .args(["-c", &src])
        .stdout(Stdio::null())
        .status()
        .context("running the rare-path exercise (python3)")?;
    ensure!(status.success(), "the rare-path exercise failed: {status}");
    Ok(())
}
