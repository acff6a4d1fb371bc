//! `cargo xtask bench`: overhead of observer on the services it watches, measured side by side
//! in one run (setups alternate round by round), written to bench/results.md.
//!
//! All traffic is on loopback; every load run is bounded in time (wrk -d) and killed if it
//! overruns.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

/// Seconds of load per round.
const ROUND_SECONDS: u64 = 3;
/// Rounds per setup. Throughput on a 2-core VM varies by several percent from one round to
/// the next whatever runs, so the estimate is the median of per-pair ratios (each observer
/// round against the baseline round next to it), over many pairs.
const ROUNDS: usize = 16;

/// The programs observer loads.
const PROGRAMS: &[&str] = &[
    "inet_sock_set_state",
    "inet_sock_set_state_io",
    "tcp_send_reset",
    "tcp_receive_reset",
    "tcp_destroy_sock",
    "sched_process_exit",
    "inet_sk_error_report",
    "sock_send_length",
    "sock_recv_length",
    "dump_sock_io",
];
/// CPUs the server and the load generator are pinned to (the daemon is not pinned).
const SERVER_CPU: &str = "0";
const CLIENT_CPU: &str = "1";
/// wrk connections and threads.
const CONNECTIONS: u32 = 50;
const THREADS: u32 = 1;

pub struct Bench {
    root: PathBuf,
    observer: PathBuf,
    work: PathBuf,
}

