//! Findings: what bedside publishes about one image. A finding is decision support for a
//! clinician, never a diagnosis; it names the exact model that made it and carries nothing
//! that identifies the patient. Its JSON form is fixed by `docs/finding.schema.json`.

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::ModelRef;
use crate::model::manifest::Task;
use crate::source::{SopInstanceUid, SourceKind};

/// The largest finding (JSON) bedside records: at most 16 labels of short names make a few
/// KB, and region outlines at most `MAX_OUTLINE_VERTICES` (1024) vertices of ~16 bytes; the
/// bound lets the memory plan size MQTT and outbox buffers.
pub const MAX_FINDING_BYTES: usize = 32 * 1024;

/// Schema identifier carried by every finding; bumped when the JSON form changes (v2: a
/// segmentation region's `count` and `components`).
pub const SCHEMA: &str = "bedside.finding.v2";

/// What finding ids are hashed under: v1's, kept when the schema grows, so that the same
/// image and model give the same id before and after an upgrade (a consumer's duplicate
/// check keeps working).
const ID_DOMAIN: &str = "bedside.finding.v1";

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
    /// One image: how many connected regions the label's mask has (at least the manifest's
    /// `min_region_px`); absent over a video span.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// One image: the largest regions (`[segmentation] max_regions`), largest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<Component>>,
}

/// One connected region of a segmentation label in one image. Coordinates are image pixels,
/// continuous: `[x, y]` = (column, row), (0, 0) the top-left corner of the top-left pixel
/// (as DICOM SCOORD), so a pixel's centre is at +0.5.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Component {
    /// When the pixel spacing is known.
    pub area_mm2: Option<f64>,
    /// Fraction of the image (the model's field of view).
    pub fraction: f32,
    /// `[x, y]` of the region's centre of mass.
    pub centroid: [f64; 2],
    /// `[x1, y1, x2, y2]`.
    #[serde(rename = "box")]
    pub bbox: [f64; 4],
    /// Closed polygon (first vertex repeated last) through the mask's pixel edges,
    /// simplified, at most `[segmentation] outline_points` + 1 vertices, clockwise on screen.
    pub outline: Vec<[f64; 2]>,
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
        self.keyed(b"", uid.expose().as_bytes())
    }

    /// A short tag for a file name the modality chose (a watch folder's files may be named
    /// after the patient): the same name gives the same tag, so log lines about one file can
    /// be followed, but the name cannot be confirmed without the key.
    pub fn name_tag(&self, name: &str) -> String {
        self.keyed(b"file-name:", name.as_bytes())[..12].to_string()
    }

    fn keyed(&self, domain: &[u8], text: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(domain);
        mac.update(text);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Finding id: 128 bits of sha256 over the model's hash, the input's key and the frame.
pub fn finding_id(model: &ModelRef, input: &InputKey, frame: u32) -> String {
    let mut h = Sha256::new();
    h.update(ID_DOMAIN.as_bytes());
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
}
