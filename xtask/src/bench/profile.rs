//! `cargo xtask bench profile`: where observer's cost goes, from `perf` samples of the whole
//! machine taken under the same load with no tracer and with observer, in alternated rounds.
//!
//! perf samples every CPU's clock at a fixed period (`cpu-clock`, one sample per [`PERIOD_NS`]
//! of CPU time), so a symbol's samples times the period is the CPU time spent in it. Divided by
//! the requests nginx served while perf sampled, that is microseconds per request: comparable
//! between the two setups even when their throughputs differ. The difference, part by part, is
//! what observer adds to a request, on the CPU that bounds throughput (wrk's: on loopback it
//! also runs most of the server's side of the TCP exchange) and on nginx's.
//!
//! Running perf is [`Bench::profile`]; parsing and adding up are pure functions.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

use super::running::{free_port, local_url, nginx_requests, wait_bounded};
use super::{Bench, CLIENT_CPU, SERVER_CPU, Setup, Workload};

/// perf's sampling period: one `cpu-clock` sample per this many ns of CPU time.
const PERIOD_NS: u64 = 250_000;
/// Seconds perf samples per round.
const PROFILE_SECONDS: u64 = 6;

impl Bench {
    /// perf samples of the whole machine under `workload`, `rounds` times with no tracer and with
    /// observer, the order alternating: (no tracer, observer).
    pub(super) fn profile(&self, workload: Workload, rounds: usize) -> Result<(Profile, Profile)> {
        let port = free_port()?;
        let _nginx = self.start_nginx(port, 4096)?;
        let url = local_url(port);
        self.wrk(&url, workload, 2)?; // warm-up
        let data = self.work.join("perf.data");
        let (mut none, mut observer) = (Profile::default(), Profile::default());
        for round in 0..rounds {
            let order = if round % 2 == 0 { [Setup::None, Setup::Observer] } else { [Setup::Observer, Setup::None] };
            for setup in order {
                let tracer = self.start_tracer(setup)?;
                let load = self.spawn_wrk(&url, workload, PROFILE_SECONDS + 5)?;
                std::thread::sleep(Duration::from_secs(1));
                let rate = record(port, &data)?;
                drop(load);
                drop(tracer);
                let lines = report(&data)?;
                let seconds = PROFILE_SECONDS as f64;
                let p = if setup == Setup::None { &mut none } else { &mut observer };
                p.add(&lines, rate * seconds, seconds);
                eprintln!("xtask: profile {} {}: {rate:.0} req/s", workload.name(), setup.name());
            }
        }
        let _ = std::fs::remove_file(&data);
        Ok((none, observer))
    }
}

