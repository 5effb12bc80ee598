//! Findings: what bedside publishes about one image. A finding is decision support for a
//! clinician, never a diagnosis; it names the exact model that made it and carries nothing
//! that identifies the patient. Its JSON form is fixed by `docs/finding.schema.json`.

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::ModelRef;
use crate::model::detect;
use crate::model::manifest::{Activation, Label, Manifest, Task};

/// Most labels a model may have: per-frame scores live in fixed arrays of this size, so that
/// scoring a video frame allocates nothing.
pub const MAX_LABELS: usize = 16;

/// Per-label numbers of one output, without allocation: the score compared with the label's
/// finding threshold, and the peak probability (for segmentation, of the likeliest pixel).
pub type LabelValues = heapless::Vec<f32, MAX_LABELS>;
use crate::source::{SopInstanceUid, SourceKind};

/// The largest finding (JSON) bedside records: at most 16 labels of short names make a few
/// KB; the bound lets the memory plan size MQTT and outbox buffers.
pub const MAX_FINDING_BYTES: usize = 16 * 1024;

/// Schema identifier carried by every finding; bumped when the JSON form changes.
pub const SCHEMA: &str = "bedside.finding.v1";

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub schema: &'static str,
    /// Stable: the same input and the same model give the same id, so a consumer can drop
    /// duplicates (a finding may be delivered more than once).
    pub id: String,
    pub device: String,
    pub site: String,
    pub source: SourceKind,
    pub modality: Option<String>,
    /// Keyed one-way hash (HMAC-SHA256) of the SOP Instance UID; the UID itself never leaves.
    pub sop_instance_uid_hash: Option<String>,
    pub model: ModelRef,
    pub task: Task,
    pub scores: Vec<LabelScore>,
    /// Labels whose score reached their threshold, in manifest order.
    pub over_threshold: Vec<String>,
    pub image: ImageInfo,
    /// Segmentation: what each label covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<Region>>,
    /// Detection: the boxes at or over their label's threshold, best first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detections: Option<Vec<Detection>>,
    /// Live video: the span of frames this finding summarises.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoSpan>,
    pub timings_ms: Timings,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub bedside_version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    pub label: String,
    /// Classification: the probability; segmentation: the fraction of the image the region
    /// covers. Over a video span: the mean over its frames.
    pub score: f32,
    pub threshold: f32,
    /// Over a video span: the highest per-frame score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak: Option<f32>,
}

/// The part of the image a segmentation label covers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Region {
    pub label: String,
    /// Fraction of the image (the model's field of view) over the pixel threshold; over a
    /// video span, the mean.
    pub fraction: f32,
    /// `fraction` × the image's area, when its pixel spacing is known.
    pub area_mm2: Option<f64>,
    /// Over a video span: the largest per-frame area; for one image, equal to `area_mm2`.
    pub peak_area_mm2: Option<f64>,
    /// Highest pixel probability of the label.
    pub peak_probability: f32,
}

/// One box from a detection model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub label: String,
    /// σ(objectness) × the label's probability.
    pub score: f32,
    /// `[x1, y1, x2, y2]` in image pixels (column, row; origin top left), clipped to the
    /// image.
    #[serde(rename = "box")]
    pub bbox: [f64; 4],
    /// Width and height in mm, when the pixel spacing is known.
    pub size_mm: Option<[f64; 2]>,
}

/// Why a live-video finding was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VideoEvent {
    /// A label became present: published at once, the span is still open.
    Onset,
    /// A label stopped being present: the whole span it was present for.
    End,
    /// The state has not changed for `publish_interval_s`: what it was over that time.
    Interval,
}

/// The frames a live-video finding summarises.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoSpan {
    /// One capture session (a camera opened once), unique per device.
    pub stream: String,
    pub event: VideoEvent,
    /// Labels present (smoothed) over the span, in manifest order.
    pub present: Vec<String>,
    /// Capture sequence numbers, both included.
    pub first_frame: u64,
    pub last_frame: u64,
    /// Frames of the span that went through the model, and those the pipeline dropped
    /// because the model was busy (latest-wins).
    pub frames_processed: u64,
    pub frames_dropped: u64,
    /// Capture times (RFC 3339, UTC) of the first and last frame.
    pub first_captured_at: String,
    pub last_captured_at: String,
    /// Capture-to-result latency over the span.
    pub latency_ms: Latency,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ImageInfo {
    pub rows: u32,
    pub cols: u32,
    pub frames: u32,
    /// The frame this finding is about (0-based).
    pub frame: u32,
    /// Row and column spacing in mm, so that areas can be given in mm²; null when unknown.
    pub pixel_spacing_mm: Option<[f64; 2]>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    pub decode: f64,
    pub prepare: f64,
    pub infer: f64,
    pub total: f64,
}

