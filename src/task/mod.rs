//! Task decoding: what a model's raw output says about one image. Per-label scores and the
//! labels over threshold for every task; for segmentation the regions each label covers
//! ([`regions`]), for detection the boxes ([`detect`]), placed in the image's pixels and mm.
//! [`crate::finding`] only serialises what this produces. The live pipeline and
//! `bedside eval` use the allocation-free [`score_into`].

pub mod detect;
pub mod regions;

use crate::finding::{Component, Detection, LabelScore, Region, round3};
use crate::model::manifest::{Activation, Label, MAX_LABELS, Manifest, Task};

/// Per-label numbers of one output, without allocation: the score compared with the label's
/// finding threshold, and the peak probability (for segmentation, of the likeliest pixel).
pub type LabelValues = heapless::Vec<f32, MAX_LABELS>;

/// The image a model's output is about: its size (to place regions and boxes in its pixels)
/// and pixel spacing (for mm and mm², when known).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageGeometry {
    pub rows: u32,
    pub cols: u32,
    /// Row and column spacing in mm.
    pub pixel_spacing_mm: Option<[f64; 2]>,
}

impl ImageGeometry {
    fn area_mm2(&self) -> Option<f64> {
        self.pixel_spacing_mm
            .map(|[r, c]| self.rows as f64 * r * self.cols as f64 * c)
    }
}

/// What one output says, ready for a finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub scores: Vec<LabelScore>,
    /// Labels whose score reached their threshold, in manifest order.
    pub over_threshold: Vec<String>,
    /// Segmentation: per label, what it covers and where.
    pub regions: Option<Vec<Region>>,
    /// Detection: the boxes at or over their label's threshold, best first.
    pub detections: Option<Vec<Detection>>,
}

/// Decodes one output of the model `manifest` describes. `output_hw`: the height and width
/// of a segmentation output's mask (`crate::infer::Engine::output_hw`).
pub fn decode(
    manifest: &Manifest,
    outputs: &[f32],
    output_hw: (usize, usize),
    image: &ImageGeometry,
) -> Decoded {
    match manifest.model.task {
        Task::Detection => {
            let (scores, over_threshold, d) = detect::score(outputs, manifest, image);
            Decoded {
                scores,
                over_threshold,
                regions: None,
                detections: Some(d),
            }
        }
        task => {
            let (scores, over_threshold, mut regions) = score(
                task,
                outputs,
                &manifest.labels,
                manifest.output.activation,
                image.area_mm2(),
            );
            if let Some(regions) = &mut regions {
                locate(manifest, outputs, output_hw, image, regions);
            }
            Decoded {
                scores,
                over_threshold,
                regions,
                detections: None,
            }
        }
    }
}

/// Fills each segmentation region's components: the label's mask (pixels counted by
/// [`score_into`]'s rule) cut into connected regions, placed in the image. Nothing when the
/// output is not `labels` masks of `output_hw`.
fn locate(
    manifest: &Manifest,
    outputs: &[f32],
    (h, w): (usize, usize),
    image: &ImageGeometry,
    regions: &mut [Region],
) {
    let labels = &manifest.labels;
    let plane = h * w;
    if plane == 0 || outputs.len() != plane * labels.len() {
        return;
    }
    let spec = manifest.segmentation_spec();
    // Image pixels per mask pixel; coordinates are continuous (0 is the top-left corner of
    // the top-left pixel, as DICOM's SCOORD), so a mask pixel's centre c maps to (c + ½)·s.
    let (sy, sx) = (image.rows as f64 / h as f64, image.cols as f64 / w as f64);
    let round1 = |v: f64| (v * 10.0).round() / 10.0;
    let pixel_mm2 = image.pixel_spacing_mm.map(|[r, c]| sy * r * sx * c);
    let mut mask = vec![false; plane];
    for (c, region) in regions.iter_mut().enumerate() {
        for (i, m) in mask.iter_mut().enumerate() {
            *m = pixel_counts(outputs, labels, manifest.output.activation, plane, c, i);
        }
        let (found, count) = regions::components(&mask, h, w, &spec);
        region.count = Some(count);
        region.components = Some(
            found
                .into_iter()
                .map(|k| Component {
                    area_mm2: pixel_mm2.map(|a| round3(k.area_px as f64 * a)),
                    fraction: k.area_px as f32 / plane as f32,
                    centroid: [
                        round1((k.centroid[1] + 0.5) * sx),
                        round1((k.centroid[0] + 0.5) * sy),
                    ],
                    bbox: [
                        round1(k.bbox[1] as f64 * sx),
                        round1(k.bbox[0] as f64 * sy),
                        round1(k.bbox[3] as f64 * sx),
                        round1(k.bbox[2] as f64 * sy),
                    ],
                    outline: k
                        .outline
                        .iter()
                        .map(|p| [round1((p[1] + 0.5) * sx), round1((p[0] + 0.5) * sy)])
                        .collect(),
                })
                .collect(),
        );
    }
}