/// [`PROFILE_SECONDS`] of perf samples of every CPU into `data`; returns the requests per second
/// nginx (on `port`) counted around them.
fn record(port: u16, data: &Path) -> Result<f64> {
    let (n0, t0) = nginx_requests(port)?;
    // perf itself on the server's CPU, off the one that bounds throughput.
    let mut perf = Command::new("taskset")
        .args(["-c", SERVER_CPU, "perf", "record", "-q", "-a", "-e", "cpu-clock", "-c"])
        .arg(PERIOD_NS.to_string())
        .arg("-o")
        .arg(data)
        .args(["--", "sleep", &PROFILE_SECONDS.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf (linux-perf)")?;
    wait_bounded(&mut perf, PROFILE_SECONDS, "perf record")?;
    let (n1, t1) = nginx_requests(port)?;
    let out = perf.wait_with_output()?;
    ensure!(out.status.success(), "perf record failed: {}", String::from_utf8_lossy(&out.stderr));
    // The requests of the sampled seconds, at the rate nginx counted around them (the second
    // read is one of the requests counted).
    Ok(n1.saturating_sub(n0 + 1) as f64 / (t1 - t0).as_secs_f64())
}

/// The samples perf recorded in `data`, per CPU, thread and symbol.
fn report(data: &Path) -> Result<Vec<Line>> {
    let report = Command::new("perf")
        .arg("report")
        .arg("-i")
        .arg(data)
        .args(["--stdio", "--no-children", "-g", "none", "-n", "-t", "|", "--sort", "cpu,comm,sym"])
        .stderr(Stdio::null())
        .output()
        .context("perf report")?;
    ensure!(report.status.success(), "perf report failed");
    let lines = parse_report(&String::from_utf8_lossy(&report.stdout));
    ensure!(!lines.is_empty(), "perf report printed no samples");
    Ok(lines)
}

/// How the profile section measures, before its results.
pub(super) fn method_markdown() -> String {
    format!(
        "Where observer's cost goes: perf samples of every CPU (`perf record -a -e cpu-clock -c {PERIOD_NS}`, one \
         sample per {} µs of CPU time) for {PROFILE_SECONDS} s per round under the same load, with no tracer and \
         with observer. Microseconds of CPU per request, part by part; see xtask/src/bench/profile.rs.\n\n",
        PERIOD_NS / 1000,
    )
}

/// The profile section for one workload (see [`markdown`]).
pub(super) fn workload_markdown(workload: Workload, rounds: usize, none: &Profile, observer: &Profile) -> String {
    let cpu = |c: &str| c.parse::<u32>().expect("a CPU number");
    markdown(workload.name(), &workload.wrk_command(), rounds, none, observer, cpu(CLIENT_CPU), cpu(SERVER_CPU))
}

/// A part of a CPU's time, by what it was spent on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Part {
    /// One of observer's kernel programs, by name (`bpf_prog_<tag>_<name>`).
    Program(String),
    /// The tracepoints' calls into their programs: the kernel's code around every program run
    /// (`__traceiter_*`, `__bpf_trace_*`, `bpf_trace_run*`, the recursion guard).
    Dispatch,
    /// Reserving and submitting ring-buffer records.
    RingBuffer,
    /// Clock reads (the programs' timestamps; the kernel reads the clock too).
    Clock,
    /// The daemon's own threads, in user space and in the kernel.
    Daemon,
    /// The idle loop.
    Idle,
    /// Everything else: the kernel's and the applications' own work.
    Rest,
}

impl Part {
    pub fn label(&self) -> String {
        match self {
            Part::Program(name) => format!("observer's program `{name}`"),
            Part::Dispatch => "the tracepoints calling programs (`bpf_trace_run*`, `__traceiter_*`...)".into(),
            Part::RingBuffer => "ring buffer (`bpf_ringbuf_*`)".into(),
            Part::Clock => "clock reads (`read_tsc`, `ktime_get*`)".into(),
            Part::Daemon => "the daemon's threads".into(),
            Part::Idle => "idle".into(),
            Part::Rest => "everything else (the kernel's, wrk's and nginx's own work)".into(),
        }
    }
}

/// Whether a thread name is one of the daemon's (its main thread, tokio's workers).
fn is_daemon(comm: &str) -> bool {
    comm == "observer" || comm.starts_with("tokio-")
}

/// What a sample of `comm` in `symbol` was spent on.
fn part_of(comm: &str, symbol: &str) -> Part {
    if is_daemon(comm) {
        return Part::Daemon;
    }
    if let Some(rest) = symbol.strip_prefix("bpf_prog_") {
        // bpf_prog_<16 hex digits of tag>_<name>
        let name = rest.split_once('_').map_or(rest, |(_, n)| n);
        return Part::Program(name.to_string());
    }
    if symbol.starts_with("__traceiter_")
        || symbol.starts_with("__bpf_trace_")
        || symbol.starts_with("bpf_trace_run")
        || symbol.starts_with("__bpf_prog_enter")
        || symbol.starts_with("__bpf_prog_exit")
    {
        return Part::Dispatch;
    }
    if symbol.contains("bpf_ringbuf_") {
        return Part::RingBuffer;
    }
    if symbol == "read_tsc" || symbol.starts_with("ktime_get") || symbol == "bpf_ktime_get_ns" {
        return Part::Clock;
    }
    if comm.starts_with("swapper") || symbol.contains("safe_halt") || symbol == "default_idle" {
        return Part::Idle;
    }
    Part::Rest
}

/// One line of `perf report --sort cpu,comm,sym -n -t '|'`: a CPU, a thread name, a symbol, and
/// its samples.
#[derive(Debug, PartialEq)]
pub(super) struct Line {
    pub cpu: u32,
    pub comm: String,
    pub symbol: String,
    pub samples: u64,
}

/// The lines of `perf report --stdio --no-children -g none -n -t '|' --sort cpu,comm,sym`
/// ("  1.42%|556   |001|wrk   |[k] bpf_prog_..."); comments and malformed lines are skipped.
fn parse_report(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.splitn(5, '|');
            let _overhead = f.next()?;
            let samples = f.next()?.trim().parse().ok()?;
            let cpu = f.next()?.trim().parse().ok()?;
            let comm = f.next()?.trim().to_string();
            let sym = f.next()?.trim();
            // "[k] name" or "[.] name"; an unresolved address stays as perf prints it.
            let symbol = sym.split_once("] ").map_or(sym, |(_, s)| s).trim().to_string();
            Some(Line { cpu, comm, symbol, samples })
        })
        .collect()
}

