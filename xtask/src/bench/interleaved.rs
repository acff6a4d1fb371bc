//! The interleaved measurement of observer against no tracer: one load run, one daemon, its
//! kernel programs attached and detached in short alternating windows.
//!
//! Why: on this kind of virtual machine the no-tracer throughput alone moves by 10 to 15% from
//! one second to the next, at every time scale tried (0.25 s to 2 s windows), so a few rounds of
//! seconds each cannot tell a 3% cost from none. Many short windows, each compared with its
//! neighbour, can: the error of the median shrinks with the square root of the number of pairs.
//!
//! What a window measures: nginx's own request counter (`stub_status`) over the window, while
//! wrk runs without pause. In an "observer" window the daemon runs and its programs are attached;
//! in a "no tracer" window its programs are detached and the daemon is stopped (SIGSTOP), so that
//! neither the kernel nor the daemon spends anything on the traffic. Switching (a signal, the
//! daemon's acknowledgement, then [`SETTLE`]) is outside every window.
//!
//! The error leans against observer: the daemon's periodic work (draining every 20 ms,
//! housekeeping every second, the TIME_WAIT reconciliation) keeps its wall-clock schedule, so
//! whatever falls due while it is stopped runs in the next "observer" window.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};

use super::running::{free_port, local_url, nginx_requests, signal, status_field};
use super::{Bench, Workload};

/// Length of one window.
const WINDOW: Duration = Duration::from_millis(500);
/// Pause between a switch and the start of the next window.
const SETTLE: Duration = Duration::from_millis(100);
/// Pairs of windows (one with observer, one without) per workload by default.
pub const DEFAULT_PAIRS: usize = 100;

/// What the daemon attaches in an interleaved measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Programs {
    /// Its own programs, as in production.
    Observer,
    /// Its own programs, queueing no records, and only the first of the two on state
    /// changes (`--bench-table-only`): what keeping the socket table alone costs, the least any
    /// tracer that records each socket's owner pays (without even handling every state change
    /// exactly once).
    TableOnly,
    /// Its own programs, all of them, writing their records to a per-CPU region of a shared
    /// array that nobody reads instead of the ring buffer (`--bench-region-records`): what
    /// observer's records would cost with the cheapest write this machine prices, and without
    /// the daemon reading them.
    RegionRecords,
    /// Empty programs on the same three hooks (`--bench-floor`): what any tracer of these events
    /// costs at least.
    Floor,
}

impl Programs {
    /// The daemon's flags for it.
    fn daemon_args(self) -> &'static [&'static str] {
        match self {
            Programs::Observer => &["--bench-toggle"],
            Programs::TableOnly => &["--bench-toggle", "--bench-table-only"],
            Programs::RegionRecords => &["--bench-toggle", "--bench-region-records"],
            Programs::Floor => &["--bench-toggle", "--bench-floor"],
        }
    }

    /// How the bench's progress lines name it (after the workload).
    pub fn label(self) -> &'static str {
        match self {
            Programs::Observer => "",
            Programs::TableOnly => " (socket table only)",
            Programs::RegionRecords => " (records in per-CPU regions)",
            Programs::Floor => " (empty programs)",
        }
    }
}

/// Switches a daemon started with `--bench-toggle` between running with its programs attached
/// and stopped with them detached.
struct Toggle {
    pid: u32,
    /// The daemon's log, where it acknowledges each switch.
    log: PathBuf,
    acks: usize,
    stopped: bool,
}

impl Toggle {
    fn set(&mut self, attached: bool) -> Result<()> {
        if self.stopped {
            signal(self.pid, "CONT")?;
            self.stopped = false;
        }
        signal(self.pid, if attached { "USR2" } else { "USR1" })?;
        self.acks += 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(e) = log.lines().find(|l| l.contains("bench toggle:") && l.contains("ERROR")) {
                bail!("the daemon could not switch its programs: {e}");
            }
            if log.matches("bench toggle: kernel programs").count() >= self.acks {
                break;
            }
            ensure!(Instant::now() < deadline, "the daemon did not acknowledge a switch within 10 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        if !attached {
            signal(self.pid, "STOP")?;
            self.stopped = true;
        }
        Ok(())
    }
}

impl Drop for Toggle {
    fn drop(&mut self) {
        // A stopped daemon would not see the SIGTERM its guard sends.
        if self.stopped {
            let _ = signal(self.pid, "CONT");
        }
    }
}

