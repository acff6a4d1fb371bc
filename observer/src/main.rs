//! observer: per-process TCP connection health from the kernel, without touching the
//! monitored applications.

mod api;
mod cli;
mod clock;
mod config;
mod daemon;
mod host;
mod kernel;

use clap::{Parser, Subcommand};

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
  observer explain 4242                its connection-pool problems, their numbers and fixes
  curl -s localhost:9645/metrics       Prometheus metrics

API reference: docs/api.md and docs/openapi.json; metrics: docs/metrics.md; flags and
configuration file: docs/configuration.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: load the kernel programs and serve the API (needs root, or CAP_BPF and CAP_PERFMON).
    Daemon(config::DaemonOptions),
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
    /// Explain what is wrong with one process's connections: each failure pattern found, the
    /// numbers behind it and the fix, most severe first.
    Explain {
        /// The process id.
        pid: u32,
        /// The daemon's API.
        #[arg(long, default_value = DEFAULT_API, env = "OBSERVER_API")]
        api: String,
        /// Print the raw JSON document instead of text.
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

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Daemon(opts) => run_daemon(opts),
        Command::Pid { pid, api, json } => cli::pid(&api, pid, json),
        Command::Explain { pid, api, json } => cli::explain(&api, pid, json),
        Command::Processes { api, json } => cli::processes(&api, json),
    };
    if let Err(e) = result {
        eprintln!("observer: {e:#}");
        std::process::exit(1);
    }
}

/// Log set-up, the configuration file, then the daemon on a two-thread runtime.
fn run_daemon(mut opts: config::DaemonOptions) -> anyhow::Result<()> {
    let mut logger = env_logger::Builder::new();
    logger.filter_level(opts.log_level.filter()).format_target(false);
    if !matches!(opts.log_level, config::Level::Trace) {
        // aya's loader is very chatty at debug level.
        logger.filter_module("aya", log::LevelFilter::Info).filter_module("aya_obj", log::LevelFilter::Info);
    }
    logger.init();
    opts.kernel.kernel_log_level = opts.log_level.kernel();
    let file = opts.config.as_deref().map(config::load).transpose()?.unwrap_or_default();
    let close_wait = opts.close_wait.apply(file.close_wait);
    log::info!("CLOSE_WAIT leak thresholds: {close_wait:?}");
    let thresholds = config::thresholds(&file.diagnosis, &opts.thresholds)?;
    log::info!("diagnosis thresholds: {thresholds:?}");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(daemon::run(opts, close_wait, thresholds))
}
