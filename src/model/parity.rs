//! tract against onnxruntime on a model's committed fixtures: every form the manifest names
//! (shipped int8, pruned fp32, dense fp32 parent) run on the fixture inputs, compared with the
//! outputs onnxruntime gave the model factory, within the manifest's tolerances, and with the
//! same decisions (argmax for classification, the thresholded mask for segmentation).
//! `bedside parity` prints it (tests/aarch64.sh runs it under qemu); the tests assert it.

use std::path::Path;

use super::manifest::{Manifest, Task};
use crate::infer::{Engine, Variant};
use crate::task::detect::{self, BoxDet};

/// fp32 forms without a stated `parity.fp32_max_abs`: tract and onnxruntime differ only by
/// summation order (measured 1.9e-6 on cxr-tiny-cls).
pub const DEFAULT_FP32_MAX_ABS: f32 = 1e-5;

/// Detection models without a stated `parity.min_box_iou`.
pub const DEFAULT_MIN_BOX_IOU: f32 = 0.9;

/// Same number of boxes, and a one-to-one pairing (greedy, best IoU first) in which every
/// pair has the same label and an IoU of at least `min_iou`.
pub fn boxes_match(a: &[BoxDet], b: &[BoxDet], min_iou: f32) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        let best = b
            .iter()
            .enumerate()
            .filter(|(j, y)| !used[*j] && y.label == x.label)
            .map(|(j, y)| (j, x.iou(y)))
            .max_by(|p, q| p.1.total_cmp(&q.1));
        match best {
            Some((j, iou)) if iou >= min_iou => {
                used[j] = true;
                true
            }
            _ => false,
        }
    })
}

/// One form's result over every fixture.
#[derive(Debug, Clone)]
pub struct FormReport {
    pub model: String,
    /// The fixture key of onnxruntime's outputs (e.g. `int8`, `ort_fp32`).
    pub key: String,
    pub variant: Variant,
    pub cases: usize,
    pub max_abs: f32,
    pub tolerance: f32,
    /// Worst fraction of agreeing decisions over the fixtures.
    pub agreement: f64,
    pub needed: f64,
}

impl FormReport {
    pub fn ok(&self) -> bool {
        self.max_abs <= self.tolerance && self.agreement >= self.needed
    }
}

impl std::fmt::Display for FormReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {} cases, max |tract - onnxruntime| {:.3e} (tolerance {:e}), decisions agree {:.4} (need {:.4}): {}",
            self.model,
            self.key,
            self.cases,
            self.max_abs,
            self.tolerance,
            self.agreement,
            self.needed,
            if self.ok() { "ok" } else { "FAILED" }
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("parity of {model}: {reason}")]
pub struct ParityError {
    pub model: String,
    pub reason: String,
}

/// Runs every form that has reference outputs in `fixtures/parity.json`.
pub fn check(model: &Path, fixtures: &Path) -> Result<Vec<FormReport>, ParityError> {
    let fail = |reason: String| ParityError {
        model: model.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(fixtures.join("parity.json"))
        .map_err(|e| fail(format!("parity.json: {e}")))?;
    let parity: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("parity.json: {e}")))?;
    let cases = parity["cases"]
        .as_array()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| fail("parity.json has no cases".into()))?;
    let mut reports = Vec::new();
    // The factory's keys for onnxruntime's outputs of each form.
    for (keys, variant) in [
        (&["int8", "ort_int8"][..], Variant::Shipped),
        (&["pruned"][..], Variant::Pruned),
        (&["fp32", "ort_fp32"][..], Variant::Parent),
    ] {
        let Some(key) = keys.iter().find(|k| !cases[0][**k].is_null()) else {
            continue;
        };
        let mut engine = Engine::load_variant(model, variant).map_err(|e| fail(e.to_string()))?;
        let m = engine.manifest().clone();
        let p = m
            .parity
            .clone()
            .ok_or_else(|| fail("no [parity] in the manifest".into()))?;
        let tolerance = match variant {
            Variant::Shipped => p.max_abs,
            _ => p.fp32_max_abs.unwrap_or(DEFAULT_FP32_MAX_ABS),
        };
        let needed = match m.model.task {
            Task::Classification => 1.0,
            Task::Segmentation => p.min_mask_agreement.unwrap_or(1.0) as f64,
            // Every case's boxes must match.
            Task::Detection => 1.0,
        };
        let (mut max_abs, mut agreement) = (0.0f32, 1.0f64);
        for case in cases {
            let name = case["input"].as_str().unwrap_or_default();
            let bytes =
                std::fs::read(fixtures.join(name)).map_err(|e| fail(format!("{name}: {e}")))?;
            let input: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let want: Vec<f32> = case[*key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_f64())
                        .map(|v| v as f32)
                        .collect()
                })
                .unwrap_or_default();
            let got = engine.run(&input).map_err(|e| fail(e.to_string()))?;
            if got.len() != want.len() {
                return Err(fail(format!(
                    "{key} {name}: {} outputs, {} in the fixture",
                    got.len(),
                    want.len()
                )));
            }
            max_abs = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(max_abs, f32::max);
            agreement = agreement.min(decisions_agree(&m, &got, &want));
        }
        reports.push(FormReport {
            model: m.model.id.clone(),
            key: key.to_string(),
            variant,
            cases: cases.len(),
            max_abs,
            tolerance,
            agreement,
            needed,
        });
    }
    Ok(reports)
}

/// Classification: 1 when both pick the same label, else 0. Segmentation: the fraction of
/// output pixels on the same side of the first label's pixel threshold. Detection: 1 when
/// both decode to the same number of boxes and each box of `got` matches one of `want` with
/// the same label and an IoU of at least `parity.min_box_iou` (default 0.9), else 0.
pub fn decisions_agree(m: &Manifest, got: &[f32], want: &[f32]) -> f64 {
    let threshold = m.labels[0].threshold;
    match m.model.task {
        Task::Detection => {
            if m.detection.is_none() {
                return 0.0;
            }
            let a = detect::decode_with(m, got);
            let b = detect::decode_with(m, want);
            let min_iou = m
                .parity
                .as_ref()
                .and_then(|p| p.min_box_iou)
                .unwrap_or(DEFAULT_MIN_BOX_IOU);
            (boxes_match(&a, &b, min_iou)) as u8 as f64
        }
        Task::Classification => {
            let argmax = |v: &[f32]| {
                v.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|x| x.0)
            };
            (argmax(got) == argmax(want)) as u8 as f64
        }
        Task::Segmentation => {
            let t = threshold.clamp(1e-7, 1.0 - 1e-7);
            let cut = (t / (1.0 - t)).ln();
            got.iter()
                .zip(want)
                .filter(|(a, b)| (**a >= cut) == (**b >= cut))
                .count() as f64
                / got.len().max(1) as f64
        }
    }
}
