//! `bedside eval`: a model judged on a labelled folder with the exact runtime that serves —
//! the same loading (sha256 checked), preparation, tract plan, int8 kernels and decoding as
//! the daemon — and the field's metrics, so that what quantization or pruning cost is
//! measured on the user's own data on the board itself.
//!
//! [`data`] reads the folder, [`run`] turns every image into an [`ImageResult`], [`Summary`]
//! computes the metrics ([`metrics`], checked against scikit-learn and pycocotools), and
//! [`report`] writes the Markdown report, the per-image CSV, `summary.json` and the plots.

pub mod data;
pub mod metrics;
mod plot;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::infer::{Engine, Variant};
use crate::model::manifest::{Activation, Task};
use crate::model::{ModelError, ModelRef};
use crate::prepare::Preparer;
use crate::task::detect;
use crate::task::{LabelValues, score_into};
use data::{DataError, Item, Truth};
use metrics::{Binary, CocoAp, Confusion, LabelledBox, Overlap, Roc, ScoredBox, mean_defined};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("cannot write the report to {path}: {reason}")]
    Report { path: PathBuf, reason: String },
}

/// Detections down to this score take part in average precision (the COCO convention; the
/// labels' own thresholds decide only what a finding reports).
pub const DETECTION_SCORE_FLOOR: f32 = 0.001;

/// What one image gave.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    pub name: String,
    pub prepare_ms: f64,
    pub infer_ms: f64,
    pub detail: Detail,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// Per label: present in the truth, and the model's probability.
    Classification { truth: Vec<bool>, scores: Vec<f64> },
    /// Per label: pixel overlap at the mask's resolution, the region's fraction of the model's
    /// output (the finding's score) and whether the finding calls it present.
    Segmentation {
        overlaps: Vec<Overlap>,
        /// 95th-percentile Hausdorff distance in the mask's pixels, where defined.
        hd95: Vec<Option<f64>>,
        fractions: Vec<f64>,
        called: Vec<bool>,
    },
    /// The truth's boxes and the model's, in the image's pixels.
    Detection {
        truth: Vec<LabelledBox>,
        boxes: Vec<ScoredBox>,
    },
}

/// One model (one form of it) over one folder.
#[derive(Debug, Clone)]
pub struct Run {
    pub model: ModelRef,
    /// Which file of the model folder ran: `model.onnx`, `model.fp32.onnx`, ….
    pub file: String,
    pub task: Task,
    pub labels: Vec<String>,
    /// Classification/detection: the probability a finding needs; segmentation: the pixel
    /// probability (the region's `min_fraction` is in `min_fractions`).
    pub thresholds: Vec<f64>,
    pub min_fractions: Vec<f64>,
    pub activation: Activation,
    pub images: Vec<ImageResult>,
    /// Images that could not be evaluated, and why.
    pub skipped: Vec<(String, String)>,
}

