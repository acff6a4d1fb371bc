//! `cargo xtask bench`: what observer costs the services it watches, measured side by side in
//! one run: every setup (no tracer, observer, a naive bpftrace script, `ss -tanp` polling) runs
//! in every round, in a rotated order, against the same nginx. Results go to bench/results.md
//! and bench/results.png.
//!
//! All traffic is on loopback; every load run is bounded in time (wrk -d) and killed if it
//! overruns; every server and tracer is stopped when the bench ends.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use crate::interleave::{self, Pair};
use crate::profile::{self, Profile};

/// nginx's `stub_status` page (its request counter, read by the interleaved measurement).
const STATUS_PATH: &str = "/nginx_status";

/// Seconds of load per round.
const ROUND_SECONDS: u64 = 4;
/// CPU the load generator is pinned to (the tracers are not pinned).
const CLIENT_CPU: &str = "1";
/// CPU nginx is pinned to.
const SERVER_CPU: &str = "0";
/// wrk connections and threads.
const CONNECTIONS: u32 = 20;
const THREADS: u32 = 1;
/// Connections held open for the scale case.
const SCALE_CONNECTIONS: u32 = 10_000;
/// Seconds perf samples per round of the profile case.
pub const PROFILE_SECONDS: u64 = 6;
/// API calls timed in the scale case.
const API_CALLS: usize = 1000;

/// The font the plot's text is drawn with (Debian's fonts-dejavu-core).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The setups of `bench reuse`, and of the full workloads.
/// Keep-alive with and without TLS recognition: what that feature costs on the hot path.
pub const REUSE_SETUPS: &[Setup] = &[Setup::None, Setup::Observer, Setup::ObserverNoTls];
pub const ALL_SETUPS: &[Setup] = &[Setup::None, Setup::Observer, Setup::Bpftrace, Setup::SsPoll];

/// The sections of bench/results.md, in order: (case, heading).
const SECTIONS: &[(&str, &str)] = &[
    ("targets", "Targets"),
    ("reuse", "Keep-alive reuse: observer against no tracer (`cargo xtask bench reuse`)"),
    ("keepalive", "Keep-alive (`cargo xtask bench keepalive`)"),
    ("close", "Connection per request (`cargo xtask bench close`)"),
    ("interleaved", "Observer against no tracer, interleaved (`cargo xtask bench interleaved`)"),
    ("profile", "Where the cost goes: perf samples (`cargo xtask bench profile`)"),
    ("scale", "Scale: 10,000 connections (`cargo xtask bench scale`)"),
];

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
/// with its hidden `--bench-calibration` flag): the first does nothing, and what `bpf_stats` reads
/// for it is the floor of every ns-per-run figure on this machine; each other one does one of the
/// operations observer's programs are made of, and its difference with the first is the price of
/// that operation here.
const CALIBRATION: [(&str, &str); 6] = [
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

/// The naive peer: print every TCP state change, as people do with bpftrace.
const BPFTRACE_SCRIPT: &str = "tracepoint:sock:inet_sock_set_state { printf(\"%d %s %s:%d -> %d %d>%d\\n\", pid, comm, ntop(args->saddr), args->sport, args->dport, args->oldstate, args->newstate); }";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Setup {
    None,
    Observer,
    /// The daemon with `--no-tls`.
    ObserverNoTls,
    Bpftrace,
    SsPoll,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::None => "no tracer",
            Setup::Observer => "observer daemon",
            Setup::ObserverNoTls => "observer daemon --no-tls",
            Setup::Bpftrace => "bpftrace printing each transition",
            Setup::SsPoll => "`ss -tanp` every second",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// HTTP keep-alive: many sends and receives, few state changes.
    KeepAlive,
    /// `Connection: close`: a connection per request, many state changes.
    ConnectionClose,
}

impl Workload {
    pub fn name(self) -> &'static str {
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
    pub fn wrk_command(self) -> String {
        let mut cmd = format!("wrk -t{THREADS} -c{CONNECTIONS}");
        for a in self.wrk_args() {
            cmd.push(' ');
            cmd.push_str(&if a.contains(' ') { format!("'{a}'") } else { a.to_string() });
        }
        cmd
    }

    /// The throughput ratio observer must keep.
    pub fn target(self) -> f64 {
        match self {
            Workload::KeepAlive => 0.97,
            Workload::ConnectionClose => 0.95,
        }
    }
}

/// Everything measured for one workload.
pub struct WorkloadResult {
    pub workload: Workload,
    pub rounds: usize,
    /// Requests per second per setup, one per round.
    pub rps: HashMap<Setup, Vec<f64>>,
    /// Observer's cost, from a round with kernel.bpf_stats_enabled.
    pub cost: Cost,
    /// The same with `--no-tls`, when that setup was measured.
    pub cost_no_tls: Option<Cost>,
    /// Events the daemon lost over its rounds.
    pub events_lost: u64,
}

impl WorkloadResult {
    /// Median over rounds of the setup's throughput divided by the no-tracer throughput of the
    /// same round.
    pub fn ratio(&self, setup: Setup) -> Option<f64> {
        let pairs = self.pairs(setup)?;
        (!pairs.is_empty()).then(|| median(&pairs))
    }

    /// The lowest and highest of the paired per-round ratios: how far one round can be off.
    pub fn ratio_range(&self, setup: Setup) -> Option<(f64, f64)> {
        let pairs = self.pairs(setup)?;
        (!pairs.is_empty()).then(|| pairs.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x))))
    }

    fn pairs(&self, setup: Setup) -> Option<Vec<f64>> {
        let base = self.rps.get(&Setup::None)?;
        let runs = self.rps.get(&setup)?;
        Some(runs.iter().zip(base).map(|(r, b)| r / b).collect())
    }

    fn spread(&self) -> f64 {
        let base = &self.rps[&Setup::None];
        let (lo, hi) = base.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        100.0 * (hi - lo) / median(base)
    }
}

/// What observer cost during one round.
pub struct Cost {
    pub rps: f64,
    pub elapsed: f64,
    /// CPU seconds the daemon used, and its peak RSS.
    pub daemon_cpu: f64,
    pub daemon_peak_rss_kib: u64,
    /// (program, runs, ns) during the round.
    pub programs: Vec<(String, u64, u64)>,
    /// (program, runs, ns) during the exercise of rare paths after it (see [`exercise_rare_paths`]).
    pub rare: Vec<(String, u64, u64)>,
    /// ns per run of the [`CALIBRATION`] programs during the round (0 if they did not run).
    pub floor_ns: [f64; CALIBRATION.len()],
    /// Busy fraction of each CPU during the round (`/proc/stat`).
    pub cpu_busy: Vec<f64>,
}

impl Cost {
    fn requests(&self) -> f64 {
        self.rps * self.elapsed
    }

    fn bpf_ns_per_request(&self) -> f64 {
        self.programs.iter().map(|(_, _, ns)| *ns as f64).sum::<f64>() / self.requests()
    }

