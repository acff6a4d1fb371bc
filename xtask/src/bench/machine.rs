//! What the bench reads of the machine: the CPUs' and processes' times and memory in /proc,
//! and the kernel programs' run statistics (bpftool).

use std::collections::HashMap;
use std::process::Command;

use anyhow::{Context as _, Result, anyhow};

pub(super) fn set_bpf_stats(on: bool) -> Result<()> {
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if on { "1" } else { "0" })
        .context("writing kernel.bpf_stats_enabled")
}

/// (runs, run time ns) per program name, from bpftool.
pub(super) fn prog_stats() -> Result<HashMap<String, (u64, u64)>> {
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

/// A program's runs and run time (ns) between two [`prog_stats`] readings.
pub(super) fn stats_delta(
    from: &HashMap<String, (u64, u64)>,
    to: &HashMap<String, (u64, u64)>,
    name: &str,
) -> (u64, u64) {
    let (c0, t0) = from.get(name).copied().unwrap_or((0, 0));
    let (c1, t1) = to.get(name).copied().unwrap_or((0, 0));
    (c1.saturating_sub(c0), t1.saturating_sub(t0))
}

/// (busy, total) clock ticks of each CPU since boot: the `cpuN` lines of `/proc/stat`.
pub(super) fn cpu_times() -> Result<Vec<(u64, u64)>> {
    Ok(parse_cpu_times(&std::fs::read_to_string("/proc/stat")?))
}

/// Busy is everything but idle and iowait (user, nice, system, irq, softirq, steal).
fn parse_cpu_times(stat: &str) -> Vec<(u64, u64)> {
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
pub(super) fn busy_fractions(from: &[(u64, u64)], to: &[(u64, u64)]) -> Vec<f64> {
    from.iter()
        .zip(to)
        .map(|((b0, t0), (b1, t1))| if t1 > t0 { (b1 - b0) as f64 / (t1 - t0) as f64 } else { 0.0 })
        .collect()
}

/// User and system CPU seconds of process `pid` so far.
pub(super) fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// A memory figure (`VmRSS`, `VmHWM`...) of process `pid`, in KiB.
pub(super) fn process_status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {key}"))
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
}
