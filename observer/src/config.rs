//! The daemon's configuration: its flags (one type, from clap to the kernel programs) and its
//! file (TOML). Flags override the file; the file overrides the defaults.
//!
//! ```toml
//! [close_wait]
//! floor = 10            # CLOSE_WAIT counts at or below this are never a leak
//! max_age_seconds = 30  # a count above the floor whose oldest socket is this old is a leak
//! window_seconds = 10   # sampling window of the trend
//! rising_windows = 3    # ... a count above the floor rising this many windows in a row is a leak
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Deserialize;

use observer_core::closewait::CloseWaitConfig;

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub close_wait: CloseWaitConfig,
}

pub fn parse(text: &str) -> Result<FileConfig> {
    Ok(toml::from_str(text)?)
}

pub fn load(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("in {}", path.display()))
}

/// The flags of `observer daemon`.
#[derive(clap::Args, Clone, Debug)]
pub struct DaemonOptions {
    /// Address and port of the HTTP API (JSON, /metrics, /healthz). The API has no
    /// authentication: anything beyond loopback exposes per-process data to whoever can
    /// reach it (see "Access" in docs/configuration.md).
    #[arg(long, default_value = "127.0.0.1:9645", env = "OBSERVER_LISTEN")]
    pub listen: SocketAddr,
    /// Log level. At debug and trace the kernel programs' own diagnostics are logged too.
    #[arg(long, value_enum, default_value = "info", env = "OBSERVER_LOG_LEVEL")]
    pub log_level: Level,
    /// How long an exited process stays in the API and metrics before it is pruned, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub exited_retention: u64,
    /// How often TIME_WAIT is reconciled with the kernel's socket table, in seconds (at most:
    /// a pass over a large table is followed by a pause of 100 times its length).
    #[arg(long, default_value_t = 2, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_interval: u64,
    /// How often requests and bytes of open connections are read from the kernel, in
    /// seconds (closed connections report theirs at once).
    #[arg(long, default_value_t = 5, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub io_flush_interval: u64,
    /// Per-peer metric series per process: the first N peers of a process get their own,
    /// the others are folded into peer="other" (the JSON API always has every peer).
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_peers_per_process: u64,
    #[command(flatten)]
    pub kernel: crate::kernel::Options,
    /// Configuration file (TOML; see docs/configuration.md). Flags override it.
    #[arg(long, value_name = "FILE", env = "OBSERVER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub close_wait: CloseWaitFlags,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            Level::Error => log::LevelFilter::Error,
            Level::Warn => log::LevelFilter::Warn,
            Level::Info => log::LevelFilter::Info,
            Level::Debug => log::LevelFilter::Debug,
            Level::Trace => log::LevelFilter::Trace,
        }
    }

    /// The kernel programs' aya-log level: warnings only (off the hot paths) but at debug and
    /// trace.
    pub fn kernel(self) -> u8 {
        match self {
            Level::Debug => 4,
            Level::Trace => 5,
            _ => 2,
        }
    }
}

/// CLOSE_WAIT thresholds given as flags, each overriding the file's value when set.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CloseWaitFlags {
    /// CLOSE_WAIT counts at or below this, per process and peer, are never a leak
    /// [default: 10].
    #[arg(long = "close-wait-floor", value_name = "N")]
    pub floor: Option<u64>,
    /// A CLOSE_WAIT count above the floor whose oldest socket is this old is a leak
    /// [default: 30].
    #[arg(long = "close-wait-max-age", value_name = "SECONDS")]
    pub max_age_seconds: Option<u64>,
    /// Sampling window of the CLOSE_WAIT trend [default: 10].
    #[arg(long = "close-wait-window", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub window_seconds: Option<u64>,
    /// A CLOSE_WAIT count above the floor that rose this many windows in a row is a leak
    /// [default: 3].
    #[arg(long = "close-wait-rising-windows", value_name = "N", value_parser = clap::value_parser!(u64).range(1..100))]
    pub rising_windows: Option<u64>,
}

impl CloseWaitFlags {
    pub fn apply(&self, mut c: CloseWaitConfig) -> CloseWaitConfig {
        if let Some(v) = self.floor {
            c.floor = v;
        }
        if let Some(v) = self.max_age_seconds {
            c.max_age_seconds = v;
        }
        if let Some(v) = self.window_seconds {
            c.window_seconds = v;
        }
        if let Some(v) = self.rising_windows {
            c.rising_windows = v as usize;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults_and_flags_win() {
        assert_eq!(parse("").unwrap(), FileConfig::default());
        let f = parse("[close_wait]\nfloor = 25\nmax_age_seconds = 120\n").unwrap();
        assert_eq!(f.close_wait.floor, 25);
        assert_eq!(f.close_wait.max_age_seconds, 120);
        assert_eq!(f.close_wait.window_seconds, 10, "unset keys keep their default");
        let flags = CloseWaitFlags { floor: Some(40), ..CloseWaitFlags::default() };
        let c = flags.apply(f.close_wait);
        assert_eq!((c.floor, c.max_age_seconds), (40, 120));
    }

    #[test]
    fn typos_are_errors() {
        let e = parse("[close_wait]\nflor = 25\n").unwrap_err();
        assert!(format!("{e:#}").contains("flor"), "{e:#}");
        assert!(parse("[closewait]\n").is_err());
        assert!(parse("[close_wait]\nfloor = \"ten\"\n").is_err());
    }
}