/// A segmentation model's masks of one image, at its output's size: per label, the pixels
/// its finding's regions describe ([`regions::kept`]). Kept for the frame a DICOM SEG is
/// made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Masks {
    pub h: usize,
    pub w: usize,
    /// Per label, in manifest order, `h` × `w` row-major.
    pub labels: Vec<Vec<bool>>,
}

impl Masks {
    /// Whether any label covers any pixel.
    pub fn is_empty(&self) -> bool {
        !self.labels.iter().flatten().any(|&p| p)
    }
}

/// The masks of one output of a segmentation model (`None` for other tasks, or an output
/// that is not `labels` masks of `output_hw`).
pub fn masks(manifest: &Manifest, outputs: &[f32], (h, w): (usize, usize)) -> Option<Masks> {
    let labels = &manifest.labels;
    let plane = h * w;
    if manifest.model.task != Task::Segmentation
        || plane == 0
        || outputs.len() != plane * labels.len()
    {
        return None;
    }
    let spec = manifest.segmentation_spec();
    let labels = (0..labels.len())
        .map(|c| {
            let mask: Vec<bool> = (0..plane)
                .map(|i| pixel_counts(outputs, labels, manifest.output.activation, plane, c, i))
                .collect();
            regions::kept(&mask, h, w, &spec)
        })
        .collect();
    Some(Masks { h, w, labels })
}

/// Whether pixel `i` counts for label `c` (probability at or over the label's threshold).
fn pixel_counts(
    outputs: &[f32],
    labels: &[Label],
    activation: Activation,
    plane: usize,
    c: usize,
    i: usize,
) -> bool {
    let t = labels[c].threshold;
    match activation {
        Activation::Sigmoid => {
            let t = t.clamp(1e-7, 1.0 - 1e-7);
            outputs[c * plane + i] >= (t / (1.0 - t)).ln()
        }
        Activation::Softmax => {
            let at = |k: usize| outputs[k * plane + i];
            let max = (0..labels.len()).map(at).fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = (0..labels.len()).map(|k| (at(k) - max).exp()).sum();
            (at(c) - max).exp() / sum >= t
        }
    }
}