impl Bench {
    /// Observer against no tracer in alternating windows of one load run: `pairs` pairs, the
    /// order within each pair alternating, with the daemon's programs as `programs` says.
    pub(super) fn interleaved(&self, workload: Workload, pairs: usize, programs: Programs) -> Result<(Vec<Pair>, u64)> {
        let port = free_port()?;
        let _nginx = self.start_nginx(port, 4096)?;
        let url = local_url(port);
        self.wrk(&url, workload, 2)?; // warm-up
        let log = self.work.join("observer-toggle.log");
        let (daemon, api) = self.start_observer_logging(programs.daemon_args(), Some(&log))?;
        let mut toggle = Toggle { pid: daemon.pid(), log, acks: 0, stopped: false };
        // Generously bounded: the windows, the switches, and a margin.
        let per_window = WINDOW + SETTLE + Duration::from_millis(400);
        let seconds = (per_window * 2 * pairs as u32).as_secs() + 10;
        let load_ends = Instant::now() + Duration::from_secs(seconds);
        let load = self.spawn_wrk(&url, workload, seconds)?;
        std::thread::sleep(Duration::from_secs(1));
        let mut measured = Vec::with_capacity(pairs);
        for i in 0..pairs {
            // Every window must lie within the load run.
            ensure!(
                Instant::now() + per_window * 2 < load_ends,
                "the interleaved measurement overran its {seconds} s load run after {i} pairs"
            );
            measured.push(measure_pair(&mut toggle, port, i % 2 == 0)?);
        }
        toggle.set(true)?;
        drop(load);
        let events_lost = status_field(api, "events_lost").unwrap_or(0);
        if let Some(s) = Summary::of(&measured) {
            eprintln!(
                "xtask: {} interleaved{}: {:.3} ({:.3} - {:.3}) over {} pairs",
                workload.name(),
                programs.label(),
                s.median,
                s.median_low,
                s.median_high,
                s.pairs
            );
        }
        Ok((measured, events_lost))
    }
}

/// One pair of windows, the one without observer first when `without_first`.
fn measure_pair(toggle: &mut Toggle, port: u16, without_first: bool) -> Result<Pair> {
    let mut window = |with: bool| -> Result<f64> {
        toggle.set(with)?;
        std::thread::sleep(SETTLE);
        let (n0, t0) = nginx_requests(port)?;
        std::thread::sleep(WINDOW);
        let (n1, t1) = nginx_requests(port)?;
        // The second read is one of the requests counted.
        Ok(n1.saturating_sub(n0 + 1) as f64 / (t1 - t0).as_secs_f64())
    };
    Ok(if without_first {
        let without = window(false)?;
        Pair { without, with: window(true)? }
    } else {
        let with = window(true)?;
        Pair { with, without: window(false)? }
    })
}

/// How the interleaved section measures, before its results.
pub(super) fn method_markdown() -> String {
    format!(
        "The same daemon (`--bench-toggle`) under one continuous wrk run, its programs attached and detached in \
         alternating windows of {} ms (detached: the daemon stopped too), {} ms after each switch; nginx's \
         request counter over each window. A pair is a window with observer and the next without (or the \
         reverse, alternately); the ratio is the median of the pairs' ratios. Why: see \
         xtask/src/bench/interleaved.rs.\n\n",
        WINDOW.as_millis(),
        SETTLE.as_millis(),
    )
}

/// The two windows of one pair, in requests per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Pair {
    pub without: f64,
    pub with: f64,
}

/// The ratios of many pairs, summarised.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Summary {
    pub pairs: usize,
    /// Median of the per-pair ratios (with / without): the figure targets are judged on.
    pub median: f64,
    /// 95% confidence interval of that median (distribution-free, from the order statistics of
    /// the ratios: the binomial ranks around n/2).
    pub median_low: f64,
    pub median_high: f64,
    /// Median no-tracer throughput.
    pub baseline_rps: f64,
}

impl Summary {
    pub fn of(pairs: &[Pair]) -> Option<Summary> {
        if pairs.is_empty() {
            return None;
        }
        let mut ratios: Vec<f64> = pairs.iter().map(|p| p.with / p.without).collect();
        ratios.sort_by(|a, b| a.total_cmp(b));
        let mut base: Vec<f64> = pairs.iter().map(|p| p.without).collect();
        base.sort_by(|a, b| a.total_cmp(b));
        let n = ratios.len();
        // Ranks n/2 -+ 1.96 sqrt(n)/2 (normal approximation of Binomial(n, 1/2)).
        let half = 1.96 * (n as f64).sqrt() / 2.0;
        let lo = ((n as f64 / 2.0 - half).floor().max(0.0) as usize).min(n - 1);
        let hi = ((n as f64 / 2.0 + half).ceil() as usize).min(n - 1);
        Some(Summary {
            pairs: n,
            median: middle(&ratios),
            median_low: ratios[lo],
            median_high: ratios[hi],
            baseline_rps: middle(&base),
        })
    }

