//! Overlays: what the models saw and said about one image, drawn for a human. The image as a
//! viewer shows it (its own VOI, MONOCHROME1 inverted), each segmentation region's outline,
//! each detection box with its label and score, a banner per model (id, version, the labels
//! over threshold with their scores) and the words "decision support — not a diagnosis".
//! `bedside infer --overlay` writes one; the daemon keeps the last one per source for the
//! findings page. Drawn with plotters into a plain RGB buffer (`crate::draw`), no system fonts.

use plotters::prelude::*;

use crate::draw::{self, Rgb};
use crate::finding::Finding;
use crate::model::manifest::{NamedWindow, Task, WindowChoice};
use crate::prepare::DisplayMap;
use crate::source::{Image, Pixels};

/// Colours of labels 0, 1, …: saturated, so that no grey pixel of the image has one.
pub const PALETTE: [(u8, u8, u8); 6] = [
    (255, 214, 0),
    (0, 224, 255),
    (255, 64, 200),
    (64, 255, 96),
    (255, 128, 0),
    (160, 120, 255),
];

/// What every overlay says at its foot.
pub const DISCLAIMER: &str = "decision support \u{2014} not a diagnosis";

#[derive(Debug, thiserror::Error)]
#[error("cannot draw the overlay: {0}")]
pub struct OverlayError(String);

/// The overlay of one frame of the DICOM file `path` with the findings made about it: the
/// frame `frame`, else the first frame with a label over threshold, else the first frame
/// with a finding. Returns the picture and the frame drawn.
pub fn for_file(
    path: &std::path::Path,
    findings: &[Finding],
    frame: Option<u32>,
    max_side: Option<u32>,
) -> Result<(Rgb, u32), OverlayError> {
    let frame = pick_frame(findings, frame);
    let obj = crate::dicom::decode::open_file(path).map_err(|e| OverlayError(e.to_string()))?;
    let image =
        crate::dicom::decode::decode_frame(&obj, frame).map_err(|e| OverlayError(e.to_string()))?;
    let these: Vec<Finding> = findings
        .iter()
        .filter(|f| f.image.frame == frame)
        .cloned()
        .collect();
    Ok((render(&image, &these, max_side)?, frame))
}

/// The frame worth drawing or reporting: `frame` when given, else the first with a label over
/// threshold, else the first with a finding.
pub fn pick_frame(findings: &[Finding], frame: Option<u32>) -> u32 {
    frame
        .or_else(|| {
            findings
                .iter()
                .find(|f| !f.over_threshold.is_empty())
                .map(|f| f.image.frame)
        })
        .or_else(|| findings.first().map(|f| f.image.frame))
        .unwrap_or(0)
}

/// Draws `findings` (all about `image`) over the image. `max_side`: when the image is larger
/// on either side, it is shrunk (area average) to fit, and so is every coordinate; `None`
/// draws at the image's own size.
pub fn render(
    image: &Image,
    findings: &[Finding],
    max_side: Option<u32>,
) -> Result<Rgb, OverlayError> {
    let (rows, cols) = (image.rows.max(1), image.cols.max(1));
    let scale = match max_side {
        Some(m) if rows.max(cols) > m => m as f64 / rows.max(cols) as f64,
        _ => 1.0,
    };
    let w = ((cols as f64 * scale).round() as u32).max(1);
    let h = ((rows as f64 * scale).round() as u32).max(1);
    let map = DisplayMap::new(image, &WindowChoice::Named(NamedWindow::Dicom));
    let mut pixels = shrink(
        &image.pixels,
        &map,
        cols as usize,
        rows as usize,
        w as usize,
        h as usize,
    );
    draw::register_font();
    {
        let area = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        annotate(&area, findings, scale, w, h).map_err(OverlayError)?;
        area.present().map_err(|e| OverlayError(e.to_string()))?;
    }
    Ok(Rgb {
        width: w,
        height: h,
        pixels,
    })
}

