//! The scale case: many established connections held by one process, the daemon's memory and
//! how long its API takes to describe that process.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::Bench;
use super::machine::process_status_kib;
use super::running::{Guard, free_port, http_get, wait_until};
use super::stats::percentile;

/// Connections held open.
const SCALE_CONNECTIONS: u32 = 10_000;
/// API calls timed.
pub(super) const API_CALLS: usize = 1000;

/// What the scale case measured.
pub(super) struct Scale {
    pub connections: u64,
    pub idle_rss_kib: u64,
    pub loaded_rss_kib: u64,
    pub api_p50_ms: f64,
    pub api_p99_ms: f64,
    pub api_max_ms: f64,
}

/// A Python client opening [`SCALE_CONNECTIONS`] connections to `port` and holding them until
/// its stdin closes.
fn spawn_holder(port: u16) -> Result<Child> {
    let src = format!(
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
    Command::new("python3")
        .args(["-c", &src])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the connection holder")
}

/// [`API_CALLS`] sequential calls of `path`, each one's milliseconds, sorted.
fn time_calls(api: u16, path: &str) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(API_CALLS);
    for _ in 0..API_CALLS {
        let t = Instant::now();
        http_get(api, path)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times)
}

impl Bench {
    /// 10,000 established connections held by one process: the daemon's memory, and how long
    /// the API takes to describe that process.
    pub(super) fn scale(&self) -> Result<Scale> {
        let port = free_port()?;
        let _nginx = self.start_nginx(port, SCALE_CONNECTIONS + 1000)?;
        let (daemon, api) = self.start_observer(&[])?;
        let pid = daemon.pid();
        std::thread::sleep(Duration::from_secs(2));
        let idle_rss_kib = process_status_kib(pid, "VmRSS")?;
        let mut holder = spawn_holder(port)?;
        let holder_pid = holder.id();
        let holder_stdin = holder.stdin.take();
        let guard = Guard::new(holder, "connection holder");
        let path = format!("/api/v1/processes/{holder_pid}");
        let expected = format!("\"ESTABLISHED\":{SCALE_CONNECTIONS}");
        wait_until("10,000 connections", Duration::from_secs(120), || {
            http_get(api, &path).is_ok_and(|b| b.contains(&expected))
        })?;
        std::thread::sleep(Duration::from_secs(2));
        let times = time_calls(api, &path)?;
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
}
