//! The daemon's configuration file (TOML). Flags override it; it overrides the defaults.
//!
//! ```toml
//! [close_wait]
//! floor = 10            # CLOSE_WAIT counts at or below this are never a leak
//! max_age_seconds = 30  # a count above the floor whose oldest socket is this old is a leak
//! window_seconds = 10   # sampling window of the trend
//! rising_windows = 3    # ... a count above the floor rising this many windows in a row is a leak
//! ```

use std::path::Path;

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

/// Thresholds given as flags, each overriding the file's value when set.
#[derive(Clone, Debug, Default)]
pub struct CloseWaitFlags {
    pub floor: Option<u64>,
    pub max_age_seconds: Option<u64>,
    pub window_seconds: Option<u64>,
    pub rising_windows: Option<usize>,
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
            c.rising_windows = v;
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