/// A `cols` × `rows` image as 8-bit grey RGB of `w` × `h`, displayed by `map` (each output
/// pixel the mean of the display values of the input pixels it covers). No full-size copy:
/// the overlay of a large radiograph costs only its own, bounded, picture.
fn shrink(
    pixels: &Pixels,
    map: &DisplayMap,
    cols: usize,
    rows: usize,
    w: usize,
    h: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; w * h * 3];
    for y in 0..h {
        let (y0, y1) = (y * rows / h, ((y + 1) * rows / h).max(y * rows / h + 1));
        for x in 0..w {
            let (x0, x1) = (x * cols / w, ((x + 1) * cols / w).max(x * cols / w + 1));
            let mut sum = 0.0f32;
            for yy in y0..y1.min(rows) {
                sum += (yy * cols + x0..yy * cols + x1.min(cols))
                    .map(|i| map.pixel(pixels, i))
                    .sum::<f32>();
            }
            let n = ((y1.min(rows) - y0) * (x1.min(cols) - x0)).max(1) as f32;
            let v = (sum / n * 255.0).round().clamp(0.0, 255.0) as u8;
            out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[v, v, v]);
        }
    }
    out
}

fn colour(label: usize) -> RGBColor {
    let (r, g, b) = PALETTE[label % PALETTE.len()];
    RGBColor(r, g, b)
}

fn annotate(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    findings: &[Finding],
    scale: f64,
    w: u32,
    h: u32,
) -> Result<(), String> {
    let e = |err: DrawingAreaErrorKind<_>| err.to_string();
    let size = (h.min(w) as f64 / 28.0).clamp(11.0, 28.0);
    let font = (draw::FAMILY, size).into_font().color(&WHITE);
    let line = (size * 1.3).round() as i32;
    let stroke = ((h.min(w) as f64 / 200.0).round() as u32).clamp(2, 5);
    let at = |v: f64| (v * scale).round() as i32;
    for f in findings {
        let label_index = |name: &str| f.scores.iter().position(|s| s.label == name).unwrap_or(0);
        for region in f.regions.iter().flatten() {
            let c = colour(label_index(&region.label));
            for comp in region.components.iter().flatten() {
                let points: Vec<(i32, i32)> =
                    comp.outline.iter().map(|p| (at(p[0]), at(p[1]))).collect();
                area.draw(&PathElement::new(points, c.stroke_width(stroke)))
                    .map_err(e)?;
                let text = match comp.area_mm2 {
                    Some(a) => format!("{} {a:.0} mm\u{b2}", region.label),
                    None => format!("{} {:.1}%", region.label, comp.fraction * 100.0),
                };
                let (x, y) = (at(comp.bbox[0]), (at(comp.bbox[1]) - line).max(0));
                area.draw(&Text::new(text, (x, y), font.clone().color(&c)))
                    .map_err(e)?;
            }
        }
        for d in f.detections.iter().flatten() {
            let c = colour(label_index(&d.label));
            let (x1, y1, x2, y2) = (at(d.bbox[0]), at(d.bbox[1]), at(d.bbox[2]), at(d.bbox[3]));
            area.draw(&Rectangle::new(
                [(x1, y1), (x2, y2)],
                c.stroke_width(stroke),
            ))
            .map_err(e)?;
            let text = format!("{} {:.2}", d.label, d.score);
            area.draw(&Text::new(
                text,
                (x1, (y1 - line).max(0)),
                font.clone().color(&c),
            ))
            .map_err(e)?;
        }
    }
    // A banner per model at the top, the disclaimer at the foot, on dark bars.
    let banner_h = line * findings.len() as i32 + line / 3;
    area.draw(&Rectangle::new(
        [(0, 0), (w as i32, banner_h)],
        BLACK.mix(0.6).filled(),
    ))
    .map_err(e)?;
    for (i, f) in findings.iter().enumerate() {
        let said = if f.over_threshold.is_empty() {
            "nothing over threshold".to_string()
        } else {
            f.over_threshold
                .iter()
                .map(|l| {
                    let s = f
                        .scores
                        .iter()
                        .find(|s| &s.label == l)
                        .map_or(0.0, |s| s.score);
                    match f.task {
                        Task::Segmentation => format!("{l} {:.1}%", s * 100.0),
                        _ => format!("{l} {s:.2}"),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = format!("{} {}: {said}", f.model.id, f.model.version);
        area.draw(&Text::new(
            text,
            (line / 4, line / 6 + i as i32 * line),
            font.clone(),
        ))
        .map_err(e)?;
    }
    let foot = h as i32 - line - line / 3;
    area.draw(&Rectangle::new(
        [(0, foot), (w as i32, h as i32)],
        BLACK.mix(0.6).filled(),
    ))
    .map_err(e)?;
    let text = format!("{DISCLAIMER} \u{b7} bedside {}", env!("CARGO_PKG_VERSION"));
    area.draw(&Text::new(text, (line / 4, foot + line / 6), font))
        .map_err(e)?;
    Ok(())
}
