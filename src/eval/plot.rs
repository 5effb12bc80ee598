//! The report's PNG plots, drawn with plotters into an RGB buffer (`crate::draw`: the
//! embedded font, the PNG writer).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::metrics::Roc;
use super::{Detail, Run};

/// The colour of the n-th run (the model, then what it is compared with).
fn colour(n: usize) -> RGBColor {
    [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
    ][n % 3]
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn render(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&Area) -> Result<(), String>,
) -> Result<(), String> {
    crate::draw::register_font();
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&area)?;
        area.present().map_err(|e| e.to_string())?;
    }
    let image = crate::draw::Rgb {
        width: w,
        height: h,
        pixels: buf,
    };
    image.write_png(path).map_err(|e| e.to_string())
}

fn e<E: std::fmt::Display>(err: E) -> String {
    err.to_string()
}

/// Image-level ROC curves, one panel per label, one curve per run.
pub fn roc(path: &Path, runs: &[Run]) -> Result<(), String> {
    let labels = runs[0].labels.len();
    let (w, h) = (420 * labels as u32, 440);
    render(path, (w, h), |area| {
        for (k, panel) in area.split_evenly((1, labels)).iter().enumerate() {
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("ROC: {}", runs[0].labels[k]), ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(48)
                .build_cartesian_2d(0.0..1.0, 0.0..1.0)
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc("1 - specificity")
                .y_desc("sensitivity")
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(e)?;
            chart
                .draw_series(LineSeries::new(
                    [(0.0, 0.0), (1.0, 1.0)],
                    RGBColor(180, 180, 180),
                ))
                .map_err(e)?;
            for (n, run) in runs.iter().enumerate() {
                let (truth, scores) = run.label_scores(k);
                let Some(curve) = Roc::new(&truth, &scores) else {
                    continue;
                };
                let style = colour(n).stroke_width(2);
                chart
                    .draw_series(LineSeries::new(curve.points.iter().copied(), style))
                    .map_err(e)?
                    .label(format!("{} AUC {:.3}", run.file, curve.auc()))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(e)?;
        }
        Ok(())
    })
}

/// Bars of `values` in `bins` equal bins over `range`: the count per bin.
fn bin(values: &[f64], range: (f64, f64), bins: usize) -> Vec<usize> {
    let mut counts = vec![0; bins];
    for &v in values {
        let t = ((v - range.0) / (range.1 - range.0) * bins as f64).floor();
        counts[(t.max(0.0) as usize).min(bins - 1)] += 1;
    }
    counts
}

/// Draws histograms (one per series, side by side within each bin).
fn histogram(
    panel: &Area,
    title: &str,
    x_desc: &str,
    range: (f64, f64),
    series: &[(String, Vec<f64>, RGBColor)],
) -> Result<(), String> {
    const BINS: usize = 20;
    let counts: Vec<Vec<usize>> = series.iter().map(|s| bin(&s.1, range, BINS)).collect();
    let top = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let mut chart = ChartBuilder::on(panel)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(48)
        .build_cartesian_2d(range.0..range.1, 0.0..top as f64 * 1.1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("images")
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(e)?;
    let width = (range.1 - range.0) / BINS as f64;
    let part = width / series.len().max(1) as f64;
    for (n, (name, _, colour)) in series.iter().enumerate() {
        let colour = *colour;
        chart
            .draw_series(
                counts[n]
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(b, &c)| {
                        let x0 = range.0 + b as f64 * width + n as f64 * part;
                        Rectangle::new([(x0, 0.0), (x0 + part * 0.95, c as f64)], colour.filled())
                    }),
            )
            .map_err(e)?
            .label(format!("{name} (n = {})", series[n].1.len()))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)
}

/// Per label, the image-level scores of the images with and without it (the first run).
pub fn scores(path: &Path, run: &Run) -> Result<(), String> {
    let labels = run.labels.len();
    render(path, (420 * labels as u32, 400), |area| {
        for (k, panel) in area.split_evenly((1, labels)).iter().enumerate() {
            let (truth, scores) = run.label_scores(k);
            let pick = |want: bool| -> Vec<f64> {
                truth
                    .iter()
                    .zip(&scores)
                    .filter(|(t, _)| **t == want)
                    .map(|(_, s)| *s)
                    .collect()
            };
            let top = scores.iter().copied().fold(1e-9, f64::max);
            let range = (0.0, if top <= 1.0 { 1.0 } else { top });
            histogram(
                panel,
                &format!("{}: score by truth", run.labels[k]),
                "score",
                range,
                &[
                    ("with".into(), pick(true), RGBColor(214, 39, 40)),
                    ("without".into(), pick(false), RGBColor(31, 119, 180)),
                ],
            )?;
        }
        Ok(())
    })
}

/// Per label, the distribution of per-image Dice over the images where it is defined, one
/// series per run.
pub fn dice(path: &Path, runs: &[Run]) -> Result<(), String> {
    let labels = runs[0].labels.len();
    render(path, (420 * labels as u32, 400), |area| {
        for (k, panel) in area.split_evenly((1, labels)).iter().enumerate() {
            let series: Vec<(String, Vec<f64>, RGBColor)> = runs
                .iter()
                .enumerate()
                .map(|(n, run)| {
                    let v = run
                        .images
                        .iter()
                        .filter_map(|r| match &r.detail {
                            Detail::Segmentation { overlaps, .. } => overlaps[k].dice(),
                            _ => None,
                        })
                        .collect();
                    (run.file.clone(), v, colour(n))
                })
                .collect();
            histogram(
                panel,
                &format!("{}: Dice per image", runs[0].labels[k]),
                "Dice",
                (0.0, 1.0),
                &series,
            )?;
        }
        Ok(())
    })
}
