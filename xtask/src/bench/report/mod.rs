//! What the bench writes: the sections of docs/benchmarks.md (each between its case's markers,
//! the text around them kept as it is), the README's overhead table, and the markdown of each
//! case's results.

mod readme;
mod rounds;
mod targets;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Result, ensure};

use super::Bench;
use super::scale::{API_CALLS, Scale};

pub(super) use rounds::{reuse_markdown, workload_markdown};
pub(super) use targets::{carry_target_rows, targets_markdown};

/// The results, relative to the workspace root.
const RESULTS_PATH: &str = "docs/benchmarks.md";
/// The plot of the throughput ratios.
pub(super) const PLOT_PATH: &str = "docs/benchmarks.png";

/// The sections of docs/benchmarks.md: (case, heading).
const SECTIONS: &[(&str, &str)] = &[
    ("targets", "Targets"),
    ("reuse", "Keep-alive reuse: observer against no tracer (`cargo xtask bench reuse`)"),
    ("keepalive", "Keep-alive (`cargo xtask bench keepalive`)"),
    ("close", "Connection per request (`cargo xtask bench close`)"),
    ("interleaved", "Observer against no tracer, interleaved (`cargo xtask bench interleaved`)"),
    ("profile", "Where the cost goes: perf samples (`cargo xtask bench profile`)"),
    ("scale", "Scale: 10,000 connections (`cargo xtask bench scale`)"),
];

/// The start of docs/benchmarks.md when the bench creates it.
const HEADER: &str = "# observer benchmarks\n\nWritten by `cargo xtask bench` (see the README's \"Overhead\" \
                      section). Each section is replaced when its case runs again.\n";

impl Bench {
    /// docs/benchmarks.md.
    pub(super) fn results_path(&self) -> PathBuf {
        self.root.join(RESULTS_PATH)
    }

    /// Replace (or add) one section of docs/benchmarks.md, keeping everything else.
    pub(super) fn write_section(&self, name: &str, body: &str) -> Result<PathBuf> {
        ensure!(SECTIONS.iter().any(|(case, _)| *case == name), "no section {name} in {RESULTS_PATH}'s layout");
        let path = self.results_path();
        std::fs::create_dir_all(path.parent().expect("docs/"))?;
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let stamp = format!("_{}._\n\n", stamp());
        std::fs::write(&path, merge_sections(&old, name, &format!("{stamp}{body}")))?;
        Ok(path)
    }
}

fn markers(case: &str) -> (String, String) {
    (format!("<!-- case:{case} -->"), format!("<!-- /case:{case} -->"))
}

/// The text of section `case` of docs/benchmarks.md, between its markers (its heading included).
fn section_text<'a>(results: &'a str, case: &str) -> Option<&'a str> {
    let (begin, end) = markers(case);
    let (b, e) = (results.find(&begin)?, results.find(&end)?);
    (b < e).then(|| &results[b + begin.len()..e])
}

/// docs/benchmarks.md (`old`) with the text between section `name`'s markers replaced by its
/// heading and `body`, or the section appended at the end when it has no markers yet: the text
/// outside the markers (hand-written prose) is kept as it is.
fn merge_sections(old: &str, name: &str, body: &str) -> String {
    let heading = SECTIONS.iter().find(|(case, _)| *case == name).map_or(name, |(_, h)| h);
    let inner = format!("\n## {heading}\n\n{}\n", body.trim_end());
    let (begin, end) = markers(name);
    if let (Some(b), Some(e)) = (old.find(&begin), old.find(&end))
        && b < e
    {
        return format!("{}{begin}{inner}{}", &old[..b], &old[e..]);
    }
    let mut md = if old.trim().is_empty() { HEADER.to_string() } else { old.to_string() };
    if !md.ends_with('\n') {
        md.push('\n');
    }
    let _ = write!(md, "\n{begin}{inner}{end}\n");
    md
}

/// "Measured on Linux <version>, <n> CPUs": the machine only; the commit records when.
fn stamp() -> String {
    format!("Measured on {}", machine())
}

/// "Linux 6.18.0, 2 CPUs"
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Linux {}, {cpus} CPUs", kernel.trim())
}

pub(super) fn scale_markdown(s: &Scale) -> String {
    format!(
        "{} established connections held open by one process (a Python client against nginx):\n\n\
         | measure | value |\n| --- | ---: |\n\
         | daemon RSS at idle | {:.1} MiB |\n| daemon RSS with the connections | {:.1} MiB |\n\
         | `GET /api/v1/processes/{{pid}}` p50 | {:.2} ms |\n| p99 | {:.2} ms |\n| max | {:.2} ms |\n\n\
         ({API_CALLS} sequential calls.)\n",
        s.connections,
        s.idle_rss_kib as f64 / 1024.0,
        s.loaded_rss_kib as f64 / 1024.0,
        s.api_p50_ms,
        s.api_p99_ms,
        s.api_max_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place_or_appended() {
        let md = merge_sections("", "scale", "scale body\n");
        assert!(md.starts_with(HEADER), "{md}");
        let md = merge_sections(&md, "reuse", "reuse body\n");
        let md = merge_sections(&md, "scale", "new scale\n");
        assert!(md.contains("reuse body") && md.contains("new scale") && !md.contains("scale body"));
        // Replaced where it was; a new section goes at the end.
        assert!(md.find("new scale").unwrap() < md.find("reuse body").unwrap());
        assert_eq!(md.matches("## Scale").count(), 1);
        assert_eq!(
            section_text(&md, "reuse").map(str::trim),
            Some("## Keep-alive reuse: observer against no tracer (`cargo xtask bench reuse`)\n\nreuse body")
        );
    }

    #[test]
    fn the_text_around_the_sections_is_kept() {
        let old = "# Benchmarks\n\nHand-written intro.\n\n<!-- case:close -->\n## Old\n\nold body\n<!-- /case:close -->\n\n\
                   Prose between.\n\n<!-- case:scale -->\nscale\n<!-- /case:scale -->\nTrailing prose, no newline";
        let md = merge_sections(old, "close", "new body\n");
        let close = "<!-- case:close -->\n## Connection per request (`cargo xtask bench close`)\n\nnew body\n<!-- /case:close -->";
        let expected = old.replace("<!-- case:close -->\n## Old\n\nold body\n<!-- /case:close -->", close);
        assert_eq!(md, expected);
        let md = merge_sections(&md, "profile", "perf\n");
        assert!(md.starts_with(&expected), "{md}");
        assert!(md.ends_with("no newline\n\n<!-- case:profile -->\n## Where the cost goes: perf samples (`cargo xtask bench profile`)\n\nperf\n<!-- /case:profile -->\n"), "{md}");
    }
}