/// Samples by CPU and part, and the requests served while they were taken, over rounds.
#[derive(Default, Debug)]
pub(super) struct Profile {
    pub samples: BTreeMap<(u32, Part), u64>,
    pub requests: f64,
    /// Seconds perf sampled, over all rounds.
    pub seconds: f64,
}

impl Profile {
    pub fn add(&mut self, lines: &[Line], requests: f64, seconds: f64) {
        for l in lines {
            *self.samples.entry((l.cpu, part_of(&l.comm, &l.symbol))).or_default() += l.samples;
        }
        self.requests += requests;
        self.seconds += seconds;
    }

    /// Microseconds of CPU `cpu` (all CPUs for None) per request spent on `part`.
    pub fn us_per_request(&self, cpu: Option<u32>, part: &Part) -> f64 {
        let samples: u64 =
            self.samples.iter().filter(|((c, p), _)| cpu.is_none_or(|x| x == *c) && p == part).map(|(_, n)| n).sum();
        self.per_request(samples)
    }

    /// Microseconds of busy (not idle) CPU `cpu` per request.
    pub fn busy_us_per_request(&self, cpu: Option<u32>) -> f64 {
        let samples: u64 = self
            .samples
            .iter()
            .filter(|((c, p), _)| cpu.is_none_or(|x| x == *c) && *p != Part::Idle)
            .map(|(_, n)| n)
            .sum();
        self.per_request(samples)
    }

    fn per_request(&self, samples: u64) -> f64 {
        if self.requests <= 0.0 { 0.0 } else { samples as f64 * PERIOD_NS as f64 / 1e3 / self.requests }
    }

    pub fn requests_per_second(&self) -> f64 {
        if self.seconds <= 0.0 { 0.0 } else { self.requests / self.seconds }
    }

    fn parts(&self) -> impl Iterator<Item = &Part> {
        self.samples.keys().map(|(_, p)| p)
    }
}

