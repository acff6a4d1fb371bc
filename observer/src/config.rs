//! The daemon's configuration: its flags (one type, from clap to the kernel programs) and its
//! file (TOML). Flags override the file; the file overrides the defaults.
//!
//! ```toml
//! [close_wait]
//! floor = 10            # CLOSE_WAIT counts at or below this are never a leak
//! max_age_seconds = 30  # a count above the floor whose oldest socket is this old is a leak
//! window_seconds = 10   # sampling window of the trend
//! rising_windows = 3    # ... a count above the floor rising this many windows in a row is a leak
//!
//! [diagnosis]
//! hold_seconds = 600    # any threshold of the findings (see docs/diagnosis.md)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Deserialize;

use observer_core::closewait::CloseWaitConfig;
use observer_core::diagnosis::Thresholds;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub close_wait: CloseWaitConfig,
    pub diagnosis: Thresholds,
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
    /// A threshold of the findings, as KEY=VALUE (repeatable; keys and defaults in
    /// docs/diagnosis.md, e.g. --threshold hold_seconds=300). Overrides the file's
    /// [diagnosis] section.
    #[arg(long = "threshold", value_name = "KEY=VALUE")]
    pub thresholds: Vec<String>,
}

/// The findings' thresholds: the file's, then each `KEY=VALUE` flag over them, checked.
pub fn thresholds(file: &Thresholds, flags: &[String]) -> Result<Thresholds> {
    let mut table = toml::Table::try_from(file).context("the [diagnosis] thresholds")?;
    for flag in flags {
        let (key, value) = flag
            .split_once('=')
            .with_context(|| format!("--threshold {flag:?}: expected KEY=VALUE, e.g. hold_seconds=300"))?;
        let key = key.trim();
        let Some(old) = table.get(key) else {
            let keys: Vec<&str> = table.keys().map(String::as_str).collect();
            anyhow::bail!("--threshold {flag:?}: no threshold {key:?}; the thresholds are {}", keys.join(", "));
        };
        let value: toml::Value = match old {
            toml::Value::Float(_) => value.trim().parse::<f64>().map(toml::Value::Float).ok(),
            _ => value.trim().parse::<i64>().map(toml::Value::Integer).ok(),
        }
        .with_context(|| format!("--threshold {flag:?}: {:?} is not a number of the right kind", value.trim()))?;
        table.insert(key.to_string(), value);
    }
    let t: Thresholds = table.try_into().context("the thresholds")?;
    t.validate().map_err(|e| anyhow::anyhow!("threshold {e}"))?;
    Ok(t)
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
    fn threshold_flags_override_the_file() {
        let f = parse("[diagnosis]\nhold_seconds = 300\nmin_connections = 5\n").unwrap();
        let t = thresholds(&f.diagnosis, &["min_connections=50".into(), "time_wait_max_share=0.25".into()]).unwrap();
        assert_eq!((t.hold_seconds, t.min_connections, t.time_wait_max_share), (300, 50, 0.25));
        assert_eq!(t.stale_min_resets, Thresholds::default().stale_min_resets);
        let f64_as_int = thresholds(&Thresholds::default(), &["connect_burst_gap_seconds=3".into()]).unwrap();
        assert_eq!(f64_as_int.connect_burst_gap_seconds, 3.0);
    }

    #[test]
    fn bad_threshold_flags_say_why() {
        let t = Thresholds::default();
        let e = |flag: &str| format!("{:#}", thresholds(&t, &[flag.to_string()]).unwrap_err());
        assert!(e("hold").contains("KEY=VALUE"));
        assert!(e("hold_second=3").contains("the thresholds are"), "{}", e("hold_second=3"));
        assert!(e("hold_seconds=soon").contains("not a number"));
        assert!(e("hold_seconds=1.5").contains("not a number"));
        assert!(e("time_wait_max_share=2").contains("at most 1"), "{}", e("time_wait_max_share=2"));
        assert!(parse("[diagnosis]\nhold = 3\n").is_err(), "typos in the file too");
    }

    #[test]
    fn typos_are_errors() {
        let e = parse("[close_wait]\nflor = 25\n").unwrap_err();
        assert!(format!("{e:#}").contains("flor"), "{e:#}");
        assert!(parse("[closewait]\n").is_err());
        assert!(parse("[close_wait]\nfloor = \"ten\"\n").is_err());
    }
}