    /// Whether the measurement shows the target met, missed, or cannot tell.
    pub fn verdict(&self, target: f64) -> &'static str {
        if self.median_low >= target {
            "met"
        } else if self.median_high < target {
            "missed"
        } else if self.median >= target {
            "met (the interval reaches below)"
        } else {
            "missed (the interval reaches above)"
        }
    }
}

fn middle(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

/// Requests served so far, from nginx's `stub_status` page
/// ("server accepts handled requests\n 3 3 7").
pub(super) fn parse_stub_status(page: &str) -> Option<u64> {
    let mut lines = page.lines();
    lines.find(|l| l.trim_start().starts_with("server accepts handled requests"))?;
    lines.next()?.split_whitespace().nth(2)?.parse().ok()
}

/// Markdown for one workload's interleaved measurement.
pub(super) fn markdown(workload: &str, wrk: &str, s: &Summary, target: f64, events_lost: u64) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "- **{workload}**: {:.3} of the no-tracer throughput (95% interval of the median {:.3} - {:.3}; {} pairs \
         of windows; no tracer {:.0} req/s). Target at least {target:.2}: **{}**. Events the daemon lost: \
         {events_lost}. Load: `{wrk}`.",
        s.median,
        s.median_low,
        s.median_high,
        s.pairs,
        s.baseline_rps,
        s.verdict(target),
    );
    md
}

/// Markdown for the same measurement with empty programs on observer's hooks: what the hooks
/// alone take, and what that leaves of the target's budget.
pub(super) fn floor_markdown(f: &Summary, target: f64) -> String {
    let budget = (1.0 - target) * 100.0;
    let share = if f.median >= 1.0 {
        "no cost this measurement can see".to_string()
    } else {
        format!("of the {budget:.0}% the target allows, the hooks alone take {:.1} points", (1.0 - f.median) * 100.0)
    };
    format!(
        "  - Empty programs on the same three hooks (`--bench-floor`, the least any tracer of these events \
         costs): {:.3} ({:.3} - {:.3}, {} pairs): {share}.\n",
        f.median, f.median_low, f.median_high, f.pairs,
    )
}

/// Markdown for the same measurement with observer's programs keeping the socket table but
/// reporting nothing (`--bench-table-only`): the least observer's design can cost.
pub(super) fn table_only_markdown(t: &Summary, target: f64) -> String {
    let budget = (1.0 - target) * 100.0;
    let taken = (1.0 - t.median) * 100.0;
    let share = if t.median >= 1.0 {
        "no cost this measurement can see".to_string()
    } else if t.median < target {
        format!("below the target before observer reports anything (the table alone takes {taken:.1} points)")
    } else {
        format!(
            "of the {budget:.0}% the target allows, the table alone takes {taken:.1} points, leaving {:.1} for what \
             observer reports and for handling every state change exactly once",
            budget - taken
        )
    };
    format!(
        "  - Observer's programs keeping the socket table but queueing no records, the state change's \
         program alone (`--bench-table-only`: nothing reported, state changes not handled exactly once; the \
         least a tracer that records each socket's owner costs): {:.3} ({:.3} - {:.3}, {} pairs): {share}.\n",
        t.median, t.median_low, t.median_high, t.pairs,
    )
}

