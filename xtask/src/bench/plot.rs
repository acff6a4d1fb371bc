//! docs/benchmarks.png: a bar chart of the throughput ratios, per workload and setup.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::Setup;
use super::stats::WorkloadResult;

/// The font the plot's text is drawn with (Debian's fonts-dejavu-core).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// A colour per setup, in the order of the setups.
const COLORS: [RGBColor; 6] = [
    RGBColor(80, 80, 80),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

/// The top of the ratio axis: room above the bars for the legend.
const Y_MAX: f64 = 1.5;

type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

/// The plot of `results`, a group of bars per workload and a bar per setup, written to `path`.
pub(super) fn plot(path: &Path, results: &[&WorkloadResult], setups: &[Setup]) -> Result<()> {
    let font = std::fs::read(FONT).with_context(|| format!("the plot needs {FONT} (fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow!("registering the font"))?;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = (results.len() * (setups.len() + 1)) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("Throughput with a tracer / without (median of paired rounds)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(60)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n, 0f64..Y_MAX)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("ratio")
        .x_labels(2)
        .x_label_formatter(&|_| String::new())
        .draw()
        .map_err(err)?;
    draw_bars(&mut chart, results, setups)?;
    draw_legend(&mut chart, setups)?;
    // Workload names under their groups.
    for (wi, r) in results.iter().enumerate() {
        let (x, y) = chart.backend_coord(&((wi * (setups.len() + 1)) as f64 + 0.5, 0.0));
        root.draw(&Text::new(r.workload.name().to_string(), (x, y + 12), ("sans-serif", 16))).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// A bar per workload and setup, its ratio written above it.
fn draw_bars(chart: &mut Chart<'_, '_>, results: &[&WorkloadResult], setups: &[Setup]) -> Result<()> {
    for (wi, r) in results.iter().enumerate() {
        let x0 = (wi * (setups.len() + 1)) as f64 + 0.5;
        for (si, s) in setups.iter().enumerate() {
            let Some(v) = r.ratio(*s) else { continue };
            let x = x0 + si as f64;
            let color = COLORS[si % COLORS.len()];
            chart
                .draw_series(std::iter::once(Rectangle::new([(x, 0.0), (x + 0.9, v)], color.filled())))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(format!("{v:.2}"), (x + 0.2, v + 0.04), ("sans-serif", 13))))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// The setups' names and colours, above the bars.
fn draw_legend<'a>(chart: &mut Chart<'a, 'a>, setups: &[Setup]) -> Result<()> {
    for (si, s) in setups.iter().enumerate() {
        let c = COLORS[si % COLORS.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new([(0.0, 0.0), (0.0, 0.0)], c.filled())))
            .map_err(err)?
            .label(s.name().replace('`', ""))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    Ok(())
}
