//! Findings: what bedside publishes about one image. A finding is decision support for a
//! clinician, never a diagnosis; it names the exact model that made it and carries nothing
//! that identifies the patient. Its JSON form is fixed by `docs/finding.schema.json`.

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::ModelRef;
use crate::model::manifest::{Activation, Label, Task};
use crate::source::{SopInstanceUid, SourceKind};

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
    pub timings_ms: Timings,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub bedside_version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
    pub threshold: f32,
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

/// Turns a classifier's raw outputs into per-label scores and the labels over threshold.
pub fn classify(
    outputs: &[f32],
    labels: &[Label],
    activation: Activation,
) -> (Vec<LabelScore>, Vec<String>) {
    let Activation::Softmax = activation;
    let probs = softmax(outputs);
    let scores: Vec<LabelScore> = labels
        .iter()
        .zip(probs)
        .map(|(l, score)| LabelScore {
            label: l.name.clone(),
            score,
            threshold: l.threshold,
        })
        .collect();
    let over = scores
        .iter()
        .filter(|s| s.score >= s.threshold)
        .map(|s| s.label.clone())
        .collect();
    (scores, over)
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
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
            },
            Label {
                name: "ptx".into(),
                threshold: 0.2,
            },
        ];
        let (scores, over) = classify(&[0.0, 0.0], &labels, Activation::Softmax);
        assert!((scores[0].score - 0.5).abs() < 1e-6);
        assert_eq!(over, vec!["normal".to_string(), "ptx".to_string()]);
        let (scores, over) = classify(&[3.0, 0.0], &labels, Activation::Softmax);
        assert!((scores.iter().map(|s| s.score).sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(over, vec!["normal".to_string()]);
    }
}
