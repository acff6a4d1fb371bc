//! Exact comparisons of the daemon's documents with what the helpers did, polled until they
//! hold or a generous deadline passes (the figures arrive asynchronously: ring buffer drains,
//! TIME_WAIT reconciliation, the flush of open connections' counters).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::Daemon;

/// How long a figure may take to reach its expected value (slow under an emulated CPU).
pub const WAIT: Duration = Duration::from_secs(30);

/// Retry `attempt` until it succeeds or [`WAIT`] passes; the last complaint on timeout.
pub fn until(mut attempt: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = attempt();
        if r.is_ok() {
            return r;
        }
        if Instant::now() >= deadline {
            return r.map_err(|e| format!("still after {} s: {e}", WAIT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Which side of a process document an entry is on.
#[derive(Clone, Copy)]
pub enum Side {
    /// `outbound`, keyed by `remote`.
    Out,
    /// `inbound`, keyed by `local`.
    In,
}

impl Side {
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Side::Out => ("outbound", "remote"),
            Side::In => ("inbound", "local"),
        }
    }
}

/// The entry of `doc` for `endpoint`, if any.
pub fn entry<'a>(doc: &'a Value, side: Side, endpoint: &str) -> Option<&'a Value> {
    let (list, key) = side.fields();
    doc[list].as_array()?.iter().find(|e| e[key] == endpoint)
}

/// A number at a dotted path (`sockets.TIME_WAIT`).
pub fn number(v: &Value, path: &str) -> Option<u64> {
    path.split('.').try_fold(v, |v, k| v.get(k))?.as_u64()
}

/// Every `(path, want)` that `v` gets wrong, or `Ok`.
pub fn compare(v: &Value, wants: &[(&str, u64)]) -> Result<(), String> {
    let wrong: Vec<String> = wants
        .iter()
        .filter_map(|&(path, want)| {
            let got = number(v, path);
            (got != Some(want))
                .then(|| format!("{path} = {}, want {want}", got.map_or("missing".into(), |g| g.to_string())))
        })
        .collect();
    if wrong.is_empty() { Ok(()) } else { Err(wrong.join(", ")) }
}

/// One check of pid's entry for `endpoint` against `wants`; the complaint quotes the entry (or
/// the whole document when the entry is missing).
pub fn check_entry(d: &Daemon, pid: u32, side: Side, endpoint: &str, wants: &[(&str, u64)]) -> Result<(), String> {
    let doc = d
        .process(pid)
        .map_err(|e| format!("{e:#}"))?
        .ok_or_else(|| format!("pid {pid}: 404 (no TCP activity seen)"))?;
    let (list, _) = side.fields();
    let e = entry(&doc, side, endpoint).ok_or_else(|| format!("pid {pid} has no {list} entry {endpoint}: {doc}"))?;
    compare(e, wants).map_err(|m| format!("pid {pid} {list} {endpoint}: {m}; entry: {e}"))
}

/// [`check_entry`], polled.
pub fn wait_entry(d: &Daemon, pid: u32, side: Side, endpoint: &str, wants: &[(&str, u64)]) -> Result<(), String> {
    until(|| check_entry(d, pid, side, endpoint, wants))
}
