//! Detection models: turning a single-scale, anchor-free output grid into boxes.
//!
//! The contract (the model card of `models/cxr-tiny-det` states it too): the output is
//! `[1, 5 + C, H / stride, W / stride]` raw values per grid cell — objectness logit, centre
//! offset logits x and y, log width and height in strides, then one logit per label. A cell's
//! box is centred at `(gx + σ(tx), gy + σ(ty)) · stride` with size `(e^tw, e^th) · stride`
//! input pixels; its label is the argmax of the label logits and its score
//! `σ(objectness) · softmax(label)`. Cells scoring at least the lowest label threshold are
//! candidates; greedy non-maximum suppression per label (highest score first, ties to the
//! lower cell index, a box goes when it overlaps a kept one by IoU > `iou_threshold`) and a
//! cap of `max_detections` give the result. Each label's own threshold then decides what the
//! finding reports as present. The factory's Python decoder follows the same rules, so the
//! boxes from tract and from onnxruntime can be compared in the parity check.

use super::{ImageGeometry, sigmoid};
use crate::finding::{Detection, LabelScore, round3};
use crate::model::manifest::{BOX_CHANNELS, DetectionSpec, MAX_LABELS, Manifest};

/// One box in the model's input pixels, `(x1, y1)` top left, `(x2, y2)` bottom right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxDet {
    /// Index into the manifest's labels.
    pub label: usize,
    pub score: f32,
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BoxDet {
    pub fn area(&self) -> f32 {
        (self.x2 - self.x1).max(0.0) * (self.y2 - self.y1).max(0.0)
    }

    /// Intersection over union, continuous coordinates (no +1 pixel convention).
    pub fn iou(&self, other: &BoxDet) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// Decodes the grid into boxes in input pixels, best first (see the module comment).
/// `thresholds` has one entry per label; `outputs` must have [`DetectionSpec::expected_len`]
/// values.
pub fn decode(
    outputs: &[f32],
    spec: &DetectionSpec,
    input_hw: (usize, usize),
    thresholds: &[f32],
) -> Vec<BoxDet> {
    let labels = thresholds.len();
    let (gh, gw) = (input_hw.0 / spec.stride, input_hw.1 / spec.stride);
    let plane = gh * gw;
    if labels == 0 || outputs.len() != (BOX_CHANNELS + labels) * plane {
        return Vec::new();
    }
    let floor = thresholds.iter().copied().fold(f32::INFINITY, f32::min);
    let at = |channel: usize, cell: usize| outputs[channel * plane + cell];
    let stride = spec.stride as f32;
    let mut candidates = Vec::new();
    for cell in 0..plane {
        let (mut best, mut best_logit) = (0, f32::NEG_INFINITY);
        for c in 0..labels {
            let v = at(BOX_CHANNELS + c, cell);
            if v > best_logit {
                (best, best_logit) = (c, v);
            }
        }
        let denom: f32 = (0..labels)
            .map(|c| (at(BOX_CHANNELS + c, cell) - best_logit).exp())
            .sum();
        let score = sigmoid(at(0, cell)) / denom;
        // NaN scores (a broken model) never pass.
        if score.is_nan() || score < floor {
            continue;
        }
        let (gy, gx) = ((cell / gw) as f32, (cell % gw) as f32);
        let cx = (gx + sigmoid(at(1, cell))) * stride;
        let cy = (gy + sigmoid(at(2, cell))) * stride;
        let w = at(3, cell).exp() * stride;
        let h = at(4, cell).exp() * stride;
        candidates.push(BoxDet {
            label: best,
            score,
            x1: cx - w / 2.0,
            y1: cy - h / 2.0,
            x2: cx + w / 2.0,
            y2: cy + h / 2.0,
        });
    }
    nms(candidates, spec.iou_threshold, spec.max_detections)
}

/// [`decode`] with everything from the manifest: its `[detection]`, input size and label
/// thresholds. No boxes for a manifest without `[detection]`.
pub fn decode_with(manifest: &Manifest, outputs: &[f32]) -> Vec<BoxDet> {
    let Some(spec) = &manifest.detection else {
        return Vec::new();
    };
    let thresholds: heapless::Vec<f32, MAX_LABELS> =
        manifest.labels.iter().map(|l| l.threshold).collect();
    decode(outputs, spec, manifest.input_hw(), &thresholds)
}

/// A detection model's output for one `image`: per label the best
/// box's score (0 without a box), the labels over threshold, and the boxes at or over their
/// label's threshold, best first, in image pixels.
pub fn score(
    outputs: &[f32],
    manifest: &Manifest,
    image: &ImageGeometry,
) -> (Vec<LabelScore>, Vec<String>, Vec<Detection>) {
    let ImageGeometry {
        rows,
        cols,
        pixel_spacing_mm,
    } = *image;
    let boxes = decode_with(manifest, outputs);
    let (h, w) = manifest.input_hw();
    let (sy, sx) = (rows as f64 / h as f64, cols as f64 / w as f64);
    let round1 = |v: f64| (v * 10.0).round() / 10.0;
    let mut best = vec![0.0f32; manifest.labels.len()];
    let mut detections = Vec::new();
    for b in &boxes {
        best[b.label] = best[b.label].max(b.score);
        let label = &manifest.labels[b.label];
        if b.score < label.threshold {
            continue;
        }
        let x1 = (b.x1 as f64 * sx).clamp(0.0, cols as f64);
        let x2 = (b.x2 as f64 * sx).clamp(0.0, cols as f64);
        let y1 = (b.y1 as f64 * sy).clamp(0.0, rows as f64);
        let y2 = (b.y2 as f64 * sy).clamp(0.0, rows as f64);
        detections.push(Detection {
            label: label.name.clone(),
            score: b.score,
            bbox: [round1(x1), round1(y1), round1(x2), round1(y2)],
            size_mm: pixel_spacing_mm.map(|[r, c]| [round3((x2 - x1) * c), round3((y2 - y1) * r)]),
        });
    }
    let scores: Vec<LabelScore> = manifest
        .labels
        .iter()
        .zip(&best)
        .map(|(l, &score)| LabelScore {
            label: l.name.clone(),
            score,
            threshold: l.threshold,
            peak: None,
        })
        .collect();
    let over = scores
        .iter()
        .filter(|s| s.score > 0.0 && s.score >= s.threshold)
        .map(|s| s.label.clone())
        .collect();
    (scores, over, detections)
}

/// Greedy per-label non-maximum suppression. `candidates` in cell order; the sort is stable,
/// so equal scores keep the lower cell first.
pub fn nms(mut candidates: Vec<BoxDet>, iou_threshold: f32, max_detections: usize) -> Vec<BoxDet> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<BoxDet> = Vec::new();
    for c in candidates {
        if kept.len() == max_detections {
            break;
        }
        if kept
            .iter()
            .all(|k| k.label != c.label || k.iou(&c) <= iou_threshold)
        {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(label: usize, score: f32, x1: f32, y1: f32, x2: f32, y2: f32) -> BoxDet {
        BoxDet {
            label,
            score,
            x1,
            y1,
            x2,
            y2,
        }
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = b(0, 1.0, 0.0, 0.0, 10.0, 10.0);
        assert_eq!(a.iou(&a), 1.0);
        // Half overlap: intersection 50, union 150.
        let h = b(0, 1.0, 5.0, 0.0, 15.0, 10.0);
        assert!((a.iou(&h) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(a.iou(&b(0, 1.0, 20.0, 20.0, 30.0, 30.0)), 0.0);
    }

    #[test]
    fn suppression_is_per_label_best_first_and_capped() {
        let boxes = vec![
            b(0, 0.6, 0.0, 0.0, 10.0, 10.0),
            b(0, 0.9, 1.0, 1.0, 11.0, 11.0), // overlaps the first by IoU 0.68
            b(1, 0.5, 0.0, 0.0, 10.0, 10.0), // same place, other label: kept
            b(0, 0.7, 50.0, 50.0, 60.0, 60.0),
        ];
        let kept = nms(boxes.clone(), 0.45, 10);
        let scores: Vec<f32> = kept.iter().map(|k| k.score).collect();
        assert_eq!(scores, [0.9, 0.7, 0.5]);
        // Overlapping by IoU 0.6807, just under a threshold of 0.681: kept.
        let kept = nms(boxes.clone(), 0.681, 10);
        assert_eq!(kept.len(), 4);
        assert_eq!(nms(boxes, 0.45, 2).len(), 2);
    }

    #[test]
    fn equal_scores_keep_the_lower_cell() {
        let kept = nms(
            vec![
                b(0, 0.8, 0.0, 0.0, 10.0, 10.0),
                b(0, 0.8, 2.0, 0.0, 12.0, 10.0),
            ],
            0.3,
            10,
        );
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].x1, 0.0);
    }

    #[test]
    fn decodes_a_cell_into_input_pixels() {
        // 16x16 input, stride 8: a 2x2 grid, two labels -> 7 channels of 4 cells.
        let spec = DetectionSpec {
            stride: 8,
            iou_threshold: 0.5,
            max_detections: 10,
        };
        let mut out = vec![-20.0f32; 7 * 4];
        let cell = 3; // row 1, column 1
        out[cell] = 20.0; // objectness ~1
        out[4 + cell] = 0.0; // x offset 0.5
        out[2 * 4 + cell] = 0.0; // y offset 0.5
        out[3 * 4 + cell] = 0.0; // w = 1 stride
        out[4 * 4 + cell] = (2.0f32).ln(); // h = 2 strides
        out[5 * 4 + cell] = 0.0;
        out[6 * 4 + cell] = 3.0; // label 1, p = e^3 / (1 + e^3)
        assert_eq!(spec.expected_len((16, 16), 2), Some(out.len()));
        let got = decode(&out, &spec, (16, 16), &[0.5, 0.5]);
        assert_eq!(got.len(), 1);
        let d = got[0];
        assert_eq!(d.label, 1);
        let p = 3.0f32.exp() / (1.0 + 3.0f32.exp());
        assert!((d.score - p).abs() < 1e-6, "{}", d.score);
        assert_eq!((d.x1, d.x2, d.y1, d.y2), (8.0, 16.0, 4.0, 20.0));
        // Below the lowest threshold: nothing.
        assert!(decode(&out, &spec, (16, 16), &[0.99, 0.99]).is_empty());
        // The wrong length is no boxes, not a panic.
        assert!(decode(&out[1..], &spec, (16, 16), &[0.5, 0.5]).is_empty());
        assert_eq!(spec.expected_len((20, 16), 2), None);
    }
}