/// What identifies an input for the finding id: its hashed UID, or a hash of its pixels when
/// it has no UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputKey {
    UidHash(String),
    PixelHash(String),
}

/// Keys the one-way hash of instance UIDs. A site should set a secret key so that a UID
/// cannot be confirmed by hashing guesses; the default is derived from the site name.
#[derive(Clone)]
pub struct UidHasher {
    key: Vec<u8>,
}

impl std::fmt::Debug for UidHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UidHasher(<key>)")
    }
}

impl UidHasher {
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into() }
    }

    pub fn hash(&self, uid: &SopInstanceUid) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(uid.expose().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Finding id: 128 bits of sha256 over the model's hash, the input's key and the frame.
pub fn finding_id(model: &ModelRef, input: &InputKey, frame: u32) -> String {
    let mut h = Sha256::new();
    h.update(SCHEMA.as_bytes());
    h.update(b"\n");
    h.update(model.sha256.as_bytes());
    h.update(b"\n");
    match input {
        InputKey::UidHash(x) => {
            h.update(b"uid:");
            h.update(x.as_bytes());
        }
        InputKey::PixelHash(x) => {
            h.update(b"pixels:");
            h.update(x.as_bytes());
        }
    }
    h.update(format!("\n{frame}").as_bytes());
    hex::encode(&h.finalize()[..16])
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
        // [`score_detections`].
        Task::Detection => {}
        Task::Segmentation => {
            let plane = outputs.len() / labels.len().max(1);
            for (c, label) in labels.iter().enumerate().take(n) {
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

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Turns a model's raw outputs into per-label scores, the labels over threshold and, for
/// segmentation, the regions (`image_area_mm2`: the area the model saw, when known).
pub fn score(
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
                }
            })
            .collect()
    });
    (scores, over, regions)
}

/// A detection model's output for one image of `rows` × `cols` pixels: per label the best
/// box's score (0 without a box), the labels over threshold, and the boxes at or over their
/// label's threshold, best first, in image pixels.
pub fn score_detections(
    outputs: &[f32],
    manifest: &Manifest,
    rows: u32,
    cols: u32,
    pixel_spacing_mm: Option<[f64; 2]>,
) -> (Vec<LabelScore>, Vec<String>, Vec<Detection>) {
    let boxes = detect::decode_with(manifest, outputs);
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

/// Rounds to 3 decimals (milliseconds, mm²): enough for a reader, short on the wire.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Now, as RFC 3339 UTC with millisecond precision.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelRef {
        ModelRef {
            id: "m".into(),
            version: "1".into(),
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn id_is_stable_and_depends_on_model_input_and_frame() {
        let k = InputKey::UidHash("x".into());
        let a = finding_id(&model(), &k, 0);
        assert_eq!(a, finding_id(&model(), &k, 0));
        assert_eq!(a.len(), 32);
        assert_ne!(a, finding_id(&model(), &k, 1));
        assert_ne!(a, finding_id(&model(), &InputKey::PixelHash("x".into()), 0));
        let mut other = model();
        other.sha256 = "cd".repeat(32);
        assert_ne!(a, finding_id(&other, &k, 0));
    }

    #[test]
    fn uid_hash_is_keyed_and_hides_the_uid() {
        let uid = SopInstanceUid::new("1.2.3.4");
        let a = UidHasher::new("site-a").hash(&uid);
        assert_eq!(a.len(), 64);
        assert!(!a.contains("1.2.3.4"));
        assert_ne!(a, UidHasher::new("site-b").hash(&uid));
        assert_eq!(format!("{uid:?}"), "SopInstanceUid(<redacted>)");
    }

    #[test]
    fn classify_applies_softmax_and_thresholds() {
        let labels = vec![
            Label {
                name: "normal".into(),
                threshold: 0.5,
                min_fraction: None,
            },
            Label {
                name: "ptx".into(),
                threshold: 0.2,
                min_fraction: None,
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