    /// Kernel time in the send and receive programs per request.
    fn io_ns_per_request(&self) -> f64 {
        self.programs
            .iter()
            .filter(|(n, _, _)| n == "sock_send_length" || n == "sock_recv_length")
            .map(|(_, _, ns)| *ns as f64)
            .sum::<f64>()
            / self.requests()
    }

    fn daemon_ns_per_request(&self) -> f64 {
        self.daemon_cpu * 1e9 / self.requests()
    }

    /// A program's runs and ns in the rare-path exercise.
    fn rare_of(&self, name: &str) -> (u64, u64) {
        self.rare.iter().filter(|(n, _, _)| n == name).fold((0, 0), |(r, t), (_, runs, ns)| (r + runs, t + ns))
    }

    /// A program's runs and ns per run over the round and the rare-path exercise together.
    fn per_run(&self, name: &str) -> (u64, f64) {
        let (rare_runs, rare_ns) = self.rare_of(name);
        let (runs, ns) = self
            .programs
            .iter()
            .filter(|(n, _, _)| n == name)
            .fold((rare_runs, rare_ns), |(r, t), (_, runs, ns)| (r + runs, t + ns));
        (runs, if runs > 0 { ns as f64 / runs as f64 } else { 0.0 })
    }

    /// The highest per-run cost of any program that ran.
    fn max_ns_per_run(&self) -> (String, f64) {
        self.programs
            .iter()
            .map(|(n, _, _)| (n.clone(), self.per_run(n)))
            .filter(|(_, (runs, _))| *runs > 0)
            .map(|(n, (_, ns))| (n, ns))
            .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a })
    }
}

/// The scale case: many established connections held by one process.
pub struct Scale {
    pub connections: u64,
    pub idle_rss_kib: u64,
    pub loaded_rss_kib: u64,
    pub api_p50_ms: f64,
    pub api_p99_ms: f64,
    pub api_max_ms: f64,
}

pub struct Bench {
    root: PathBuf,
    observer: PathBuf,
    work: PathBuf,
}

/// What the daemon attaches in an interleaved measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Programs {
    /// Its own programs, as in production.
    Observer,
    /// Its own programs, queueing no records, and only the first of the two on state
    /// changes (`--bench-table-only`): what keeping the socket table alone costs, the least any
    /// tracer that records each socket's owner pays (without even handling every state change
    /// exactly once).
    TableOnly,
    /// Its own programs, all of them, writing their records to a per-CPU region of a shared
    /// array that nobody reads instead of the ring buffer (`--bench-region-records`): what
    /// observer's records would cost with the cheapest write this machine prices, and without
    /// the daemon reading them.
    RegionRecords,
    /// Empty programs on the same three hooks (`--bench-floor`): what any tracer of these events
    /// costs at least.
    Floor,
}

impl Programs {
    /// The daemon's flags for it.
    fn daemon_args(self) -> &'static [&'static str] {
        match self {
            Programs::Observer => &["--bench-toggle"],
            Programs::TableOnly => &["--bench-toggle", "--bench-table-only"],
            Programs::RegionRecords => &["--bench-toggle", "--bench-region-records"],
            Programs::Floor => &["--bench-toggle", "--bench-floor"],
        }
    }

    /// How the bench's progress lines name it (after the workload).
    pub fn label(self) -> &'static str {
        match self {
            Programs::Observer => "",
            Programs::TableOnly => " (socket table only)",
            Programs::RegionRecords => " (records in per-CPU regions)",
            Programs::Floor => " (empty programs)",
        }
    }
}

/// Switches a daemon started with `--bench-toggle` between running with its programs attached
/// and stopped with them detached.
struct Toggle {
    pid: u32,
    /// The daemon's log, where it acknowledges each switch.
    log: PathBuf,
    acks: usize,
    stopped: bool,
}

impl Toggle {
    fn set(&mut self, attached: bool) -> Result<()> {
        if self.stopped {
            signal(self.pid, "CONT")?;
            self.stopped = false;
        }
        signal(self.pid, if attached { "USR2" } else { "USR1" })?;
        self.acks += 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(e) = log.lines().find(|l| l.contains("bench toggle:") && l.contains("ERROR")) {
                bail!("the daemon could not switch its programs: {e}");
            }
            if log.matches("bench toggle: kernel programs").count() >= self.acks {
                break;
            }
            ensure!(Instant::now() < deadline, "the daemon did not acknowledge a switch within 10 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        if !attached {
            signal(self.pid, "STOP")?;
            self.stopped = true;
        }
        Ok(())
    }
}

impl Drop for Toggle {
    fn drop(&mut self) {
        // A stopped daemon would not see the SIGTERM its guard sends.
        if self.stopped {
            let _ = signal(self.pid, "CONT");
        }
    }
}

fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status()?;
    ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Guard(Child, &'static str);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        eprintln!("xtask: {} had to be killed", self.1);
    }
}

/// Wait for `child`, a run of `seconds`, to end; killed (an error) if it runs 20 s longer.
fn wait_bounded(child: &mut Child, seconds: u64, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds + 20);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{what} overran its {seconds} s run");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// nginx's request counter (`stub_status`) on `port`, and when it was read.
fn nginx_requests(port: u16) -> Result<(u64, Instant)> {
    let page = http_get(port, STATUS_PATH)?;
    let n = interleave::parse_stub_status(&page).ok_or_else(|| anyhow!("bad stub_status page: {page}"))?;
    Ok((n, Instant::now()))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} did not become ready in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Requests per second from wrk's output ("Requests/sec:  12345.67").
pub fn parse_wrk_rps(out: &str) -> Option<f64> {
    out.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())
}

fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or_else(|| anyhow!("bad HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

impl Bench {
    pub fn new(root: &Path, observer: PathBuf) -> Result<Bench> {
        let work = root.join("target/bench");
        std::fs::create_dir_all(&work)?;
        Ok(Bench { root: root.to_path_buf(), observer, work })
    }

    fn start_nginx(&self, port: u16, connections: u32) -> Result<Guard> {
        let dir = self.work.join(format!("nginx-{port}"));
        std::fs::create_dir_all(dir.join("tmp"))?;
        let conf = format!(
            "daemon off;\nworker_processes 1;\nworker_rlimit_nofile {nofile};\npid {dir}/nginx.pid;\n\
             error_log {dir}/error.log warn;\nevents {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/tmp;\n  proxy_temp_path {dir}/tmp;\n\
             fastcgi_temp_path {dir}/tmp;\n  uwsgi_temp_path {dir}/tmp;\n  scgi_temp_path {dir}/tmp;\n\
             keepalive_requests 10000000;\n  keepalive_timeout 300s;\n\
             server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    location = {STATUS_PATH} {{ stub_status; }}\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
            dir = dir.display(),
            nofile = connections * 2 + 100,
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        // nginx on one CPU, wrk on the other: the traced server's CPU is the bottleneck.
        let child = Command::new("taskset")
            .args(["-c", SERVER_CPU, "nginx", "-c", &path.display().to_string(), "-p", &dir.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let g = Guard(child, "nginx");
        wait_until("nginx", Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())?;
        Ok(g)
    }

    /// The daemon, once its API answers and its start-up work has settled.
    fn start_observer(&self, extra: &[&str]) -> Result<(Guard, u16)> {
        self.start_observer_logging(extra, None)
    }

    /// [`Self::start_observer`], with the daemon's log (warnings and errors) written to `log`.
    fn start_observer_logging(&self, extra: &[&str], log: Option<&Path>) -> Result<(Guard, u16)> {
        let port = free_port()?;
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::null(),
        };
        let child = Command::new(&self.observer)
            .args(["daemon", "--listen", &format!("127.0.0.1:{port}"), "--log-level", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting observer")?;
        let g = Guard(child, "observer");
        wait_until("observer", Duration::from_secs(30), || http_get(port, "/healthz").is_ok())?;
        std::thread::sleep(Duration::from_secs(1));
        Ok((g, port))
    }

    /// A tracer for `setup` (None for no tracer), ready when this returns.
    fn start_tracer(&self, setup: Setup) -> Result<Option<(Guard, u16)>> {
        Ok(match setup {
            Setup::None => None,
            Setup::Observer => Some(self.start_observer(&[])?),
            Setup::ObserverNoTls => Some(self.start_observer(&["--no-tls"])?),
            Setup::Bpftrace => {
                let log = self.work.join("bpftrace.out");
                let child = Command::new("bpftrace")
                    .args(["-e", BPFTRACE_SCRIPT])
                    .stdout(std::fs::File::create(&log)?)
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting bpftrace")?;
                let g = Guard(child, "bpftrace");
                wait_until("bpftrace", Duration::from_secs(30), || {
                    std::fs::read_to_string(&log).is_ok_and(|s| s.contains("Attaching"))
                })?;
                Some((g, 0))
            }
            Setup::SsPoll => {
                let child = Command::new("sh")
                    .args(["-c", "while :; do ss -tanp > /dev/null; sleep 1; done"])
                    .spawn()
                    .context("starting the ss loop")?;
                Some((Guard(child, "ss loop"), 0))
            }
        })
    }

    /// wrk for `seconds` of `workload` against `url`, pinned to the client's CPU.
    fn load_command(url: &str, workload: Workload, seconds: u64) -> Command {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", CLIENT_CPU, "wrk"])
            .args(["-t", &THREADS.to_string(), "-c", &CONNECTIONS.to_string(), "-d", &format!("{seconds}s")])
            .args(workload.wrk_args())
            .arg(url);
        cmd
    }

    /// One bounded wrk run; returns requests per second.
    fn wrk(&self, url: &str, workload: Workload, seconds: u64) -> Result<f64> {
        let mut child = Self::load_command(url, workload, seconds)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting wrk")?;
        wait_bounded(&mut child, seconds, "wrk")?;
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_wrk_rps(&text).ok_or_else(|| anyhow!("no Requests/sec in wrk's output:\n{text}"))
    }

    /// Every setup in every round, rotating which goes first; then a cost round for observer.
    pub fn workload(&self, workload: Workload, setups: &[Setup], rounds: usize) -> Result<WorkloadResult> {
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
                eprintln!("xtask: {} round {}: {:<34} {r:>9.0} req/s", workload.name(), round + 1, setup.name());
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

    /// One observer round with `kernel.bpf_stats_enabled`: what each program costs per run, and
    /// the daemon's own CPU time and peak memory. (Stats add to every program run, so the cost
    /// figures are upper bounds and this round's throughput is not used for the ratios.)
    fn cost_round(&self, port: u16, workload: Workload, extra: &[&str]) -> Result<Cost> {
        set_bpf_stats(true)?;
        let result = (|| {
            let mut args = vec!["--bench-calibration"];
            args.extend_from_slice(extra);
            let (daemon, _api) = self.start_observer(&args)?;
            let pid = daemon.0.id();
            let before = prog_stats()?;
            let cpu0 = process_cpu_seconds(pid)?;
            let times0 = cpu_times()?;
            let t0 = Instant::now();
            let rps = self.wrk(&local_url(port), workload, ROUND_SECONDS)?;
            let elapsed = t0.elapsed().as_secs_f64();
            let cpu_busy = busy_fractions(&times0, &cpu_times()?);
            let cpu1 = process_cpu_seconds(pid)?;
            let after = prog_stats()?;
            exercise_rare_paths(port)?;
            let after_rare = prog_stats()?;
            let daemon_peak_rss_kib = process_status_kib(pid, "VmHWM")?;
            drop(daemon);
            let floor_ns = CALIBRATION.map(|(name, _)| {
                let (runs, ns) = stats_delta(&before, &after, name);
                if runs > 0 { ns as f64 / runs as f64 } else { 0.0 }
            });
            let diff = |from: &HashMap<String, (u64, u64)>, to: &HashMap<String, (u64, u64)>| {
                PROGRAMS
                    .iter()
                    .map(|name| {
                        let (runs, ns) = stats_delta(from, to, name);
                        (name.to_string(), runs, ns)
                    })
                    .collect()
            };
            Ok(Cost {
                rps,
                elapsed,
                daemon_cpu: cpu1 - cpu0,
                daemon_peak_rss_kib,
                programs: diff(&before, &after),
                rare: diff(&after, &after_rare),
                floor_ns,
                cpu_busy,
            })
        })();
        set_bpf_stats(false)?;
        result
    }

    /// Observer against no tracer in alternating windows of one load run (see [`interleave`]):
    /// `pairs` pairs, the order within each pair alternating, with the daemon's programs as
    /// `programs` says.
    pub fn interleaved(&self, workload: Workload, pairs: usize, programs: Programs) -> Result<(Vec<Pair>, u64)> {
        let port = free_port()?;
        let _nginx = self.start_nginx(port, 4096)?;
        let url = local_url(port);
        self.wrk(&url, workload, 2)?; // warm-up
        let log = self.work.join("observer-toggle.log");
        let (daemon, api) = self.start_observer_logging(programs.daemon_args(), Some(&log))?;
        let mut toggle = Toggle { pid: daemon.0.id(), log, acks: 0, stopped: false };
        // Generously bounded: the windows, the switches, and a margin.
        let per_window = interleave::WINDOW + interleave::SETTLE + Duration::from_millis(400);
        let seconds = (per_window * 2 * pairs as u32).as_secs() + 10;
        let load_ends = Instant::now() + Duration::from_secs(seconds);
        let load = self.spawn_wrk(&url, workload, seconds)?;
        std::thread::sleep(Duration::from_secs(1));
        let requests = || nginx_requests(port);
        let mut window = |with: bool| -> Result<f64> {
            toggle.set(with)?;
            std::thread::sleep(interleave::SETTLE);
            let (n0, t0) = requests()?;
            std::thread::sleep(interleave::WINDOW);
            let (n1, t1) = requests()?;
            // The second read is one of the requests counted.
            Ok(n1.saturating_sub(n0 + 1) as f64 / (t1 - t0).as_secs_f64())
        };
        let mut measured = Vec::with_capacity(pairs);
        for i in 0..pairs {
            // Every window must lie within the load run.
            ensure!(
                Instant::now() + per_window * 2 < load_ends,
                "the interleaved measurement overran its {seconds} s load run after {i} pairs"
            );
            let pair = if i % 2 == 0 {
                let without = window(false)?;
                Pair { without, with: window(true)? }
            } else {
                let with = window(true)?;
                Pair { with, without: window(false)? }
            };
            measured.push(pair);
        }
        toggle.set(true)?;
        drop(load);
        let events_lost = status_field(api, "events_lost").unwrap_or(0);
        let s = interleave::Summary::of(&measured).expect("at least one pair");
        eprintln!(
            "xtask: {} interleaved{}: {:.3} ({:.3} - {:.3}) over {} pairs",
            workload.name(),
            programs.label(),
            s.median,
            s.median_low,
            s.median_high,
            s.pairs
        );
        Ok((measured, events_lost))
    }

    /// wrk running in the background for at most `seconds` (stopped when the guard drops).
    fn spawn_wrk(&self, url: &str, workload: Workload, seconds: u64) -> Result<Guard> {
        let child = Self::load_command(url, workload, seconds)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wrk")?;
        Ok(Guard(child, "wrk"))
    }

    /// perf samples of the whole machine under `workload`, `rounds` times with no tracer and with
    /// observer, the order alternating: (no tracer, observer). See [`profile`].
    pub fn profile(&self, workload: Workload, rounds: usize) -> Result<(Profile, Profile)> {
        let port = free_port()?;
        let _nginx = self.start_nginx(port, 4096)?;
        let url = local_url(port);
        self.wrk(&url, workload, 2)?; // warm-up
        let requests = || nginx_requests(port);
        let data = self.work.join("perf.data");
        let (mut none, mut observer) = (Profile::default(), Profile::default());
        for round in 0..rounds {
            let order = if round % 2 == 0 { [Setup::None, Setup::Observer] } else { [Setup::Observer, Setup::None] };
            for setup in order {
                let tracer = self.start_tracer(setup)?;
                let load = self.spawn_wrk(&url, workload, PROFILE_SECONDS + 5)?;
                std::thread::sleep(Duration::from_secs(1));
                let (n0, t0) = requests()?;
                // perf itself on the server's CPU, off the one that bounds throughput.
                let mut perf = Command::new("taskset")
                    .args(["-c", SERVER_CPU, "perf", "record", "-q", "-a", "-e", "cpu-clock", "-c"])
                    .arg(profile::PERIOD_NS.to_string())
                    .arg("-o")
                    .arg(&data)
                    .args(["--", "sleep", &PROFILE_SECONDS.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("starting perf (linux-perf)")?;
                wait_bounded(&mut perf, PROFILE_SECONDS, "perf record")?;
                let (n1, t1) = requests()?;
                let out = perf.wait_with_output()?;
                ensure!(out.status.success(), "perf record failed: {}", String::from_utf8_lossy(&out.stderr));
                drop(load);
                drop(tracer);
                let report = Command::new("perf")
                    .arg("report")
                    .arg("-i")
                    .arg(&data)
                    .args(["--stdio", "--no-children", "-g", "none", "-n", "-t", "|", "--sort", "cpu,comm,sym"])
                    .stderr(Stdio::null())
                    .output()
                    .context("perf report")?;
                ensure!(report.status.success(), "perf report failed");
                let lines = profile::parse_report(&String::from_utf8_lossy(&report.stdout));
                ensure!(!lines.is_empty(), "perf report printed no samples");
                // The requests of the sampled seconds, at the rate nginx counted around them (the
                // second read is one of the requests counted).
                let rate = n1.saturating_sub(n0 + 1) as f64 / (t1 - t0).as_secs_f64();
                let seconds = PROFILE_SECONDS as f64;
                let p = if setup == Setup::None { &mut none } else { &mut observer };
                p.add(&lines, rate * seconds, seconds);
                eprintln!("xtask: profile {} {}: {rate:.0} req/s", workload.name(), setup.name());
            }
        }
        let _ = std::fs::remove_file(&data);
        Ok((none, observer))
    }

    /// 10,000 established connections held by one process: the daemon's memory, and how long
    /// the API takes to describe that process.
    pub fn scale(&self) -> Result<Scale> {
        let port = free_port()?;
        let _nginx = self.start_nginx(port, SCALE_CONNECTIONS + 1000)?;
        let (daemon, api) = self.start_observer(&[])?;
        let pid = daemon.0.id();
        std::thread::sleep(Duration::from_secs(2));
        let idle_rss_kib = process_status_kib(pid, "VmRSS")?;
        let holder_src = format!(
            "import resource, socket, sys, os\n\
             resource.setrlimit(resource.RLIMIT_NOFILE, ({n} + 1000, {n} + 1000))\n\
             socks = []\n\
             for i in range({n}):\n\
             \x20   s = socket.create_connection(('127.0.0.1', {port}))\n\
             \x20   socks.append(s)\n\
             print(os.getpid(), flush=True)\n\
             sys.stdin.read()\n",
            n = SCALE_CONNECTIONS
        );
        let mut holder = Command::new("python3")
            .args(["-c", &holder_src])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the connection holder")?;
        let holder_pid = holder.id();
        let holder_stdin = holder.stdin.take();
        let guard = Guard(holder, "connection holder");
        let path = format!("/api/v1/processes/{holder_pid}");
        let expected = format!("\"ESTABLISHED\":{SCALE_CONNECTIONS}");
        wait_until("10,000 connections", Duration::from_secs(120), || {
            http_get(api, &path).is_ok_and(|b| b.contains(&expected))
        })?;
        std::thread::sleep(Duration::from_secs(2));
        let mut times = Vec::with_capacity(API_CALLS);
        for _ in 0..API_CALLS {
            let t = Instant::now();
            http_get(api, &path)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let loaded_rss_kib = process_status_kib(pid, "VmRSS")?;
        drop(holder_stdin);
        drop(guard);
        drop(daemon);
        Ok(Scale {
            connections: SCALE_CONNECTIONS as u64,
            idle_rss_kib,
            loaded_rss_kib,
            api_p50_ms: percentile(&times, 50.0),
            api_p99_ms: percentile(&times, 99.0),
            api_max_ms: *times.last().unwrap_or(&0.0),
        })
    }

    /// bench/results.md.
    pub fn results_path(&self) -> PathBuf {
        self.root.join("bench/results.md")
    }

    /// Replace (or add) one section of bench/results.md, keeping the others from earlier runs.
    pub fn write_section(&self, name: &str, body: &str) -> Result<PathBuf> {
        ensure!(SECTIONS.iter().any(|(case, _)| *case == name), "no section {name} in bench/results.md's layout");
        let path = self.results_path();
        std::fs::create_dir_all(path.parent().expect("bench/"))?;
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let stamp = format!("_{}._\n\n", stamp());
        std::fs::write(&path, merge_sections(&old, name, &format!("{stamp}{body}")))?;
        Ok(path)
    }
}

/// The targets table `new` (as [`targets_markdown`] writes it), followed by the rows of the
/// targets section of `old_results` (bench/results.md) for targets this run did not measure,
/// marked as from an earlier run: a run of one case does not drop the other targets.
pub fn carry_target_rows(old_results: &str, new: &str) -> String {
    let rows = |text: &str| -> Vec<(String, String)> {
        text.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| target |") && !l.starts_with("| ---"))
            .filter_map(|l| l.split(" | ").next().map(|k| (k.trim_start_matches("| ").to_string(), l.to_string())))
            .collect()
    };
    let old_section = section_text(old_results, "targets").unwrap_or("");
    let measured: Vec<String> = rows(new).into_iter().map(|(k, _)| k).collect();
    let mut md = new.to_string();
    for (key, line) in rows(old_section) {
        if measured.contains(&key) {
            continue;
        }
        let mut cells: Vec<String> = line.split(" | ").map(str::to_string).collect();
        if cells.len() == 3 && !cells[1].ends_with("(earlier run)") {
            cells[1].push_str(" (earlier run)");
        }
        md.push_str(&cells.join(" | "));
        md.push('\n');
    }
    md
}

/// The text of section `case` of bench/results.md, between its markers (its heading included).
fn section_text<'a>(results: &'a str, case: &str) -> Option<&'a str> {
    let (begin, end) = (format!("<!-- case:{case} -->"), format!("<!-- /case:{case} -->"));
    let (b, e) = (results.find(&begin)?, results.find(&end)?);
    (b < e).then(|| &results[b + begin.len()..e])
}

/// bench/results.md with the section `name` replaced by `body`, sections in [`SECTIONS`] order.
pub fn merge_sections(old: &str, name: &str, body: &str) -> String {
    let mut md = String::from(
        "# observer benchmarks\n\nWritten by `cargo xtask bench` (see the README's \"Overhead\" section). Each \
         section is replaced when its case runs again.\n",
    );
    for (case, heading) in SECTIONS {
        let text = if *case == name {
            Some(body.to_string())
        } else {
            section_text(old, case).map(|inner| {
                // Drop the heading line written with it.
                inner.trim_start().split_once('\n').map_or("", |(_, rest)| rest).trim_start().to_string()
            })
        };
        if let Some(text) = text {
            let _ = write!(md, "\n<!-- case:{case} -->\n## {heading}\n\n{}\n<!-- /case:{case} -->\n", text.trim_end());
        }
    }
    md
}

/// "Measured <date> on Linux <version>, <n> CPUs"
pub fn stamp() -> String {
    format!("Measured {} on {}", now_utc(), machine())
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map_or_else(|_| "at an unknown time".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// "Linux 6.18.0, 2 CPUs"
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Linux {}, {cpus} CPUs", kernel.trim())
}

/// Markdown for `bench reuse`.
pub fn reuse_markdown(r: &WorkloadResult) -> String {
    let ratio = r.ratio(Setup::Observer).unwrap_or(0.0);
    let met = if ratio >= Workload::KeepAlive.target() { "met" } else { "**not met**" };
    let mut md = format!(
        "Throughput with observer running divided by throughput without it: **{ratio:.3}** (target at least \
         {:.2}: {met}).\n\n",
        Workload::KeepAlive.target()
    );
    if let Some(no_tls) = &r.cost_no_tls {
        // The throughput ratios move by several points from round to round on a noisy VM; the
        // programs' own time is a steadier measure of what the feature adds.
        let added = r.cost.io_ns_per_request() - no_tls.io_ns_per_request();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cpu = cpus * 1e9 / median(&r.rps[&Setup::None]);
        let points = added / cpu * 100.0;
        let met = if points <= 1.0 { "met" } else { "**not met**" };
        let _ = writeln!(
            md,
            "TLS recognition: the send and receive programs take {:.0} ns per request with it and {:.0} ns \
             without (`bpf_stats`), {added:+.0} ns per request, **{points:.2} points** of the {cpu:.0} ns of CPU \
             a request takes (target at most 1 point: {met}).",
            r.cost.io_ns_per_request(),
            no_tls.io_ns_per_request(),
        );
        if let (Some(with), Some(without)) = (r.ratio(Setup::Observer), r.ratio(Setup::ObserverNoTls)) {
            let _ = writeln!(
                md,
                "Throughput ratios, observer {with:.3} and observer `--no-tls` {without:.3}, differ by {:.1} points \
                 here: within this machine's round-to-round noise.\n",
                (without - with) * 100.0
            );
        }
    }
    md.push_str(&workload_markdown(r, REUSE_SETUPS));
    md
}

/// Markdown for one workload.
pub fn workload_markdown(r: &WorkloadResult, setups: &[Setup]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "`wrk -t{THREADS} -c{CONNECTIONS} -d{ROUND_SECONDS}s{}` (pinned to CPU {CLIENT_CPU}) against a local nginx \
         (1 worker, `return 200`, pinned to CPU {SERVER_CPU}); {} rounds, every setup in every round in a rotated order; a tracer starts \
         before its round and stops after it.\n",
        if r.workload == Workload::ConnectionClose { " -H 'Connection: close'" } else { "" },
        r.rounds
    );
    let _ = writeln!(
        md,
        "| setup | median req/s | ratio to no tracer (median of paired rounds) | lowest and highest paired round |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: |");
    for s in setups {
        let ratio = r.ratio(*s).map_or("-".to_string(), |x| format!("{x:.3}"));
        let range = match (*s, r.ratio_range(*s)) {
            (Setup::None, _) | (_, None) => "-".to_string(),
            (_, Some((lo, hi))) => format!("{lo:.3} - {hi:.3}"),
        };
        let _ = writeln!(md, "| {} | {:.0} | {ratio} | {range} |", s.name(), median(&r.rps[s]));
    }
    let _ = writeln!(
        md,
        "\nRound-to-round spread of the no-tracer throughput alone: {:.0}% of its median (this VM is noisy; the \
         paired ratio cancels slow drift). Events the daemon lost: {}.\n",
        r.spread(),
        r.events_lost
    );
    md.push_str(&cost_markdown(&r.cost, median(&r.rps[&Setup::None])));
    md
}

fn cost_markdown(c: &Cost, baseline_rps: f64) -> String {
    let mut md = String::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let _ = writeln!(
        md,
        "Cost of observer, from a separate round with `kernel.bpf_stats_enabled=1` ({:.0} req/s; stats add \
         to every run, so these are upper bounds):\n",
        c.rps
    );
    let _ = writeln!(
        md,
        "| program | runs | runs per request | ns per run | in the round | in the exercise | ns per request |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let ns_per_run = |runs: u64, ns: u64| if runs > 0 { format!("{:.0}", ns as f64 / runs as f64) } else { "-".into() };
    for (name, runs, ns) in &c.programs {
        let (_, per_run) = c.per_run(name);
        let (extra, rare_ns) = c.rare_of(name);
        let shown = if extra > 0 { format!("{runs} + {extra}") } else { runs.to_string() };
        let _ = writeln!(
            md,
            "| {name} | {shown} | {:.2} | {per_run:.0} | {} | {} | {:.0} |",
            *runs as f64 / c.requests(),
            ns_per_run(*runs, *ns),
            ns_per_run(extra, rare_ns),
            *ns as f64 / c.requests()
        );
    }
    let _ = writeln!(
        md,
        "\n\"+ N\": runs in an exercise of rare paths after the round ({RARE_RUNS} refused connects and \
         {RARE_RUNS} abortive closes, on an otherwise idle machine), so that every program's ns per run is \
         measured over hundreds of runs. \"ns per run\" is over both, and is what the target is judged on; the \
         next two columns split it."
    );
    if c.floor_ns[0] > 0.0 {
        let _ = writeln!(
            md,
            "\nThe floor of these figures and the price of each operation on this machine, measured in the same \
             round by programs on `sock_send_length` that do only that (`bpf_stats` ns per run; the price is \
             the difference with the program that does nothing):\n\n| program does | ns per run | price |\n\
             | --- | ---: | ---: |"
        );
        for ((_, what), ns) in CALIBRATION.iter().zip(c.floor_ns) {
            let price = if ns == c.floor_ns[0] { "-".to_string() } else { format!("{:.0}", ns - c.floor_ns[0]) };
            let _ = writeln!(md, "| {what} | {ns:.0} | {price} |");
        }
    }
    let cpu_per_req = cpus * 1e9 / baseline_rps;
    let _ = writeln!(
        md,
        "\nPer request: {:.0} ns in the kernel programs and {:.0} ns in the daemon ({:.2} CPU-seconds over {:.1} s). \
         Without a tracer a request takes {cpu_per_req:.0} ns of the {cpus:.0} CPUs' time: observer's work is \
         {:.1}% of that (upper bounds, see above), an average that understates its cost when one CPU bounds the \
         throughput (below). Daemon peak RSS: {:.1} MiB.\n",
        c.bpf_ns_per_request(),
        c.daemon_ns_per_request(),
        c.daemon_cpu,
        c.elapsed,
        (c.bpf_ns_per_request() + c.daemon_ns_per_request()) / cpu_per_req * 100.0,
        c.daemon_peak_rss_kib as f64 / 1024.0
    );
    if !c.cpu_busy.is_empty() {
        let busy: Vec<String> = c
            .cpu_busy
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let who = match i.to_string().as_str() {
                    SERVER_CPU => " (nginx)",
                    CLIENT_CPU => " (wrk)",
                    _ => "",
                };
                format!("CPU {i}{who} {:.0}%", b * 100.0)
            })
            .collect();
        let _ = writeln!(
            md,
            "CPUs busy during the round: {}. The throughput is bound by the busiest one: {:.0} ns of it per \
             request; observer's kernel programs, if they all ran there, would take {:.1}% of it. (On loopback the \
             kernel processes a packet on the CPU that sends it: wrk's CPU also runs the server's side of the \
             handshake and of the client's close, and observer's programs there; where its work runs decides what \
             it costs.)\n",
            busy.join(", "),
            1e9 / c.rps,
            c.bpf_ns_per_request() * c.rps / 1e9 * 100.0
        );
    }
    md
}

pub fn scale_markdown(s: &Scale) -> String {
    format!(
        "{} established connections held open by one process (a Python client against nginx):\n\n\
         | measure | value |\n| --- | ---: |\n\
         | daemon RSS at idle | {:.1} MiB |\n| daemon RSS with the connections | {:.1} MiB |\n\
         | `GET /api/v1/processes/{{pid}}` p50 | {:.2} ms |\n| p99 | {:.2} ms |\n| max | {:.2} ms |\n\n\
         ({API_CALLS} sequential calls.)\n",
        s.connections,
        s.idle_rss_kib as f64 / 1024.0,
        s.loaded_rss_kib as f64 / 1024.0,
        s.api_p50_ms,
        s.api_p99_ms,
        s.api_max_ms
    )
}

/// The targets and whether each was met.
/// The throughput targets are judged on the interleaved measurement when it ran (the rounds'
/// ratios otherwise, marked as such).
pub fn targets_markdown(
    keep: Option<&WorkloadResult>,
    close: Option<&WorkloadResult>,
    interleaved: &[(Workload, interleave::Summary)],
    scale: Option<&Scale>,
) -> String {
    let mut rows: Vec<(String, String, bool)> = Vec::new();
    for workload in [Workload::KeepAlive, Workload::ConnectionClose] {
        let what = format!("{}: at least {:.2} of the no-tracer throughput", workload.name(), workload.target());
        let rounds = [keep, close].into_iter().flatten().find(|r| r.workload == workload);
        if let Some((_, s)) = interleaved.iter().find(|(w, _)| *w == workload) {
            let measured = format!("{:.3} ({:.3} - {:.3}, interleaved)", s.median, s.median_low, s.median_high);
            rows.push((what, measured, s.median >= workload.target()));
        } else if let Some(r) = rounds {
            let ratio = r.ratio(Setup::Observer).unwrap_or(0.0);
            rows.push((what, format!("{ratio:.3} (rounds)"), ratio >= workload.target()));
        }
    }
    for r in [keep, close].into_iter().flatten() {
        let (prog, worst) = r.cost.max_ns_per_run();
        rows.push((
            format!("{}: at most 300 ns per run for every program", r.workload.name()),
            format!("{worst:.0} ns ({prog})"),
            worst <= 300.0,
        ));
    }
    if let Some(r) = close {
        rows.push(("zero lost events at connection per request".into(), r.events_lost.to_string(), r.events_lost == 0));
    }
    if let Some(s) = scale {
        let idle = s.idle_rss_kib as f64 / 1024.0;
        let loaded = s.loaded_rss_kib as f64 / 1024.0;
        rows.push(("daemon RSS at idle at most 50 MB".into(), format!("{idle:.1} MiB"), idle * 1.048576 <= 50.0));
        rows.push((
            format!("daemon RSS with {} connections at most 150 MB", s.connections),
            format!("{loaded:.1} MiB"),
            loaded * 1.048576 <= 150.0,
        ));
        rows.push(("API p99 under 10 ms".into(), format!("{:.2} ms", s.api_p99_ms), s.api_p99_ms < 10.0));
    }
    let mut md = String::from("| target | measured | met |\n| --- | ---: | :---: |\n");
    for (t, m, ok) in rows {
        let _ = writeln!(md, "| {t} | {m} | {} |", if ok { "yes" } else { "**no**" });
    }
    md
}

/// The side-by-side table of throughput ratios: a row per workload, a column per setup.
pub fn overview_markdown(results: &[&WorkloadResult], setups: &[Setup]) -> String {
    let mut md = String::from("| workload | ");
    md.push_str(&setups.iter().map(|s| s.name()).collect::<Vec<_>>().join(" | "));
    md.push_str(" |\n| --- |");
    md.push_str(&" ---: |".repeat(setups.len()));
    md.push('\n');
    for r in results {
        let _ = write!(md, "| {} |", r.workload.name());
        for s in setups {
            match (*s, r.ratio(*s)) {
                (Setup::None, _) => {
                    let _ = write!(md, " {:.0} req/s |", median(&r.rps[s]));
                }
                (_, Some(x)) => {
                    let _ = write!(md, " {x:.3} |");
                }
                (_, None) => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    md
}

/// README.md with the text between `<!-- bench:overview -->` and `<!-- /bench:overview -->`
/// replaced by `body` (unchanged if the markers are missing).
pub fn merge_readme(readme: &str, body: &str) -> String {
    let (begin, end) = ("<!-- bench:overview -->", "<!-- /bench:overview -->");
    match (readme.find(begin), readme.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{begin}\n{}\n{}", &readme[..b], body.trim_end(), &readme[e..])
        }
        _ => readme.to_string(),
    }
}

/// A bar chart of the throughput ratios, per workload and setup.
pub fn plot(path: &Path, results: &[&WorkloadResult], setups: &[Setup]) -> Result<()> {
    use plotters::prelude::*;
    let font = std::fs::read(FONT).with_context(|| format!("the plot needs {FONT} (fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow!("registering the font"))?;
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let n = (results.len() * (setups.len() + 1)) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("Throughput with a tracer / without (median of paired rounds)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(60)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n, 0f64..1.1f64)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("ratio")
        .x_labels(2)
        .x_label_formatter(&|_| String::new())
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let colors = [RGBColor(80, 80, 80), RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(255, 127, 14)];
    for (wi, r) in results.iter().enumerate() {
        let x0 = (wi * (setups.len() + 1)) as f64 + 0.5;
        for (si, s) in setups.iter().enumerate() {
            let Some(v) = r.ratio(*s) else { continue };
            let x = x0 + si as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new([(x, 0.0), (x + 0.9, v)], colors[si % 4].filled())))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(std::iter::once(Text::new(format!("{v:.2}"), (x + 0.2, v + 0.04), ("sans-serif", 13))))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    for (si, s) in setups.iter().enumerate() {
        let c = colors[si % 4];
        chart
            .draw_series(std::iter::once(Rectangle::new([(0.0, 0.0), (0.0, 0.0)], c.filled())))
            .map_err(|e| anyhow!("{e}"))?
            .label(s.name().replace('`', ""))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    // Workload names under their groups.
    for (wi, r) in results.iter().enumerate() {
        let (x, y) = chart.backend_coord(&((wi * (setups.len() + 1)) as f64 + 0.5, 0.0));
        root.draw(&Text::new(r.workload.name().to_string(), (x, y + 12), ("sans-serif", 16)))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn set_bpf_stats(on: bool) -> Result<()> {
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if on { "1" } else { "0" })
        .context("writing kernel.bpf_stats_enabled")
}

/// The profile case's section for one workload (see [`profile::markdown`]).
pub fn profile_markdown(workload: Workload, rounds: usize, none: &Profile, observer: &Profile) -> String {
    let cpu = |c: &str| c.parse::<u32>().expect("a CPU number");
    profile::markdown(
        workload.name(),
        &workload.wrk_command(),
        rounds,
        none,
        observer,
        cpu(CLIENT_CPU),
        cpu(SERVER_CPU),
    )
}

/// The benchmark's nginx on loopback.
fn local_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/")
}

/// Runs of each rare path in [`exercise_rare_paths`].
const RARE_RUNS: u32 = 200;

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

/// A program's runs and run time (ns) between two [`prog_stats`] readings.
fn stats_delta(from: &HashMap<String, (u64, u64)>, to: &HashMap<String, (u64, u64)>, name: &str) -> (u64, u64) {
    let (c0, t0) = from.get(name).copied().unwrap_or((0, 0));
    let (c1, t1) = to.get(name).copied().unwrap_or((0, 0));
    (c1.saturating_sub(c0), t1.saturating_sub(t0))
}

/// (runs, run time ns) per program name, from bpftool.
fn prog_stats() -> Result<HashMap<String, (u64, u64)>> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().context("bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    let mut stats = HashMap::new();
    for p in progs.as_array().into_iter().flatten() {
        let Some(name) = p["name"].as_str() else { continue };
        let e = stats.entry(name.to_string()).or_insert((0, 0));
        e.0 += p["run_cnt"].as_u64().unwrap_or(0);
        e.1 += p["run_time_ns"].as_u64().unwrap_or(0);
    }
    Ok(stats)
}

/// (busy, total) clock ticks of each CPU since boot: the `cpuN` lines of `/proc/stat`.
fn cpu_times() -> Result<Vec<(u64, u64)>> {
    Ok(parse_cpu_times(&std::fs::read_to_string("/proc/stat")?))
}

/// Busy is everything but idle and iowait (user, nice, system, irq, softirq, steal).
pub fn parse_cpu_times(stat: &str) -> Vec<(u64, u64)> {
    stat.lines()
        .filter(|l| l.strip_prefix("cpu").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit())))
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
            let total: u64 = v.iter().sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Busy fraction of each CPU between two [`cpu_times`] readings.
pub fn busy_fractions(from: &[(u64, u64)], to: &[(u64, u64)]) -> Vec<f64> {
    from.iter()
        .zip(to)
        .map(|((b0, t0), (b1, t1))| if t1 > t0 { (b1 - b0) as f64 / (t1 - t0) as f64 } else { 0.0 })
        .collect()
}

fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

fn process_status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {key}"))
}

/// A numeric field of the daemon's /api/v1/status.
fn status_field(api: u16, key: &str) -> Option<u64> {
    let body = http_get(api, "/api/v1/status").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v[key].as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_busy_time_from_proc_stat() {
        let before = "cpu  300 0 100 1000 0 0 0 0 0 0\ncpu0 100 0 50 800 20 0 0 0 0 0\n\
                      cpu1 200 0 50 200 0 0 0 0 0 0\nintr 1 2 3\ncpufreq 9\n";
        let after = "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 150 0 50 840 30 0 0 0 0 0\n\
                     cpu1 290 0 50 200 0 0 10 0 0 0\n";
        let (t0, t1) = (parse_cpu_times(before), parse_cpu_times(after));
        assert_eq!(t0, vec![(150, 970), (250, 450)]);
        let busy = busy_fractions(&t0, &t1);
        assert_eq!(busy, vec![0.5, 1.0], "idle and iowait are not busy; softirq is");
    }

    #[test]
    fn reads_wrk_output() {
        let out = "Running 8s test @ http://127.0.0.1:1/\n  1 threads and 50 connections\n\
                   Requests/sec:  41234.56\nTransfer/sec:      5.12MB\n";
        assert_eq!(parse_wrk_rps(out), Some(41234.56));
        assert_eq!(parse_wrk_rps("nothing"), None);
    }

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
    }

    #[test]
    fn sections_keep_their_order_and_other_runs() {
        let md = merge_sections("", "scale", "scale body\n");
        let md = merge_sections(&md, "reuse", "reuse body\n");
        let md = merge_sections(&md, "scale", "new scale\n");
        assert!(md.contains("reuse body") && md.contains("new scale") && !md.contains("scale body"));
        assert!(md.find("reuse body").unwrap() < md.find("new scale").unwrap());
        assert_eq!(md.matches("## Scale").count(), 1);
    }

    #[test]
    fn ratios_pair_rounds() {
        let mut rps = HashMap::new();
        rps.insert(Setup::None, vec![100.0, 200.0, 100.0]);
        rps.insert(Setup::Observer, vec![90.0, 190.0, 99.0]);
        let cost = Cost {
            rps: 0.0,
            elapsed: 1.0,
            daemon_cpu: 0.0,
            daemon_peak_rss_kib: 0,
            programs: vec![],
            rare: vec![],
            floor_ns: [0.0; 6],
            cpu_busy: vec![],
        };
        let r =
            WorkloadResult { workload: Workload::KeepAlive, rounds: 3, rps, cost, cost_no_tls: None, events_lost: 0 };
        // Pairs: 0.9, 0.95, 0.99: the median is 0.95, unlike the ratio of medians (190/100... no: 99/100).
        assert_eq!(r.ratio(Setup::Observer), Some(0.95));
        assert_eq!(r.ratio_range(Setup::Observer), Some((0.9, 0.99)));
        let md = workload_markdown(&r, &[Setup::None, Setup::Observer]);
        assert!(md.contains("| observer daemon | 99 | 0.950 | 0.900 - 0.990 |"), "{md}");
        assert!(md.contains("| no tracer | 100 | 1.000 | - |"), "{md}");
        assert_eq!(r.ratio(Setup::Bpftrace), None);
        let t = overview_markdown(&[&r], &[Setup::None, Setup::Observer, Setup::Bpftrace]);
        assert!(t.ends_with("| keep-alive | 100 req/s | 0.950 | - |\n"), "{t}");
    }

    #[test]
    fn a_program_is_judged_on_its_runs_in_the_round_and_the_rare_path_exercise() {
        let p = |name: &str, runs, ns| (name.to_string(), runs, ns);
        let cost = Cost {
            rps: 1000.0,
            elapsed: 2.0,
            daemon_cpu: 0.0,
            daemon_peak_rss_kib: 0,
            programs: vec![p("sock_send_length", 4000, 800_000), p("tcp_send_reset", 2, 4000)],
            rare: vec![p("sock_send_length", 0, 0), p("tcp_send_reset", 198, 196_000)],
            floor_ns: [77.4, 140.0, 120.0, 150.0, 100.0, 300.0],
            cpu_busy: vec![0.55, 0.99],
        };
        assert_eq!(cost.per_run("tcp_send_reset"), (200, 1000.0));
        assert_eq!(cost.per_run("sock_send_length"), (4000, 200.0));
        assert_eq!(cost.max_ns_per_run(), ("tcp_send_reset".to_string(), 1000.0));
        let md = cost_markdown(&cost, 1000.0);
        assert!(md.contains("| tcp_send_reset | 2 + 198 | 0.00 | 1000 | 2000 | 990 | 2 |"), "{md}");
        assert!(md.contains("| nothing (the floor) | 77 | - |"), "{md}");
        assert!(md.contains("| read the clock (`bpf_ktime_get_ns`) | 140 | 63 |"), "{md}");
        assert!(md.contains("(TLS recognition) | 300 | 223 |"), "{md}");
        assert!(md.contains("(a load and a store of its head, three stores) | 100 | 23 |"), "{md}");
        assert!(md.contains("| sock_send_length | 4000 | 2.00 | 200 | 200 | - | 400 |"), "{md}");
        // 402 ns of programs per request; 2 CPUs at 1000 req/s without a tracer: 2,000,000 ns per request.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let avg = format!("takes {} ns of the {cpus} CPUs' time: observer's work is", cpus * 1_000_000);
        assert!(md.contains(&avg), "{md}");
        assert!(
            md.contains(
                "1000000 ns of it per request; observer's kernel programs, if they all ran there, would take 0.0%"
            ),
            "{md}"
        );
    }

    #[test]
    fn a_partial_run_keeps_the_targets_it_did_not_measure() {
        let old = "x\n<!-- case:targets -->\n## Targets\n\n| target | measured | met |\n| --- | ---: | :---: |\n\
                   | keep-alive: ratio | 0.900 (rounds) | **no** |\n| API p99 under 10 ms | 2.14 ms | yes |\n\
                   <!-- /case:targets -->\n";
        let new = "| target | measured | met |\n| --- | ---: | :---: |\n| keep-alive: ratio | 0.949 (interleaved) | **no** |\n";
        let md = carry_target_rows(old, new);
        assert_eq!(
            md,
            "| target | measured | met |\n| --- | ---: | :---: |\n| keep-alive: ratio | 0.949 (interleaved) | **no** |\n\
             | API p99 under 10 ms | 2.14 ms (earlier run) | yes |\n"
        );
        // Carried twice, marked once; nothing to carry without an old section.
        let again = carry_target_rows(&format!("<!-- case:targets -->\n{md}<!-- /case:targets -->"), new);
        assert_eq!(again, md);
        assert_eq!(carry_target_rows("", new), new);
    }

    #[test]
    fn the_readme_section_is_replaced_between_its_markers() {
        let readme = "# x\n## Overhead\n<!-- bench:overview -->\nold\n<!-- /bench:overview -->\nafter\n";
        let new = merge_readme(readme, "new table\n");
        assert_eq!(new, "# x\n## Overhead\n<!-- bench:overview -->\nnew table\n<!-- /bench:overview -->\nafter\n");
        assert_eq!(merge_readme(&new, "again"), new.replace("new table", "again"));
        assert_eq!(merge_readme("no markers", "t"), "no markers");
    }
}
