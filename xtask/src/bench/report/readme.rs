//! The README's overhead table: between its markers, a row per setup with its throughput ratio
//! at keep-alive and at connection per request, and a line pointing to docs/benchmarks.md.

use std::fmt::Write as _;

use anyhow::Result;

use super::{RESULTS_PATH, machine};
use crate::bench::stats::WorkloadResult;
use crate::bench::{ALL_SETUPS, Bench, Setup};
use crate::step;

const BEGIN: &str = "<!-- overhead-table -->";
const END: &str = "<!-- /overhead-table -->";

impl Bench {
    /// Rewrites the README's overhead table from a run that measured both workloads under every
    /// setup; nothing else of the README.
    pub(in crate::bench) fn update_readme(&self, keep: &WorkloadResult, close: &WorkloadResult) -> Result<()> {
        let path = self.root.join("README.md");
        let readme = std::fs::read_to_string(&path)?;
        match merge_readme(&readme, &overhead_table(keep, close, ALL_SETUPS)) {
            Some(new) => {
                std::fs::write(&path, new)?;
                step("updated the README's overhead table");
            }
            None => step(&format!("warning: README.md has no {BEGIN} ... {END} markers: not updated")),
        }
        Ok(())
    }
}

/// A row per setup: its throughput divided by the no-tracer throughput at keep-alive (`keep`)
/// and at connection per request (`close`); then one line saying how, and where the rest is.
fn overhead_table(keep: &WorkloadResult, close: &WorkloadResult, setups: &[Setup]) -> String {
    let cell = |r: &WorkloadResult, s: Setup| match (s, r.ratio(s)) {
        (Setup::None, _) => format!("1 ({:.0} req/s)", r.median_rps(s)),
        (_, Some(x)) => format!("{x:.3}"),
        (_, None) => "-".to_string(),
    };
    let mut md = String::from("| setup | keep-alive | connection per request |\n| --- | ---: | ---: |\n");
    for s in setups {
        let _ = writeln!(md, "| {} | {} | {} |", s.name(), cell(keep, *s), cell(close, *s));
    }
    let _ = writeln!(
        md,
        "\n_Median of {} paired rounds on {}; every case's figures in [{RESULTS_PATH}]({RESULTS_PATH})._",
        keep.rounds.min(close.rounds),
        machine()
    );
    md
}

/// `readme` with the text between [`BEGIN`] and [`END`] replaced by `body`; None if the markers
/// are missing.
fn merge_readme(readme: &str, body: &str) -> Option<String> {
    let (b, e) = (readme.find(BEGIN)?, readme.find(END)?);
    (b < e).then(|| format!("{}{BEGIN}\n{}\n{}", &readme[..b], body.trim_end(), &readme[e..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Workload;
    use crate::bench::report::rounds::tests::result;

    #[test]
    fn the_readme_table_is_replaced_between_its_markers() {
        let readme = "# x\n## Overhead\nintro\n\n<!-- overhead-table -->\nold\n<!-- /overhead-table -->\n\nafter\n";
        let new = merge_readme(readme, "new table\n").unwrap();
        assert_eq!(
            new,
            "# x\n## Overhead\nintro\n\n<!-- overhead-table -->\nnew table\n<!-- /overhead-table -->\n\nafter\n"
        );
        assert_eq!(merge_readme(&new, "again"), Some(new.replace("new table", "again")));
        assert_eq!(merge_readme("no markers", "t"), None);
    }

    #[test]
    fn the_table_has_a_row_per_setup_and_a_column_per_workload() {
        let keep =
            result(Workload::KeepAlive, &[(Setup::None, vec![100.0, 200.0]), (Setup::Observer, vec![90.0, 200.0])]);
        let close =
            result(Workload::ConnectionClose, &[(Setup::None, vec![10.0, 10.0]), (Setup::Observer, vec![9.0, 8.0])]);
        let t = overhead_table(&keep, &close, &[Setup::None, Setup::Observer, Setup::Tcplife]);
        assert!(
            t.starts_with(
                "| setup | keep-alive | connection per request |\n| --- | ---: | ---: |\n\
                 | no tracer | 1 (150 req/s) | 1 (10 req/s) |\n| observer daemon | 0.950 | 0.850 |\n\
                 | `tcplife` (libbpf-tools) printing each connection | - | - |\n\n_Median of 2 paired rounds on Linux "
            ),
            "{t}"
        );
        assert!(t.ends_with("; every case's figures in [docs/benchmarks.md](docs/benchmarks.md)._\n"), "{t}");
    }
}