/// The results section for one workload: per part, µs per request on the client's CPU with no
/// tracer and with observer, their difference, and the difference on the server's CPU.
fn markdown(
    workload: &str,
    wrk: &str,
    rounds: usize,
    none: &Profile,
    observer: &Profile,
    client_cpu: u32,
    server_cpu: u32,
) -> String {
    let mut parts: Vec<Part> = none.parts().chain(observer.parts()).filter(|p| **p != Part::Idle).cloned().collect();
    parts.sort();
    parts.dedup();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### {workload}\n\n`{wrk}`, {rounds} rounds of each setup in alternated order. Requests per second while \
         perf sampled: no tracer {:.0}, observer {:.0} ({:.3}).\n",
        none.requests_per_second(),
        observer.requests_per_second(),
        observer.requests_per_second() / none.requests_per_second().max(1.0),
    );
    let _ = writeln!(
        s,
        "| µs of CPU per request | CPU {client_cpu} (wrk), no tracer | CPU {client_cpu}, observer | CPU {client_cpu}, \
         added | CPU {server_cpu} (nginx), added |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for p in &parts {
        let (a, b) = (none.us_per_request(Some(client_cpu), p), observer.us_per_request(Some(client_cpu), p));
        let server = observer.us_per_request(Some(server_cpu), p) - none.us_per_request(Some(server_cpu), p);
        let _ = writeln!(s, "| {} | {a:.3} | {b:.3} | {:+.3} | {server:+.3} |", p.label(), b - a);
    }
    let (a, b) = (none.busy_us_per_request(Some(client_cpu)), observer.busy_us_per_request(Some(client_cpu)));
    let server = observer.busy_us_per_request(Some(server_cpu)) - none.busy_us_per_request(Some(server_cpu));
    let _ = writeln!(s, "| **busy, in all** | {a:.3} | {b:.3} | {:+.3} | {server:+.3} |", b - a);
    let direct: f64 = parts
        .iter()
        .filter(|p| matches!(p, Part::Program(_) | Part::Dispatch | Part::RingBuffer | Part::Clock))
        .map(|p| observer.us_per_request(Some(client_cpu), p) - none.us_per_request(Some(client_cpu), p))
        .sum();
    let _ = writeln!(
        s,
        "\nOn CPU {client_cpu}, observer's programs and what runs them (their calls, the ring buffer, the clock) add \
         {direct:.3} µs per request: {:.1}% of the no-tracer request's {a:.3} µs; the rest of the difference is \
         the other work's (cache misses, the daemon's wake-ups, and noise).\n",
        100.0 * direct / a.max(f64::MIN_POSITIVE),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
# To display the perf.data header info, please use --header/--header-only options.
#
 13.10% | 5136       |001|wrk            |[k] _raw_spin_unlock_irqrestore
 1.42%  | 556        |001|wrk            |[k] bpf_prog_0209810cd3ad5e62_inet_sock_set_state
 0.29%  | 114        |001|wrk            |[k] bpf_prog_8e7a3f99a2777845_inet_sock_set_state_nested
 1.29%  | 507        |001|wrk            |[k] bpf_trace_run3
 0.41%  | 160        |001|wrk            |[k] __traceiter_inet_sock_set_state
 0.53%  | 208        |001|wrk            |[k] __bpf_ringbuf_reserve
 1.03%  | 403        |001|wrk            |[k] read_tsc
 0.26%  | 208        |000|tokio-rt-worker|[.] observer::aggregate::Aggregator::on_state
 21.7%  | 8000       |000|swapper        |[k] pv_native_safe_halt
 0.50%  | 200        |000|nginx          |[.] ngx_http_parse_request_line
bad line
";

    #[test]
    fn parses_perf_reports_lines_and_skips_the_rest() {
        let lines = parse_report(REPORT);
        assert_eq!(lines.len(), 10);
        assert_eq!(
            lines[1],
            Line {
                cpu: 1,
                comm: "wrk".into(),
                symbol: "bpf_prog_0209810cd3ad5e62_inet_sock_set_state".into(),
                samples: 556
            }
        );
        assert_eq!(lines[7].symbol, "observer::aggregate::Aggregator::on_state");
    }

    #[test]
    fn sorts_samples_into_parts() {
        assert_eq!(
            part_of("wrk", "bpf_prog_8e7a3f99a2777845_inet_sock_set_state_nested"),
            Part::Program("inet_sock_set_state_nested".into())
        );
        assert_eq!(part_of("nginx", "bpf_trace_run3"), Part::Dispatch);
        assert_eq!(part_of("wrk", "__bpf_trace_inet_sock_set_state"), Part::Dispatch);
        assert_eq!(part_of("wrk", "__bpf_ringbuf_reserve"), Part::RingBuffer);
        assert_eq!(part_of("wrk", "bpf_ringbuf_submit"), Part::RingBuffer);
        assert_eq!(part_of("wrk", "ktime_get_mono_fast_ns"), Part::Clock);
        assert_eq!(part_of("tokio-rt-worker", "bpf_ringbuf_submit"), Part::Daemon);
        assert_eq!(part_of("observer", "main"), Part::Daemon);
        assert_eq!(part_of("swapper", "pv_native_safe_halt"), Part::Idle);
        assert_eq!(part_of("wrk", "tcp_ack"), Part::Rest);
        assert_eq!(part_of("wrk", "bpf_lsm_socket_connect"), Part::Rest);
    }

    #[test]
    fn adds_up_microseconds_per_request_by_cpu_and_part() {
        let mut p = Profile::default();
        // 1000 requests in 2 s.
        p.add(&parse_report(REPORT), 1000.0, 2.0);
        // 556 samples of 250 µs over 1000 requests.
        let prog = Part::Program("inet_sock_set_state".into());
        assert!((p.us_per_request(Some(1), &prog) - 139.0).abs() < 1e-9);
        assert_eq!(p.us_per_request(Some(0), &prog), 0.0);
        // bpf_trace_run3 and __traceiter.
        assert!((p.us_per_request(None, &Part::Dispatch) - 667.0 * 0.25).abs() < 1e-9);
        // CPU 0: the daemon and nginx, not the idle loop.
        assert!((p.busy_us_per_request(Some(0)) - 408.0 * 0.25).abs() < 1e-9);
        assert_eq!(p.requests_per_second(), 500.0);
    }

    #[test]
    fn the_section_sets_observers_parts_against_no_tracer() {
        let mut none = Profile::default();
        none.add(&parse_report(" 50.0% | 4000 |001|wrk |[k] tcp_ack\n"), 1000.0, 1.0);
        let mut obs = Profile::default();
        obs.add(
            &parse_report(" 50.0% | 4000 |001|wrk |[k] tcp_ack\n 1.0% | 400 |001|wrk |[k] bpf_trace_run3\n"),
            1000.0,
            1.0,
        );
        let md = markdown("connection per request", "wrk -t1", 2, &none, &obs, 1, 0);
        assert!(md.contains("| the tracepoints calling programs (`bpf_trace_run*`, `__traceiter_*`...) | 0.000 | 100.000 | +100.000 | +0.000 |"), "{md}");
        assert!(md.contains("| **busy, in all** | 1000.000 | 1100.000 | +100.000 | +0.000 |"), "{md}");
        assert!(md.contains("add 100.000 µs per request: 10.0%"), "{md}");
    }
}
