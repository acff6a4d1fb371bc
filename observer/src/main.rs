//! observer: per-process TCP connection health from the kernel, without touching the
//! monitored applications.

mod api;
mod cli;
mod clock;
mod config;
mod daemon;
mod host;
mod kernel;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

const DEFAULT_API: &str = "http://127.0.0.1:9645";

#[derive(Parser)]
#[command(
    name = "observer",
    version,
    about = "Per-process TCP connection health from the kernel (eBPF), without touching the monitored applications",
    long_about = "observer traces TCP state changes in the kernel and charges every socket to the process that owns it. \
The daemon serves, per process and per peer: live sockets by state (TIME_WAIT and CLOSE_WAIT included), \
connections opened and who closed them, connect failures by reason and resets, as JSON and as Prometheus metrics.",
    after_help = "Examples:
  observer daemon                      observe the whole host, API on 127.0.0.1:9645 (root)
  observer processes                   every process with TCP activity
  observer pid 4242                    one process at a glance
  observer pid 4242 --json             the same as the API's JSON document
  curl -s localhost:9645/metrics       Prometheus metrics

API reference: docs/api.md and docs/openapi.json."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    fn filter(self) -> log::LevelFilter {
        match self {
            Level::Error => log::LevelFilter::Error,
            Level::Warn => log::LevelFilter::Warn,
            Level::Info => log::LevelFilter::Info,
            Level::Debug => log::LevelFilter::Debug,
            Level::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: load the kernel programs and serve the API (needs root, or CAP_BPF and CAP_PERFMON).
    Daemon {
        /// Address and port of the HTTP API (JSON, /metrics, /healthz). The API has no
        /// authentication: anything beyond loopback exposes per-process data to whoever can
        /// reach it (see "Access" in docs/api.md).
        #[arg(long, default_value = "127.0.0.1:9645", env = "OBSERVER_LISTEN")]
        listen: SocketAddr,
        /// Log level. At debug and trace the kernel programs' own diagnostics are logged too.
        #[arg(long, value_enum, default_value = "info", env = "OBSERVER_LOG_LEVEL")]
        log_level: Level,
        /// How long an exited process stays in the API and metrics before it is pruned, in seconds.
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        exited_retention: u64,
        /// Size of the kernel-to-daemon ring buffer in MiB (a power of two).
        #[arg(long, default_value_t = 4, value_parser = parse_ring_mib)]
        ring_buffer_mib: u32,
        /// How often TIME_WAIT is reconciled with the kernel's socket table, in seconds (at most:
        /// a pass over a large table is followed by a pause of 100 times its length).
        #[arg(long, default_value_t = 2, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        reconcile_interval: u64,
        /// How often requests and bytes of open connections are read from the kernel, in
        /// seconds (closed connections report theirs at once).
        #[arg(long, default_value_t = 5, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        io_flush_interval: u64,
        /// Per-peer metric series per process: the first N peers of a process get their own,
        /// the others are folded into peer="other" (the JSON API always has every peer).
        #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        metrics_peers_per_process: u64,
        /// Sockets the kernel side can track at once (its table is preallocated: about 145 bytes
        /// each with its overflow map, 18 MiB at the default). Sockets beyond it are not tracked and are counted in
        /// observer_socket_storage_failures_total.
        #[arg(long, default_value_t = 131072, value_name = "N", value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
        max_sockets: u32,
        /// Do not look for TLS handshakes (the first bytes of each new connection are then never
        /// read).
        #[arg(long)]
        no_tls: bool,
        /// `cargo xtask bench` only: also attach calibration programs to sock_send_length (one
        /// does nothing, the others one operation each), the floor and price list of the per-run
        /// figures.
        #[arg(long, hide = true)]
        bench_calibration: bool,
        /// `cargo xtask bench` only: attach empty programs to observer's three hooks instead of
        /// observer's own (nothing is observed).
        #[arg(long, hide = true)]
        bench_floor: bool,
        /// `cargo xtask bench` only: observer's programs keep the socket table but queue no
        /// records, and state changes are not handled exactly once (nothing is reported): the
        /// least a tracer that records each socket's owner costs.
        #[arg(long, hide = true, conflicts_with = "bench_floor")]
        bench_table_only: bool,
        /// `cargo xtask bench` only: observer's programs write their records to a per-CPU region
        /// of a shared array that nobody reads instead of the ring buffer (nothing is reported):
        /// the least observer's records cost with the cheapest write.
        #[arg(long, hide = true, conflicts_with_all = ["bench_floor", "bench_table_only"])]
        bench_region_records: bool,
        /// `cargo xtask bench` only: SIGUSR1 detaches the kernel programs, SIGUSR2 attaches them
        /// again (each logged at warn level once done).
        #[arg(long, hide = true)]
        bench_toggle: bool,
        /// Configuration file (TOML; see docs/api.md, "Configuration"). Flags override it.
        #[arg(long, value_name = "FILE", env = "OBSERVER_CONFIG")]
        config: Option<std::path::PathBuf>,
        /// CLOSE_WAIT counts at or below this, per process and peer, are never a leak
        /// [default: 10].
        #[arg(long, value_name = "N")]
        close_wait_floor: Option<u64>,
        /// A CLOSE_WAIT count above the floor whose oldest socket is this old is a leak
        /// [default: 30].
        #[arg(long, value_name = "SECONDS")]
        close_wait_max_age: Option<u64>,
        /// Sampling window of the CLOSE_WAIT trend [default: 10].
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        close_wait_window: Option<u64>,
        /// A CLOSE_WAIT count above the floor that rose this many windows in a row is a leak
        /// [default: 3].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..100))]
        close_wait_rising_windows: Option<u64>,
    },
    /// Show one process from a running daemon: sockets by state, peers, failures, resets.
    Pid {
        /// The process id.
        pid: u32,
        /// The daemon's API.
        #[arg(long, default_value = DEFAULT_API, env = "OBSERVER_API")]
        api: String,
        /// Print the raw JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the processes a running daemon has seen.
    Processes {
        /// The daemon's API.
        #[arg(long, default_value = DEFAULT_API, env = "OBSERVER_API")]
        api: String,
        /// Print the raw JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v == 0 || !v.is_power_of_two() || v > 1024 {
        return Err("must be a power of two between 1 and 1024".into());
    }
    Ok(v)
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Daemon {
            listen,
            log_level,
            exited_retention,
            ring_buffer_mib,
            reconcile_interval,
            io_flush_interval,
            config,
            metrics_peers_per_process,
            no_tls,
            bench_calibration,
            bench_floor,
            bench_table_only,
            bench_region_records,
            bench_toggle,
            max_sockets,
            close_wait_floor,
            close_wait_max_age,
            close_wait_window,
            close_wait_rising_windows,
        } => {
            let mut logger = env_logger::Builder::new();
            logger.filter_level(log_level.filter()).format_target(false);
            if !matches!(log_level, Level::Trace) {
                // aya's loader is very chatty at debug level.
                logger.filter_module("aya", log::LevelFilter::Info).filter_module("aya_obj", log::LevelFilter::Info);
            }
            logger.init();
            let kernel_log_level = match log_level {
                Level::Debug => 4,
                Level::Trace => 5,
                _ => 2, // kernel-side warnings only: off the hot paths
            };
            let file = match config.as_deref().map(config::load).transpose() {
                Ok(f) => f.unwrap_or_default(),
                Err(e) => {
                    eprintln!("observer: {e:#}");
                    std::process::exit(1);
                }
            };
            let close_wait = config::CloseWaitFlags {
                floor: close_wait_floor,
                max_age_seconds: close_wait_max_age,
                window_seconds: close_wait_window,
                rising_windows: close_wait_rising_windows.map(|v| v as usize),
            }
            .apply(file.close_wait);
            log::info!("CLOSE_WAIT leak thresholds: {close_wait:?}");
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(daemon::run(daemon::DaemonOptions {
                        listen,
                        exited_retention: Duration::from_secs(exited_retention),
                        ring_buffer_bytes: ring_buffer_mib << 20,
                        kernel_log_level,
                        reconcile_interval: Duration::from_secs(reconcile_interval),
                        io_flush_interval: Duration::from_secs(io_flush_interval),
                        close_wait,
                        metrics_peers_per_process: metrics_peers_per_process as usize,
                        tls: !no_tls,
                        bench_calibration,
                        bench_floor,
                        bench_table_only,
                        bench_region_records,
                        bench_toggle,
                        max_sockets,
                    }))
                })
        }
        Command::Pid { pid, api, json } => cli::pid(&api, pid, json),
        Command::Processes { api, json } => cli::processes(&api, json),
    };
    if let Err(e) = result {
        eprintln!("observer: {e:#}");
        std::process::exit(1);
    }
}