/// A child process killed when dropped.
struct Guard(Child, &'static str);

impl Drop for Guard {
    fn drop(&mut self) {
        // SIGTERM first so that the daemon detaches cleanly.
        unsafe_kill(self.0.id(), 15);
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

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill").args([format!("-{sig}"), pid.to_string()]).status();
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// Requests per second from wrk's output ("Requests/sec:  12345.67").
pub fn parse_wrk_rps(out: &str) -> Option<f64> {
    out.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())
}

impl Bench {
    pub fn new(root: &Path, observer: PathBuf) -> Result<Bench> {
        let work = root.join("target/bench");
        std::fs::create_dir_all(&work)?;
        Ok(Bench { root: root.to_path_buf(), observer, work })
    }

    fn start_nginx(&self, port: u16) -> Result<Guard> {
        let dir = self.work.join("nginx");
        std::fs::create_dir_all(dir.join("tmp"))?;
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/tmp;\n  proxy_temp_path {dir}/tmp;\n\
             fastcgi_temp_path {dir}/tmp;\n  uwsgi_temp_path {dir}/tmp;\n  scgi_temp_path {dir}/tmp;\n\
             keepalive_requests 10000000;\n  keepalive_timeout 300s;\n\
             server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
            dir = dir.display()
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("taskset")
            .args(["-c", SERVER_CPU, "nginx", "-c", &path.display().to_string(), "-p", &dir.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let g = Guard(child, "nginx");
        wait_port(port, "nginx")?;
        Ok(g)
    }

    /// One observer round with `kernel.bpf_stats_enabled`: what each program costs per hit,
    /// and the daemon's own CPU time. (Stats add a little to every program run, so this round's
    /// throughput is not used.)
    fn cost_round(&self, url: &str, extra: &[&str]) -> Result<Cost> {
        set_bpf_stats(true)?;
        let result = (|| {
            let (daemon, _api) = self.start_observer()?;
            let pid = daemon.0.id();
            let before = prog_stats()?;
            let cpu0 = process_cpu_seconds(pid)?;
            let t0 = Instant::now();
            let rps = self.wrk(url, extra)?;
            let elapsed = t0.elapsed().as_secs_f64();
            let cpu1 = process_cpu_seconds(pid)?;
            let after = prog_stats()?;
            let rss_kib = process_rss_kib(pid)?;
            drop(daemon);
            let programs = PROGRAMS
                .iter()
                .map(|name| {
                    // bpftool prints the full name from BTF, or the kernel's 15-character one.
                    let short: String = name.chars().take(15).collect();
                    let get = |m: &std::collections::HashMap<String, (u64, u64)>| {
                        m.get(*name).or_else(|| m.get(&short)).copied().unwrap_or((0, 0))
                    };
                    let ((c0, t0), (c1, t1)) = (get(&before), get(&after));
                    (name.to_string(), c1.saturating_sub(c0), t1.saturating_sub(t0))
                })
                .collect();
            Ok(Cost { rps, elapsed, requests: rps * elapsed, daemon_cpu: cpu1 - cpu0, rss_kib, programs })
        })();
        set_bpf_stats(false)?;
        result
    }

    fn start_observer(&self) -> Result<(Guard, u16)> {
        let port = free_port()?;
        let child = Command::new(&self.observer)
            .args(["daemon", "--listen", &format!("127.0.0.1:{port}"), "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting observer")?;
        let g = Guard(child, "observer");
        // The port is bound before the programs load: wait until the API answers, then let the
        // start-up work (BTF, snapshot) settle before measuring.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(port) {
            if Instant::now() > deadline {
                bail!("observer did not become healthy");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
        Ok((g, port))
    }

    /// One bounded wrk run; returns requests per second.
    fn wrk(&self, url: &str, extra: &[&str]) -> Result<f64> {
        let mut child = Command::new("taskset")
            .args(["-c", CLIENT_CPU, "wrk"])
            .args(["-t", &THREADS.to_string(), "-c", &CONNECTIONS.to_string(), "-d", &format!("{ROUND_SECONDS}s")])
            .args(extra)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting wrk")?;
        let deadline = Instant::now() + Duration::from_secs(ROUND_SECONDS + 20);
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("wrk overran its {ROUND_SECONDS} s run");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_wrk_rps(&text).ok_or_else(|| anyhow!("no Requests/sec in wrk's output:\n{text}"))
    }

    /// Keep-alive throughput with and without observer, alternating.
    pub fn reuse(&self) -> Result<String> {
        let port = free_port()?;
        let _nginx = self.start_nginx(port)?;
        let url = format!("http://127.0.0.1:{port}/");
        // Warm-up.
        self.wrk(&url, &["-d", "2s"])?;
        let (mut base, mut with, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
        let mut lost = 0u64;
        for round in 0..ROUNDS {
            // Alternate which setup goes first.
            for observed in if round % 2 == 0 { [false, true] } else { [true, false] } {
                if observed {
                    let (daemon, api) = self.start_observer()?;
                    let rps = self.wrk(&url, &[])?;
                    lost += events_lost(api).unwrap_or(0);
                    drop(daemon);
                    eprintln!("xtask: round {} observer  {rps:>10.0} req/s", round + 1);
                    with.push(rps);
                } else {
                    let rps = self.wrk(&url, &[])?;
                    eprintln!("xtask: round {} baseline  {rps:>10.0} req/s", round + 1);
                    base.push(rps);
                }
            }
            pairs.push(with[round] / base[round]);
        }
        let ratio = median(&pairs);
        let cost = self.cost_round(&url, &[])?;
        let verdict = if ratio >= 0.97 { "met" } else { "MISSED" };
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Keep-alive HTTP: `wrk -t{THREADS} -c{CONNECTIONS} -d{ROUND_SECONDS}s` (on CPU {CLIENT_CPU}) against a local nginx \
             (1 worker on CPU {SERVER_CPU}, `return 200`), {ROUNDS} rounds per setup, alternating; the daemon starts before \
             each of its rounds and is stopped after.\n"
        );
        let _ = writeln!(md, "| setup | median req/s | rounds (req/s) |");
        let _ = writeln!(md, "| --- | ---: | --- |");
        let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(md, "| no tracer | {:.0} | {} |", median(&base), fmt(&base));
        let _ = writeln!(md, "| observer daemon | {:.0} | {} |", median(&with), fmt(&with));
        let spread = |v: &[f64]| {
            let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            100.0 * (hi - lo) / median(v)
        };
        let pair_list = pairs.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            md,
            "\nThroughput with observer / without, median of the {ROUNDS} paired rounds: **{ratio:.3}** \
             (target at least 0.97: {verdict}). Pair ratios: {pair_list}. Round-to-round spread of the \
             baseline alone: {:.0}% of its median. Events lost during the observer rounds: {lost}.",
            spread(&base)
        );
        let _ = write!(md, "\n{}", cost.table(median(&base)));
        eprintln!("xtask: reuse: ratio {ratio:.3} ({verdict})");
        Ok(md)
    }

    /// Replace (or add) one case's section of bench/results.md.
    pub fn write(&self, case: &str, section: &str, header: &str) -> Result<PathBuf> {
        let dir = self.root.join("bench");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("results.md");
        let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# observer benchmarks\n".to_string());
        let begin = format!("<!-- case:{case} -->");
        let end = format!("<!-- /case:{case} -->");
        let block = format!("{begin}\n## {case}\n\n{header}\n\n{section}{end}");
        let new = match (old.find(&begin), old.find(&end)) {
            (Some(b), Some(e)) => format!("{}{block}{}", &old[..b], &old[e + end.len()..]),
            _ => format!("{}\n{block}\n", old.trim_end()),
        };
        std::fs::write(&path, new)?;
        Ok(path)
    }
}

fn healthy(api: u16) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", &format!("http://127.0.0.1:{api}/healthz")])
        .status()
        .is_ok_and(|s| s.success())
}

/// What observer cost during one round.
pub struct Cost {
    rps: f64,
    elapsed: f64,
    requests: f64,
    /// CPU seconds the daemon used.
    daemon_cpu: f64,
    rss_kib: u64,
    /// (program, runs, ns) during the round.
    programs: Vec<(String, u64, u64)>,
}

impl Cost {
    /// Markdown: per-program cost, and the share of the machine observer used.
    fn table(&self, baseline_rps: f64) -> String {
        let mut md = String::new();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let _ = writeln!(
            md,
            "Cost, from a separate observer round with `kernel.bpf_stats_enabled=1` ({:.0} req/s; stats add \
             to every run, so these are upper bounds):\n",
            self.rps
        );
        let _ = writeln!(md, "| program | runs | runs per request | ns per run | ns per request |");
        let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: |");
        let mut bpf_ns = 0u64;
        for (name, runs, ns) in &self.programs {
            bpf_ns += ns;
            let per_run = if *runs > 0 { *ns as f64 / *runs as f64 } else { 0.0 };
            let _ = writeln!(
                md,
                "| {name} | {runs} | {:.2} | {per_run:.0} | {:.0} |",
                *runs as f64 / self.requests,
                *ns as f64 / self.requests
            );
        }
        let bpf_per_req = bpf_ns as f64 / self.requests;
        let daemon_per_req = self.daemon_cpu * 1e9 / self.requests;
        // At the baseline rate every CPU is busy: each request costs cpus / rps seconds of CPU.
        let cpu_per_req = cpus * 1e9 / baseline_rps;
        let _ = writeln!(
            md,
            "\nPer request: {bpf_per_req:.0} ns in the kernel programs, {daemon_per_req:.0} ns in the daemon \
             ({:.3} CPU-seconds over {:.1} s), out of {cpu_per_req:.0} ns of CPU per request without observer: \
             an expected throughput ratio of {:.3}. Daemon RSS at the end of the round: {:.1} MiB.",
            self.daemon_cpu,
            self.elapsed,
            1.0 - (bpf_per_req + daemon_per_req) / cpu_per_req,
            self.rss_kib as f64 / 1024.0
        );
        md
    }
}

fn set_bpf_stats(on: bool) -> Result<()> {
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if on { "1" } else { "0" })
        .context("writing kernel.bpf_stats_enabled")
}

/// (runs, run time ns) per program name, from bpftool.
fn prog_stats() -> Result<std::collections::HashMap<String, (u64, u64)>> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().context("bpftool")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut stats = std::collections::HashMap::new();
    // Minimal parsing of bpftool's JSON array of objects: "name", "run_time_ns", "run_cnt".
    for obj in text.split("},{") {
        let field = |key: &str| -> Option<&str> {
            let i = obj.find(&format!("\"{key}\":"))? + key.len() + 3;
            Some(obj[i..].split([',', '}']).next()?.trim().trim_matches('"'))
        };
        let Some(name) = field("name") else { continue };
        let cnt = field("run_cnt").and_then(|v| v.parse().ok()).unwrap_or(0);
        let ns = field("run_time_ns").and_then(|v| v.parse().ok()).unwrap_or(0);
        let e = stats.entry(name.to_string()).or_insert((0, 0));
        e.0 += cnt;
        e.1 += ns;
    }
    Ok(stats)
}

fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

fn process_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS"))
}

/// The daemon's lost-event counter.
fn events_lost(api: u16) -> Option<u64> {
    let out = Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{api}/api/v1/status")]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let i = text.find("\"events_lost\":")?;
    text[i + 14..].split([',', '}']).next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 8s test @ http://127.0.0.1:1/\n  1 threads and 50 connections\n\
                   Requests/sec:  41234.56\nTransfer/sec:      5.12MB\n";
        assert_eq!(parse_wrk_rps(out), Some(41234.56));
        assert_eq!(parse_wrk_rps("nothing"), None);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
