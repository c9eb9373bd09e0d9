//! One SVG chart per shape (feature `charts`, which builds plotters): served/s, refusals/s and
//! the p99 of the successes over time, ballast beside admission turned off.

use std::path::Path;

use super::report::Slice;

/// What a panel plots of a slice.
type Value = fn(&Slice) -> f64;

/// The three panels: a title and what each plots.
const PANELS: [(&str, Value); 3] = [
    ("served per second", |slice| slice.served_per_second),
    ("refused per second (503)", |slice| slice.refused_per_second),
    ("p99 of successes (s)", |slice| slice.ok_p99),
];

/// Writes `path`: `ballast` and `baseline` over time.
#[cfg(feature = "charts")]
pub(crate) fn write(
    path: &Path,
    title: &str,
    ballast: &[Slice],
    baseline: &[Slice],
) -> Result<(), String> {
    use plotters::prelude::*;

    let failed = |error: &dyn std::fmt::Display| format!("{}: {error}", path.display());
    let root = SVGBackend::new(path, (960, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| failed(&e))?;
    let x_max = ballast
        .iter()
        .chain(baseline)
        .map(|slice| slice.at)
        .fold(1.0, f64::max);
    for (area, (name, value)) in root.split_evenly((3, 1)).iter().zip(PANELS) {
        let y_max = ballast
            .iter()
            .chain(baseline)
            .map(value)
            .fold(0.0, f64::max)
            .max(1e-3)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .caption(name, ("sans-serif", 16))
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| failed(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .draw()
            .map_err(|e| failed(&e))?;
        for (label, slices, color) in [
            ("ballast (default)", ballast, BLUE),
            ("admission off", baseline, RED),
        ] {
            chart
                .draw_series(LineSeries::new(
                    slices.iter().map(|slice| (slice.at, value(slice))),
                    color.stroke_width(2),
                ))
                .map_err(|e| failed(&e))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| failed(&e))?;
    }
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

/// Without the `charts` feature: nothing is drawn.
#[cfg(not(feature = "charts"))]
pub(crate) fn write(_: &Path, _: &str, _: &[Slice], _: &[Slice]) -> Result<(), String> {
    let _ = PANELS;
    Ok(())
}
