//! Horizontal bars, one per labelled value (on a log axis), as an SVG.

use plotters::prelude::*;
use std::error::Error;
use std::path::Path;

#[path = "palette.rs"]
mod palette;
use palette::COLORS;

/// A bar: its label, its value, and the group that picks its colour.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub group: usize,
}

/// Writes the bars to `path` atomically (a temporary file, then a rename).
pub fn write_svg(path: &Path, title: &str, axis: &str, bars: &[Bar]) -> Result<(), Box<dyn Error>> {
    let max = bars.iter().map(|b| b.value).fold(0f64, f64::max);
    let min = bars.iter().map(|b| b.value).fold(f64::INFINITY, f64::min);
    if bars.is_empty() || !(min > 0.0 && max.is_finite()) {
        return Err("nothing to plot".into());
    }
    let mut svg = String::new();
    {
        let height = 80 + 26 * bars.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(220)
            .build_cartesian_2d(
                (min / 2.0..max * 2.0).log_scale(),
                (0..bars.len()).into_segmented(),
            )?;
        chart
            .configure_mesh()
            .x_desc(axis)
            .x_labels(6)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_labels(bars.len())
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => {
                    bars.get(*i).map(|b| b.label.clone()).unwrap_or_default()
                }
                _ => String::new(),
            })
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            let color = COLORS[b.group % COLORS.len()].filled();
            let mut bar = Rectangle::new(
                [
                    (min / 2.0, SegmentValue::Exact(i)),
                    (b.value, SegmentValue::Exact(i + 1)),
                ],
                color,
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))?;
        root.present()?;
    }
    let tmp = path.with_extension(format!("svg.{}.tmp", std::process::id()));
    std::fs::write(&tmp, svg)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
