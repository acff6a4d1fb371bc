//! The targets section: each target, what was measured, and whether it was met; targets a run
//! did not measure are carried from the earlier run.

use std::fmt::Write as _;

use super::section_text;
use crate::bench::interleaved::Summary;
use crate::bench::scale::Scale;
use crate::bench::stats::WorkloadResult;
use crate::bench::{Setup, Workload};

/// (target, measured, met).
type Row = (String, String, bool);

/// The targets and whether each was met.
/// The throughput targets are judged on the interleaved measurement when it ran (the rounds'
/// ratios otherwise, marked as such).
pub(in crate::bench) fn targets_markdown(
    keep: Option<&WorkloadResult>,
    close: Option<&WorkloadResult>,
    interleaved: &[(Workload, Summary)],
    scale: Option<&Scale>,
) -> String {
    let mut rows = throughput_rows(keep, close, interleaved);
    for r in [keep, close].into_iter().flatten() {
        let (prog, worst) = r.cost.max_ns_per_run();
        rows.push((
            format!("{}: at most 300 ns per run for every program", r.workload.name()),
            format!("{worst:.0} ns ({prog})"),
            worst <= 300.0,
        ));
    }
    if let Some(r) = close {
        rows.push(("zero lost events at connection per request".into(), r.events_lost.to_string(), r.events_lost == 0));
    }
    if let Some(s) = scale {
        rows.extend(scale_rows(s));
    }
    let mut md = String::from("| target | measured | met |\n| --- | ---: | :---: |\n");
    for (t, m, ok) in rows {
        let _ = writeln!(md, "| {t} | {m} | {} |", if ok { "yes" } else { "**no**" });
    }
    md
}

fn throughput_rows(
    keep: Option<&WorkloadResult>,
    close: Option<&WorkloadResult>,
    interleaved: &[(Workload, Summary)],
) -> Vec<Row> {
    let mut rows = Vec::new();
    for workload in [Workload::KeepAlive, Workload::ConnectionClose] {
        let what = format!("{}: at least {:.2} of the no-tracer throughput", workload.name(), workload.target());
        let rounds = [keep, close].into_iter().flatten().find(|r| r.workload == workload);
        if let Some((_, s)) = interleaved.iter().find(|(w, _)| *w == workload) {
            let measured = format!("{:.3} ({:.3} - {:.3}, interleaved)", s.median, s.median_low, s.median_high);
            rows.push((what, measured, s.median >= workload.target()));
        } else if let Some(r) = rounds {
            let ratio = r.ratio(Setup::Observer).unwrap_or(0.0);
            rows.push((what, format!("{ratio:.3} (rounds)"), ratio >= workload.target()));
        }
    }
    rows
}

fn scale_rows(s: &Scale) -> Vec<Row> {
    let idle = s.idle_rss_kib as f64 / 1024.0;
    let loaded = s.loaded_rss_kib as f64 / 1024.0;
    vec![
        ("daemon RSS at idle at most 50 MB".into(), format!("{idle:.1} MiB"), idle * 1.048576 <= 50.0),
        (
            format!("daemon RSS with {} connections at most 150 MB", s.connections),
            format!("{loaded:.1} MiB"),
            loaded * 1.048576 <= 150.0,
        ),
        ("API p99 under 10 ms".into(), format!("{:.2} ms", s.api_p99_ms), s.api_p99_ms < 10.0),
    ]
}

/// The targets table `new` (as [`targets_markdown`] writes it), followed by the rows of the
/// targets section of `old_results` (docs/benchmarks.md) for targets this run did not measure,
/// marked as from an earlier run: a run of one case does not drop the other targets.
pub(in crate::bench) fn carry_target_rows(old_results: &str, new: &str) -> String {
    let rows = |text: &str| -> Vec<(String, String)> {
        text.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| target |") && !l.starts_with("| ---"))
            .filter_map(|l| l.split(" | ").next().map(|k| (k.trim_start_matches("| ").to_string(), l.to_string())))
            .collect()
    };
    let old_section = section_text(old_results, "targets").unwrap_or("");
    let measured: Vec<String> = rows(new).into_iter().map(|(k, _)| k).collect();
    let mut md = new.to_string();
    for (key, line) in rows(old_section) {
        if measured.contains(&key) {
            continue;
        }
        let mut cells: Vec<String> = line.split(" | ").map(str::to_string).collect();
        if cells.len() == 3 && !cells[1].ends_with("(earlier run)") {
            cells[1].push_str(" (earlier run)");
        }
        md.push_str(&cells.join(" | "));
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_run_keeps_the_targets_it_did_not_measure() {
        let old = "x\n<!-- case:targets -->\n## Targets\n\n| target | measured | met |\n| --- | ---: | :---: |\n\
                   | keep-alive: ratio | 0.900 (rounds) | **no** |\n| API p99 under 10 ms | 2.14 ms | yes |\n\
                   <!-- /case:targets -->\n";
        let new = "| target | measured | met |\n| --- | ---: | :---: |\n| keep-alive: ratio | 0.949 (interleaved) | **no** |\n";
        let md = carry_target_rows(old, new);
        assert_eq!(
            md,
            "| target | measured | met |\n| --- | ---: | :---: |\n| keep-alive: ratio | 0.949 (interleaved) | **no** |\n\
             | API p99 under 10 ms | 2.14 ms (earlier run) | yes |\n"
        );
        // Carried twice, marked once; nothing to carry without an old section.
        let again = carry_target_rows(&format!("<!-- case:targets -->\n{md}<!-- /case:targets -->"), new);
        assert_eq!(again, md);
        assert_eq!(carry_target_rows("", new), new);
    }
}