/// Markdown for the same measurement with observer's programs writing their records to per-CPU
/// regions that nobody reads instead of the ring buffer (`--bench-region-records`): the least
/// observer's reports can cost, set against observer as it is (`observer`) and the target.
pub(super) fn region_records_markdown(r: &Summary, observer: &Summary, target: f64) -> String {
    let gain = (r.median - observer.median) * 100.0;
    let verdict = if r.median < target {
        format!(
            "{gain:+.1} points against the ring buffer, and still below the target: no transport of these \
             records reaches it here"
        )
    } else {
        format!("{gain:+.1} points against the ring buffer, at or above the target before the daemon reads anything")
    };
    format!(
        "  - Observer's programs, all of them, writing their records with the cheapest write this machine \
         prices (a plain write in the CPU's region of a shared array, read by nobody) instead of a \
         ring-buffer reservation (`--bench-region-records`: every state change handled exactly once, the \
         daemon's reading of the records left out; the least observer's records cost in any transport): \
         {:.3} ({:.3} - {:.3}, {} pairs): {verdict}.\n",
        r.median, r.median_low, r.median_high, r.pairs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(ratios: &[f64]) -> Vec<Pair> {
        ratios.iter().map(|r| Pair { without: 1000.0, with: 1000.0 * r }).collect()
    }

    #[test]
    fn the_median_and_its_interval_come_from_the_ratios_order() {
        // 100 ratios 0.900, 0.901, ... 0.999: median 0.9495; ranks 50 -+ 9.8 -> 40 and 60.
        let r: Vec<f64> = (0..100).map(|i| 0.9 + i as f64 / 1000.0).collect();
        let s = Summary::of(&pairs(&r)).unwrap();
        assert_eq!(s.pairs, 100);
        assert!((s.median - 0.9495).abs() < 1e-9, "{}", s.median);
        assert!((s.median_low - 0.940).abs() < 1e-9, "{}", s.median_low);
        assert!((s.median_high - 0.960).abs() < 1e-9, "{}", s.median_high);
        assert_eq!(s.baseline_rps, 1000.0);
        assert_eq!(s.verdict(0.95), "missed (the interval reaches above)");
        assert_eq!(s.verdict(0.94), "met");
        assert_eq!(s.verdict(0.97), "missed");
        assert_eq!(s.verdict(0.945), "met (the interval reaches below)");
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn the_floor_is_set_against_the_targets_budget() {
        let f = Summary::of(&pairs(&[0.97, 0.98, 0.99])).unwrap();
        let md = floor_markdown(&f, 0.95);
        assert!(
            md.contains(
                ": 0.980 (0.970 - 0.990, 3 pairs): of the 5% the target allows, the hooks alone take 2.0 points."
            ),
            "{md}"
        );
        let free = Summary::of(&pairs(&[1.0, 1.01, 1.02])).unwrap();
        assert!(floor_markdown(&free, 0.95).contains("3 pairs): no cost this measurement can see."));
    }

    #[test]
    fn the_region_records_bound_is_set_against_observer_and_the_target() {
        let observer = Summary::of(&pairs(&[0.84, 0.85, 0.86])).unwrap();
        let below = Summary::of(&pairs(&[0.88, 0.89, 0.90])).unwrap();
        let md = region_records_markdown(&below, &observer, 0.95);
        assert!(
            md.contains(
                ": 0.890 (0.880 - 0.900, 3 pairs): +4.0 points against the ring buffer, and still below the \
                 target: no transport of these records reaches it here."
            ),
            "{md}"
        );
        let above = Summary::of(&pairs(&[0.95, 0.96, 0.97])).unwrap();
        let md = region_records_markdown(&above, &observer, 0.95);
        assert!(md.contains("3 pairs): +11.0 points against the ring buffer, at or above the target before"), "{md}");
    }

    #[test]
    fn the_table_only_bound_is_set_against_the_targets_budget() {
        let below = Summary::of(&pairs(&[0.93, 0.94, 0.945])).unwrap();
        let md = table_only_markdown(&below, 0.95);
        assert!(
            md.contains(
                ": 0.940 (0.930 - 0.945, 3 pairs): below the target before observer reports anything (the \
                         table alone takes 6.0 points)."
            ),
            "{md}"
        );
        let within = Summary::of(&pairs(&[0.96, 0.97, 0.98])).unwrap();
        let md = table_only_markdown(&within, 0.95);
        assert!(md.contains("of the 5% the target allows, the table alone takes 3.0 points, leaving 2.0 for"), "{md}");
        let free = Summary::of(&pairs(&[1.0, 1.01, 1.02])).unwrap();
        assert!(table_only_markdown(&free, 0.95).contains("3 pairs): no cost this measurement can see."));
    }

    #[test]
    fn one_pair_is_its_own_interval() {
        let s = Summary::of(&pairs(&[0.98])).unwrap();
        assert_eq!((s.median, s.median_low, s.median_high), (0.98, 0.98, 0.98));
    }

    #[test]
    fn reads_nginx_stub_status() {
        let page = "Active connections: 21 \nserver accepts handled requests\n 1203 1203 88213 \nReading: 0 \
                    Writing: 1 Waiting: 20 \n";
        assert_eq!(parse_stub_status(page), Some(88213));
        assert_eq!(parse_stub_status("not a status page"), None);
    }
}
