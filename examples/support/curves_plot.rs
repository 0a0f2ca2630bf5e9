//! A plot of curves on linear axes (a metric by epoch, one line per run), as an SVG.

use plotters::prelude::*;
use std::error::Error;
use std::path::Path;

#[path = "palette.rs"]
mod palette;
use palette::COLORS;

pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Writes the plot to `path` atomically (a temporary file, then a rename).
pub fn write_svg(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    curves: &[Curve],
) -> Result<(), Box<dyn Error>> {
    let all = || curves.iter().flat_map(|c| c.points.iter());
    let (x_min, x_max) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(x, _)| {
        (lo.min(x), hi.max(x))
    });
    let (y_min, y_max) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, y)| {
        (lo.min(y), hi.max(y))
    });
    if !(x_min.is_finite() && y_min.is_finite() && x_max.is_finite() && y_max.is_finite()) {
        return Err("nothing to plot".into());
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x_min..x_max.max(x_min + 1.0), (y_min - pad)..(y_max + pad))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .light_line_style(WHITE)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .draw()?;
        for (i, curve) in curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()].to_rgba();
            chart
                .draw_series(LineSeries::new(curve.points.clone(), color.stroke_width(2)))?
                .label(curve.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(
                curve
                    .points
                    .iter()
                    .map(|&p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    let tmp = path.with_extension(format!("svg.{}.tmp", std::process::id()));
    std::fs::write(&tmp, svg)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
