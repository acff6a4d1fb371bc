//! Process control: nginx, wrk, and the tracers, each started ready and stopped when its guard
//! drops; every wait bounded in time.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use super::{Bench, CLIENT_CPU, CONNECTIONS, SERVER_CPU, Setup, THREADS, Workload, interleaved};

/// nginx's `stub_status` page (its request counter, read by the interleaved measurement).
const STATUS_PATH: &str = "/nginx_status";

/// How long a tracer may take to attach its programs.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// The naive peer: print every TCP state change, as people do with bpftrace.
const BPFTRACE_SCRIPT: &str = "tracepoint:sock:inet_sock_set_state { printf(\"%d %s %s:%d -> %d %d>%d\\n\", pid, comm, ntop(args->saddr), args->sport, args->dport, args->oldstate, args->newstate); }";

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub(super) struct Guard(Child, &'static str);

impl Guard {
    pub(super) fn new(child: Child, what: &'static str) -> Guard {
        Guard(child, what)
    }

    pub(super) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
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

pub(super) fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status()?;
    ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// Wait for `child`, a run of `seconds`, to end; killed (an error) if it runs 20 s longer.
pub(super) fn wait_bounded(child: &mut Child, seconds: u64, what: &str) -> Result<()> {
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

pub(super) fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} did not become ready in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The benchmark's nginx on loopback.
pub(super) fn local_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/")
}

pub(super) fn http_get(port: u16, path: &str) -> Result<String> {
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

/// nginx's request counter (`stub_status`) on `port`, and when it was read.
pub(super) fn nginx_requests(port: u16) -> Result<(u64, Instant)> {
    let page = http_get(port, STATUS_PATH)?;
    let n = interleaved::parse_stub_status(&page).ok_or_else(|| anyhow!("bad stub_status page: {page}"))?;
    Ok((n, Instant::now()))
}

/// A numeric field of the daemon's /api/v1/status.
pub(super) fn status_field(api: u16, key: &str) -> Option<u64> {
    let body = http_get(api, "/api/v1/status").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v[key].as_u64()
}

/// Requests per second from wrk's output ("Requests/sec:  12345.67").
fn parse_wrk_rps(out: &str) -> Option<f64> {
    out.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())
}

/// Whether process `pid` has a BPF program attached to a tracepoint, from `bpftool perf show`
/// (which lists every process's perf-event attachments).
fn tracepoint_attached(pid: u32) -> Result<bool> {
    let out = Command::new("bpftool").args(["-j", "perf", "show"]).output().context("bpftool perf show")?;
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    Ok(entries
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["pid"].as_u64() == Some(pid.into()) && e["fd_type"].as_str() == Some("tracepoint")))
}

impl Bench {
    pub(super) fn start_nginx(&self, port: u16, connections: u32) -> Result<Guard> {
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
    pub(super) fn start_observer(&self, extra: &[&str]) -> Result<(Guard, u16)> {
        self.start_observer_logging(extra, None)
    }

    /// [`Self::start_observer`], with the daemon's log (warnings and errors) written to `log`.
    pub(super) fn start_observer_logging(&self, extra: &[&str], log: Option<&Path>) -> Result<(Guard, u16)> {
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

    /// A tracer for `setup` (None for no tracer), ready when this returns; the port is the
    /// daemon's API (0 for the other tracers).
    pub(super) fn start_tracer(&self, setup: Setup) -> Result<Option<(Guard, u16)>> {
        Ok(match setup {
            Setup::None => None,
            Setup::Observer => Some(self.start_observer(&[])?),
            Setup::ObserverNoTls => Some(self.start_observer(&["--no-tls"])?),
            Setup::Bpftrace => Some((self.start_bpftrace()?, 0)),
            Setup::Tcplife => Some((self.start_libbpf_tool("tcplife")?, 0)),
            Setup::Tcpstates => Some((self.start_libbpf_tool("tcpstates")?, 0)),
            Setup::SsPoll => {
                let child = Command::new("sh")
                    .args(["-c", "while :; do ss -tanp > /dev/null; sleep 1; done"])
                    .spawn()
                    .context("starting the ss loop")?;
                Some((Guard(child, "ss loop"), 0))
            }
        })
    }

    /// bpftrace printing every state change to a file, once it says it has attached.
    fn start_bpftrace(&self) -> Result<Guard> {
        let log = self.work.join("bpftrace.out");
        let child = Command::new("bpftrace")
            .args(["-e", BPFTRACE_SCRIPT])
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        let g = Guard(child, "bpftrace");
        wait_until("bpftrace", ATTACH_TIMEOUT, || {
            std::fs::read_to_string(&log).is_ok_and(|s| s.contains("Attaching"))
        })?;
        Ok(g)
    }

    /// A libbpf-tools tracer (`tcplife`, `tcpstates`) as an SRE runs it, its default output
    /// (every event) going to a file, once its program is attached to the tracepoint. Its output
    /// is block-buffered, so attachment is read from the kernel rather than from its first line.
    fn start_libbpf_tool(&self, tool: &'static str) -> Result<Guard> {
        let err = self.work.join(format!("{tool}.err"));
        let child = Command::new(tool)
            .stdout(std::fs::File::create(self.work.join(format!("{tool}.out")))?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .with_context(|| format!("starting {tool} (libbpf-tools)"))?;
        let mut g = Guard(child, tool);
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            if let Some(status) = g.0.try_wait()? {
                let log = std::fs::read_to_string(&err).unwrap_or_default();
                bail!("{tool} exited ({status}) before attaching: {}", log.trim());
            }
            if tracepoint_attached(g.pid())? {
                return Ok(g);
            }
            ensure!(Instant::now() < deadline, "{tool} did not attach its program within {ATTACH_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
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
    pub(super) fn wrk(&self, url: &str, workload: Workload, seconds: u64) -> Result<f64> {
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

    /// wrk running in the background for at most `seconds` (stopped when the guard drops).
    pub(super) fn spawn_wrk(&self, url: &str, workload: Workload, seconds: u64) -> Result<Guard> {
        let child = Self::load_command(url, workload, seconds)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wrk")?;
        Ok(Guard(child, "wrk"))
    }
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
}
