//! The bench example's plot: GFLOP/s against matrix size, one line per backend, both axes
//! logarithmic (sizes double; backends differ by orders of magnitude), as an SVG.

use plotters::prelude::*;
use std::error::Error;
use std::path::Path;

#[path = "palette.rs"]
mod palette;
use palette::COLORS;

/// One backend's measurements: (n, GFLOP/s).
pub struct Line {
    pub label: String,
    pub points: Vec<(usize, f64)>,
}

/// Writes the plot to `path` atomically (a temporary file, then a rename).
pub fn write_svg(path: &Path, title: &str, lines: &[Line]) -> Result<(), Box<dyn Error>> {
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let (n_min, n_max) = all().fold((usize::MAX, 0), |(lo, hi), &(n, _)| (lo.min(n), hi.max(n)));
    let (g_min, g_max) = all().fold((f64::INFINITY, 0.0f64), |(lo, hi), &(_, g)| {
        (lo.min(g), hi.max(g))
    });
    if lines.is_empty() || n_max == 0 || g_max.is_nan() || g_max <= 0.0 {
        return Err("nothing to plot".into());
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_range = (n_min as f64 / 1.3)..(n_max as f64 * 1.3);
        let y_range = (g_min.max(1e-3) / 2.0)..(g_max * 2.0);
        // Ticks at the measured sizes, and at 1-2-5 steps of GFLOP/s.
        let mut sizes: Vec<f64> = all().map(|&(n, _)| n as f64).collect();
        sizes.sort_by(f64::total_cmp);
        sizes.dedup();
        let decades = (y_range.start.log10().floor() as i32)..=(y_range.end.log10().ceil() as i32);
        let y_ticks: Vec<f64> = decades
            .flat_map(|d| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(d)))
            .filter(|y| y_range.contains(y))
            .collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                x_range.log_scale().with_key_points(sizes),
                y_range.log_scale().with_key_points(y_ticks),
            )?;
        chart
            .configure_mesh()
            .x_desc("matrix size n (C = A B, n x n, f32)")
            .y_desc("GFLOP/s (median)")
            .light_line_style(WHITE)
            .x_label_formatter(&|x| format!("{:.0}", x))
            .y_label_formatter(&|y| {
                if *y >= 1.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.2}")
                }
            })
            .draw()?;
        for (i, line) in lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()].to_rgba();
            let points: Vec<(f64, f64)> = line.points.iter().map(|&(n, g)| (n as f64, g)).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(line.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
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