/// Scores one output into fixed arrays (nothing allocated): per label, the score compared
/// with its finding threshold and the peak probability.
///
/// Classification: `outputs` are one logit per label. Segmentation: `outputs` are
/// `[labels, h, w]` logits; a pixel counts for a label when its probability reaches the
/// label's `threshold`, and the score is the fraction of pixels that do.
pub fn score_into(
    task: Task,
    outputs: &[f32],
    labels: &[Label],
    activation: Activation,
    scores: &mut LabelValues,
    peaks: &mut LabelValues,
) {
    scores.clear();
    peaks.clear();
    let n = labels.len().min(MAX_LABELS);
    match task {
        Task::Classification => {
            let probs = |i: usize| match activation {
                Activation::Softmax => {
                    let max = outputs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = outputs.iter().map(|v| (v - max).exp()).sum();
                    (outputs[i] - max).exp() / sum
                }
                Activation::Sigmoid => sigmoid(outputs[i]),
            };
            for i in 0..n.min(outputs.len()) {
                let p = probs(i);
                let _ = scores.push(p);
                let _ = peaks.push(p);
            }
        }
        // Detection models are refused for live video (plan::plan_for); images go through
        // [`detect::score`].
        Task::Detection => {}
        Task::Segmentation => {
            let plane = outputs.len() / labels.len().max(1);
            for (c, label) in labels.iter().enumerate().take(n) {
                // The same pixel rule as `pixel_counts` (which the regions use), inlined.
                let (count, peak) = match activation {
                    Activation::Sigmoid => {
                        // p >= t  <=>  logit >= ln(t / (1 - t)): no exp per pixel.
                        let t = label.threshold.clamp(1e-7, 1.0 - 1e-7);
                        let cut = (t / (1.0 - t)).ln();
                        let px = &outputs[c * plane..(c + 1) * plane];
                        let count = px.iter().filter(|&&x| x >= cut).count();
                        let max = px.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        (count, sigmoid(max))
                    }
                    Activation::Softmax => {
                        let (mut count, mut peak) = (0usize, 0.0f32);
                        for i in 0..plane {
                            let at = |k: usize| outputs[k * plane + i];
                            let max = (0..labels.len()).map(at).fold(f32::NEG_INFINITY, f32::max);
                            let sum: f32 = (0..labels.len()).map(|k| (at(k) - max).exp()).sum();
                            let p = (at(c) - max).exp() / sum;
                            count += (p >= label.threshold) as usize;
                            peak = peak.max(p);
                        }
                        (count, peak)
                    }
                };
                let _ = scores.push(count as f32 / plane.max(1) as f32);
                let _ = peaks.push(peak);
            }
        }
    }
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Turns a model's raw outputs into per-label scores, the labels over threshold and, for
/// segmentation, the regions (`image_area_mm2`: the area the model saw, when known).
fn score(
    task: Task,
    outputs: &[f32],
    labels: &[Label],
    activation: Activation,
    image_area_mm2: Option<f64>,
) -> (Vec<LabelScore>, Vec<String>, Option<Vec<Region>>) {
    let (mut values, mut peaks) = (LabelValues::new(), LabelValues::new());
    score_into(task, outputs, labels, activation, &mut values, &mut peaks);
    let scores: Vec<LabelScore> = labels
        .iter()
        .zip(&values)
        .map(|(l, &score)| LabelScore {
            label: l.name.clone(),
            score,
            threshold: l.finding_threshold(task),
            peak: None,
        })
        .collect();
    let over = scores
        .iter()
        .filter(|s| s.score >= s.threshold && !(task == Task::Segmentation && s.score == 0.0))
        .map(|s| s.label.clone())
        .collect();
    let regions = (task == Task::Segmentation).then(|| {
        labels
            .iter()
            .zip(values.iter().zip(&peaks))
            .map(|(l, (&fraction, &peak))| {
                let area = image_area_mm2.map(|a| round3(a * fraction as f64));
                Region {
                    label: l.name.clone(),
                    fraction,
                    area_mm2: area,
                    peak_area_mm2: area,
                    peak_probability: peak,
                    count: None,
                    components: None,
                }
            })
            .collect()
    });
    (scores, over, regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_applies_softmax_and_thresholds() {
        let labels = vec![
            Label {
                name: "normal".into(),
                threshold: 0.5,
                min_fraction: None,
                code: None,
            },
            Label {
                name: "ptx".into(),
                threshold: 0.2,
                min_fraction: None,
                code: None,
            },
        ];
        let classify = |o: &[f32]| {
            let (s, over, regions) =
                score(Task::Classification, o, &labels, Activation::Softmax, None);
            assert!(regions.is_none());
            (s, over)
        };
        let (scores, over) = classify(&[0.0, 0.0]);
        assert!((scores[0].score - 0.5).abs() < 1e-6);
        assert_eq!(over, vec!["normal".to_string(), "ptx".to_string()]);
        let (scores, over) = classify(&[3.0, 0.0]);
        assert!((scores.iter().map(|s| s.score).sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(over, vec!["normal".to_string()]);
    }

    #[test]
    fn segmentation_counts_pixels_over_the_pixel_threshold() {
        let labels = vec![Label {
            name: "fluid".into(),
            threshold: 0.5,
            min_fraction: Some(0.2),
            code: None,
        }];
        // 10 pixels: 3 with logit > 0 (p > 0.5), one exactly 0 (p = 0.5 counts), 6 below.
        let out = [2.0, 1.0, 0.5, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0];
        let (scores, over, regions) = score(
            Task::Segmentation,
            &out,
            &labels,
            Activation::Sigmoid,
            Some(200.0),
        );
        assert!((scores[0].score - 0.4).abs() < 1e-6);
        assert_eq!(scores[0].threshold, 0.2);
        assert_eq!(over, vec!["fluid".to_string()]);
        let r = &regions.unwrap()[0];
        assert_eq!(r.area_mm2, Some(80.0));
        assert!((r.peak_probability - sigmoid(2.0)).abs() < 1e-6);
        let none = [-9.0f32; 10];
        let (scores, over, _) = score(
            Task::Segmentation,
            &none,
            &labels,
            Activation::Sigmoid,
            None,
        );
        assert_eq!(scores[0].score, 0.0);
        assert!(over.is_empty());
    }
}