/// Evaluates `variant` of the model in `model_dir` on the folder `data_dir`; `progress` is
/// called after each image with (done, total).
pub fn run(
    model_dir: &Path,
    variant: Variant,
    data_dir: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<Run, EvalError> {
    let mut engine = Engine::load_variant(model_dir, variant)?;
    let manifest = engine.manifest().clone();
    let labels: Vec<String> = manifest.labels.iter().map(|l| l.name.clone()).collect();
    let items = data::load(data_dir, manifest.model.task, &labels)?;
    let file = match variant {
        Variant::Shipped => Some(&manifest.model.file),
        Variant::Parent => manifest.model.parent.as_ref().map(|p| &p.file),
        Variant::Pruned => manifest.model.pruned.as_ref().map(|p| &p.file),
    }
    .map(|f| f.display().to_string())
    .unwrap_or_default();
    let (h, w) = manifest.input_hw();
    let mut preparer = Preparer::new(manifest.preprocess.clone(), h, w);
    let mut run = Run {
        model: engine.model_ref().clone(),
        file,
        task: manifest.model.task,
        labels,
        thresholds: manifest
            .labels
            .iter()
            .map(|l| decimal(l.threshold))
            .collect(),
        min_fractions: manifest
            .labels
            .iter()
            .map(|l| decimal(l.min_fraction.unwrap_or(0.0)))
            .collect(),
        activation: manifest.output.activation,
        images: Vec::with_capacity(items.len()),
        skipped: Vec::new(),
    };
    let total = items.len();
    for (done, item) in items.iter().enumerate() {
        match evaluate_one(&mut engine, &mut preparer, item, done) {
            Ok(result) => run.images.push(result),
            Err(reason) => {
                tracing::warn!(image = %item.name, "not evaluated: {reason}");
                run.skipped.push((item.name.clone(), reason));
            }
        }
        progress(done + 1, total);
    }
    Ok(run)
}

/// An f32 from the manifest as the decimal it was written as (0.002073, not 0.00207299995).
fn decimal(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

fn evaluate_one(
    engine: &mut Engine,
    preparer: &mut Preparer,
    item: &Item,
    index: usize,
) -> Result<ImageResult, String> {
    let input = data::read_image(&item.path).map_err(|e| format!("cannot read the image: {e}"))?;
    let (rows, cols) = input.size();
    // The truth is read before the model runs: a bad mask costs no inference.
    let mask = match &item.truth {
        Truth::Mask(path) => {
            let m = data::read_mask(path)
                .map_err(|e| format!("cannot read the mask {}: {e}", path.display()))?;
            if (m.rows, m.cols) != (rows, cols) {
                return Err(format!(
                    "the mask is {}x{}, the image {cols}x{rows}",
                    m.cols, m.rows
                ));
            }
            Some(m)
        }
        _ => None,
    };
    let t = Instant::now();
    let tensor = input.prepare(preparer).map_err(|e| e.to_string())?;
    let prepare_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let outputs = engine.run(tensor).map_err(|e| e.to_string())?;
    let infer_ms = t.elapsed().as_secs_f64() * 1e3;
    let manifest = engine.manifest();
    let labels = &manifest.labels;
    let activation = manifest.output.activation;
    let detail = match (&item.truth, manifest.model.task) {
        (Truth::Classes(truth), Task::Classification) => {
            let (mut scores, mut peaks) = (LabelValues::new(), LabelValues::new());
            score_into(
                Task::Classification,
                &outputs,
                labels,
                activation,
                &mut scores,
                &mut peaks,
            );
            Detail::Classification {
                truth: truth.clone(),
                scores: scores.iter().map(|&s| s as f64).collect(),
            }
        }
        (Truth::Mask(_), Task::Segmentation) => {
            let mask = mask.expect("read above");
            let (oh, ow) = output_hw(outputs.len() / labels.len().max(1), manifest.input_hw())
                .ok_or_else(|| format!("cannot lay {} outputs out as maps", outputs.len()))?;
            let (mut fractions, mut peaks) = (LabelValues::new(), LabelValues::new());
            score_into(
                Task::Segmentation,
                &outputs,
                labels,
                activation,
                &mut fractions,
                &mut peaks,
            );
            let one_label = labels.len() == 1;
            let mut overlaps = Vec::new();
            let mut hd95 = Vec::new();
            let mut called = Vec::new();
            for (k, label) in labels.iter().enumerate() {
                let truth: Vec<bool> = mask
                    .values
                    .iter()
                    .map(|&v| {
                        if one_label {
                            v != 0.0
                        } else {
                            v.round() as usize == k + 1
                        }
                    })
                    .collect();
                let predicted = upsampled_mask(
                    &outputs,
                    labels.len(),
                    k,
                    (oh, ow),
                    (rows, cols),
                    activation,
                    label.threshold,
                );
                overlaps.push(Overlap::new(&truth, &predicted));
                hd95.push(metrics::hd95(&truth, &predicted, rows, cols));
                let f = fractions.get(k).copied().unwrap_or(0.0);
                called.push(f > 0.0 && f >= label.finding_threshold(Task::Segmentation));
            }
            Detail::Segmentation {
                overlaps,
                hd95,
                fractions: fractions.iter().map(|&f| f as f64).collect(),
                called,
            }
        }
        (Truth::Boxes(truth), Task::Detection) => {
            let spec = manifest
                .detection
                .map(|d| crate::model::manifest::DetectionSpec {
                    max_detections: d.max_detections.max(CocoAp::MAX_DETS),
                    ..d
                })
                .ok_or("the manifest has no [detection]")?;
            let floors = vec![DETECTION_SCORE_FLOOR; labels.len()];
            let (h, w) = manifest.input_hw();
            let (sy, sx) = (rows as f64 / h as f64, cols as f64 / w as f64);
            let boxes = detect::decode(&outputs, &spec, (h, w), &floors)
                .into_iter()
                .map(|b| ScoredBox {
                    b: LabelledBox {
                        image: index,
                        label: b.label,
                        bbox: [
                            (b.x1 as f64 * sx).clamp(0.0, cols as f64),
                            (b.y1 as f64 * sy).clamp(0.0, rows as f64),
                            (b.x2 as f64 * sx).clamp(0.0, cols as f64),
                            (b.y2 as f64 * sy).clamp(0.0, rows as f64),
                        ],
                    },
                    score: b.score as f64,
                })
                .collect();
            Detail::Detection {
                truth: truth
                    .iter()
                    .map(|b| LabelledBox { image: index, ..*b })
                    .collect(),
                boxes,
            }
        }
        _ => return Err("the data's labels do not fit the model's task".into()),
    };
    Ok(ImageResult {
        name: item.name.clone(),
        prepare_ms,
        infer_ms,
        detail,
    })
}

/// The output map's size for a plane of `plane` values from an input of `input` (the same
/// aspect ratio, a whole-number stride).
fn output_hw(plane: usize, input: (usize, usize)) -> Option<(usize, usize)> {
    let (h, w) = input;
    (1..=h.max(1)).find_map(|stride| {
        (h % stride == 0 && w % stride == 0 && (h / stride) * (w / stride) == plane)
            .then_some((h / stride, w / stride))
    })
}

/// Label `k`'s map brought to the mask's size by bilinear interpolation with half-pixel
/// centres (torch's `interpolate(mode="bilinear", align_corners=False)`), then thresholded:
/// sigmoid maps as logits against the threshold's logit, softmax maps as probabilities.
fn upsampled_mask(
    outputs: &[f32],
    labels: usize,
    k: usize,
    (oh, ow): (usize, usize),
    (rows, cols): (usize, usize),
    activation: Activation,
    threshold: f32,
) -> Vec<bool> {
    let plane = oh * ow;
    let map: Vec<f32> = match activation {
        Activation::Sigmoid => outputs[k * plane..(k + 1) * plane].to_vec(),
        Activation::Softmax => (0..plane)
            .map(|i| {
                let at = |c: usize| outputs[c * plane + i];
                let max = (0..labels).map(at).fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = (0..labels).map(|c| (at(c) - max).exp()).sum();
                (at(k) - max).exp() / sum
            })
            .collect(),
    };
    let cut = match activation {
        Activation::Sigmoid => {
            let t = threshold.clamp(1e-7, 1.0 - 1e-7);
            (t / (1.0 - t)).ln()
        }
        Activation::Softmax => threshold,
    };
    let axis = |dst: usize, out: usize, inp: usize| {
        let src = ((dst as f32 + 0.5) * (inp as f32 / out as f32) - 0.5).max(0.0);
        let i0 = (src as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        (i0, i1, src - i0 as f32)
    };
    let xs: Vec<(usize, usize, f32)> = (0..cols).map(|x| axis(x, cols, ow)).collect();
    let mut out = Vec::with_capacity(rows * cols);
    for y in 0..rows {
        let (y0, y1, ly) = axis(y, rows, oh);
        for &(x0, x1, lx) in &xs {
            let top = map[y0 * ow + x0] * (1.0 - lx) + map[y0 * ow + x1] * lx;
            let bottom = map[y1 * ow + x0] * (1.0 - lx) + map[y1 * ow + x1] * lx;
            out.push(top * (1.0 - ly) + bottom * ly >= cut);
        }
    }
    out
}

/// The metrics of one label.
#[derive(Debug, Clone, Serialize)]
pub struct LabelSummary {
    pub label: String,
    /// The threshold the image-level call uses (probability; segmentation: region fraction).
    pub threshold: f64,
    /// Images with the label / without.
    pub positives: usize,
    pub negatives: usize,
    /// Image-level calls at `threshold`.
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    /// 95 % Wilson score intervals.
    pub sensitivity_ci: Option<[f64; 2]>,
    pub specificity_ci: Option<[f64; 2]>,
    pub ppv: Option<f64>,
    pub npv: Option<f64>,
    pub f1: Option<f64>,
    /// Area under the ROC curve of the image-level score (segmentation: the region's
    /// fraction; detection: the best box's score).
    pub auc: Option<f64>,
    /// The threshold maximising sensitivity + specificity − 1, and the two rates there.
    pub youden_threshold: Option<f64>,
    pub youden_sensitivity: Option<f64>,
    pub youden_specificity: Option<f64>,
    /// Segmentation: mean Dice and IoU over the images where they are defined, and how many
    /// images had neither truth nor prediction (correct negatives, left out of the means).
    pub mean_dice: Option<f64>,
    pub mean_iou: Option<f64>,
    /// Mean 95th-percentile Hausdorff distance (mask pixels) over the images where both masks
    /// have pixels.
    pub mean_hd95: Option<f64>,
    pub both_empty: Option<usize>,
    /// Detection: average precision at IoU 0.5 and over 0.5:0.95.
    pub ap50: Option<f64>,
    pub ap50_95: Option<f64>,
}

/// Percentiles of the per-image times.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub median_prepare_ms: f64,
    pub median_infer_ms: f64,
    pub p95_infer_ms: f64,
    pub max_infer_ms: f64,
}

/// The metrics of a [`Run`].
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub model: ModelRef,
    pub file: String,
    pub task: &'static str,
    pub images: usize,
    pub skipped: usize,
    pub labels: Vec<LabelSummary>,
    /// Single-label classification: `confusion[true][predicted]`, predicted = argmax.
    pub confusion: Option<Vec<Vec<usize>>>,
    pub accuracy: Option<f64>,
    pub balanced_accuracy: Option<f64>,
    pub mean_dice: Option<f64>,
    pub mean_iou: Option<f64>,
    pub map50: Option<f64>,
    pub map50_95: Option<f64>,
    /// The one figure a comparison is judged on: mean AUC (classification), mean Dice
    /// (segmentation), mAP@0.5 (detection).
    pub primary_metric: &'static str,
    pub primary: Option<f64>,
    pub timing: Timing,
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let at = ((values.len() - 1) as f64 * q).round() as usize;
    values[at]
}

impl Run {
    /// Per label: (truth, image-level score) over the evaluated images.
    pub fn label_scores(&self, k: usize) -> (Vec<bool>, Vec<f64>) {
        self.images
            .iter()
            .map(|r| match &r.detail {
                Detail::Classification { truth, scores } => (truth[k], scores[k]),
                Detail::Segmentation {
                    overlaps,
                    fractions,
                    ..
                } => (overlaps[k].truth > 0, fractions[k]),
                Detail::Detection { truth, boxes } => (
                    truth.iter().any(|b| b.label == k),
                    boxes
                        .iter()
                        .filter(|b| b.b.label == k)
                        .map(|b| b.score)
                        .fold(0.0, f64::max),
                ),
            })
            .unzip()
    }

    pub fn summary(&self) -> Summary {
        let task = self.task;
        let coco = (task == Task::Detection).then(|| {
            let (mut truth, mut boxes) = (Vec::new(), Vec::new());
            for (i, r) in self.images.iter().enumerate() {
                if let Detail::Detection { truth: t, boxes: b } = &r.detail {
                    truth.extend(t.iter().map(|x| LabelledBox { image: i, ..*x }));
                    boxes.extend(b.iter().map(|x| ScoredBox {
                        b: LabelledBox { image: i, ..x.b },
                        ..*x
                    }));
                }
            }
            CocoAp::new(self.images.len(), self.labels.len(), &truth, &boxes)
        });
        let labels: Vec<LabelSummary> = (0..self.labels.len())
            .map(|k| {
                let (truth, scores) = self.label_scores(k);
                let threshold = match task {
                    Task::Segmentation => self.min_fractions[k],
                    _ => self.thresholds[k],
                };
                let b = match task {
                    Task::Segmentation => {
                        let called: Vec<f64> = self
                            .images
                            .iter()
                            .map(|r| match &r.detail {
                                Detail::Segmentation { called, .. } => called[k] as u8 as f64,
                                _ => 0.0,
                            })
                            .collect();
                        Binary::at(&truth, &called, 0.5)
                    }
                    // A box or probability at the threshold; 0 (no box) never counts.
                    _ => {
                        let s: Vec<f64> = scores
                            .iter()
                            .map(|&s| if s > 0.0 { s } else { -1.0 })
                            .collect();
                        Binary::at(&truth, &s, threshold)
                    }
                };
                let roc = Roc::new(&truth, &scores);
                let yt = roc.as_ref().and_then(|r| r.youden().0);
                let youden_binary = yt.map(|t| Binary::at(&truth, &scores, t));
                let overlaps: Vec<Overlap> = self
                    .images
                    .iter()
                    .filter_map(|r| match &r.detail {
                        Detail::Segmentation { overlaps, .. } => Some(overlaps[k]),
                        _ => None,
                    })
                    .collect();
                let seg = task == Task::Segmentation;
                LabelSummary {
                    label: self.labels[k].clone(),
                    threshold,
                    positives: truth.iter().filter(|&&t| t).count(),
                    negatives: truth.iter().filter(|&&t| !t).count(),
                    tp: b.tp,
                    fp: b.fp,
                    tn: b.tn,
                    fn_: b.fn_,
                    sensitivity: b.sensitivity(),
                    specificity: b.specificity(),
                    sensitivity_ci: b.sensitivity_ci(),
                    specificity_ci: b.specificity_ci(),
                    ppv: b.ppv(),
                    npv: b.npv(),
                    f1: b.f1(),
                    auc: roc.as_ref().map(Roc::auc),
                    youden_threshold: yt,
                    youden_sensitivity: youden_binary.and_then(|b| b.sensitivity()),
                    youden_specificity: youden_binary.and_then(|b| b.specificity()),
                    mean_dice: seg
                        .then(|| mean_defined(overlaps.iter().map(Overlap::dice)))
                        .flatten(),
                    mean_iou: seg
                        .then(|| mean_defined(overlaps.iter().map(Overlap::iou)))
                        .flatten(),
                    mean_hd95: seg
                        .then(|| {
                            mean_defined(self.images.iter().map(|r| match &r.detail {
                                Detail::Segmentation { hd95, .. } => hd95[k],
                                _ => None,
                            }))
                        })
                        .flatten(),
                    both_empty: seg.then(|| overlaps.iter().filter(|o| o.both_empty()).count()),
                    ap50: coco.as_ref().and_then(|c| c.ap50(k)),
                    ap50_95: coco.as_ref().and_then(|c| c.ap50_95(k)),
                }
            })
            .collect();
        // A confusion matrix when every image has exactly one of a softmax model's labels.
        let single: Option<Vec<(usize, usize)>> = (task == Task::Classification
            && self.activation == Activation::Softmax)
            .then(|| {
                self.images
                    .iter()
                    .map(|r| match &r.detail {
                        Detail::Classification { truth, scores } => {
                            let mut present = truth.iter().enumerate().filter(|(_, t)| **t);
                            match (present.next(), present.next()) {
                                (Some((k, _)), None) => Some((k, metrics::argmax(scores))),
                                _ => None,
                            }
                        }
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .flatten();
        let confusion = single.map(|pairs| {
            let (t, p): (Vec<usize>, Vec<usize>) = pairs.into_iter().unzip();
            Confusion::new(self.labels.len(), &t, &p)
        });
        let mean_dice = (task == Task::Segmentation)
            .then(|| mean_defined(labels.iter().map(|l| l.mean_dice)))
            .flatten();
        let mean_iou = (task == Task::Segmentation)
            .then(|| mean_defined(labels.iter().map(|l| l.mean_iou)))
            .flatten();
        let (primary_metric, primary) = match task {
            Task::Classification => ("mean AUC", mean_defined(labels.iter().map(|l| l.auc))),
            Task::Segmentation => ("mean Dice", mean_dice),
            Task::Detection => ("mAP@0.5", coco.as_ref().and_then(CocoAp::map50)),
        };
        let mut prepare: Vec<f64> = self.images.iter().map(|r| r.prepare_ms).collect();
        let mut infer: Vec<f64> = self.images.iter().map(|r| r.infer_ms).collect();
        Summary {
            model: self.model.clone(),
            file: self.file.clone(),
            task: match task {
                Task::Classification => "classification",
                Task::Segmentation => "segmentation",
                Task::Detection => "detection",
            },
            images: self.images.len(),
            skipped: self.skipped.len(),
            labels,
            accuracy: confusion.as_ref().and_then(Confusion::accuracy),
            balanced_accuracy: confusion.as_ref().and_then(Confusion::balanced_accuracy),
            confusion: confusion.map(|c| c.matrix),
            mean_dice,
            mean_iou,
            map50: coco.as_ref().and_then(CocoAp::map50),
            map50_95: coco.as_ref().and_then(CocoAp::map50_95),
            primary_metric,
            primary,
            timing: Timing {
                median_prepare_ms: percentile(&mut prepare, 0.5),
                median_infer_ms: percentile(&mut infer, 0.5),
                p95_infer_ms: percentile(&mut infer, 0.95),
                max_infer_ms: infer.last().copied().unwrap_or(f64::NAN),
            },
        }
    }
}
