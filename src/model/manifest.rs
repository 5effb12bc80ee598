//! The model manifest (`models/<name>/model.toml`): everything bedside must know about an
//! ONNX file that the file itself does not say — what its input means, how to prepare an
//! image for it, how to read its output, and which exact bytes were validated.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ModelError;

/// A parsed and validated `model.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: ModelSection,
    pub input: InputSection,
    pub preprocess: Preprocess,
    pub output: OutputSection,
    #[serde(default)]
    pub parity: Option<Parity>,
    #[serde(default)]
    pub memory: Option<MemorySection>,
    /// Detection models: how to read the output grid.
    #[serde(default)]
    pub detection: Option<DetectionSpec>,
    /// Segmentation models: how a thresholded mask becomes regions (defaults when absent).
    #[serde(default)]
    pub segmentation: Option<SegmentationSpec>,
    pub labels: Vec<Label>,
}

/// What the model factory measured of the model's memory (informational; bedside measures
/// its own plan at start).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySection {
    #[serde(default)]
    pub tract_working_bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub id: String,
    pub version: String,
    pub task: Task,
    /// ONNX file, relative to the manifest's folder.
    pub file: PathBuf,
    /// Lowercase hex sha256 of `file`; checked at every load.
    pub sha256: String,
    #[serde(default)]
    pub quantization: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// The fp32 dense model this one was pruned and quantized from (kept for comparison
    /// and benchmarks).
    #[serde(default)]
    pub parent: Option<ParentModel>,
    /// The pruned fp32 model, the int8 model's direct parent, when there is one.
    #[serde(default)]
    pub pruned: Option<ParentModel>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentModel {
    pub file: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Classification,
    /// A per-pixel map per label (`[1, labels, h, w]` logits); findings give the fraction of
    /// the image each label covers and its area when the pixel spacing is known.
    Segmentation,
    /// Boxes from a single-scale grid (`[detection]`, see [`super::detect`]); findings give
    /// each box with its label and score, in image pixels and mm when the spacing is known.
    Detection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    pub name: String,
    /// `[1, 1, H, W]`: one grey image.
    pub shape: Vec<usize>,
    pub layout: Layout,
    /// Which frames of a multi-frame object (an ultrasound cine) the model runs on: `"first"`
    /// (default), `"all"`, or a list of frame indices (those past the end are skipped).
    #[serde(default)]
    pub frames: Frames,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "FramesSpec")]
pub enum Frames {
    #[default]
    First,
    All,
    List(Vec<u32>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FramesSpec {
    Named(String),
    List(Vec<u32>),
}

impl TryFrom<FramesSpec> for Frames {
    type Error = String;
    fn try_from(s: FramesSpec) -> Result<Self, String> {
        match s {
            FramesSpec::Named(n) if n == "first" => Ok(Frames::First),
            FramesSpec::Named(n) if n == "all" => Ok(Frames::All),
            FramesSpec::Named(n) => Err(format!(
                "frames = {n:?}: use \"first\", \"all\" or a list of indices"
            )),
            FramesSpec::List(l) if l.is_empty() => Err("frames = []: name at least one".into()),
            FramesSpec::List(l) => Ok(Frames::List(l)),
        }
    }
}

impl Frames {
    /// The frame indices to run on, of an object with `count` frames.
    pub fn select(&self, count: u32) -> Vec<u32> {
        match self {
            Frames::First => vec![0],
            Frames::All => (0..count.max(1)).collect(),
            Frames::List(l) => l.iter().copied().filter(|&f| f < count.max(1)).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub window: WindowChoice,
    pub resize: ResizeKind,
    pub mean: f32,
    pub std: f32,
}

/// Which VOI window maps the image to display values before the model sees it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum WindowChoice {
    /// `"dicom"`: the image's own first window (as a viewer opens it), or its full range.
    Named(NamedWindow),
    /// `{ center = .., width = .. }` in modality units, overriding the image's.
    Fixed { center: f64, width: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedWindow {
    Dicom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ResizeKind {
    /// Antialiased bilinear, as Pillow's BILINEAR and torch's `antialias=True`.
    #[serde(rename = "bilinear-antialias")]
    BilinearAntialias,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub name: String,
    pub activation: Activation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Softmax,
    /// Independent per-label (or per-pixel) probabilities.
    Sigmoid,
}

/// How far tract may stray from onnxruntime on this model's outputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parity {
    /// Tolerance on the shipped model's outputs.
    pub max_abs: f32,
    /// Tolerance on the fp32 forms (parent, pruned), when they differ from `max_abs`.
    #[serde(default)]
    pub fp32_max_abs: Option<f32>,
    /// Segmentation: the fraction of output pixels whose thresholded class must agree.
    #[serde(default)]
    pub min_mask_agreement: Option<f32>,
    /// Detection: the IoU each box decoded from tract's output must reach with the
    /// matching box from onnxruntime's (same label; same number of boxes).
    #[serde(default)]
    pub min_box_iou: Option<f32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    pub name: String,
    /// Classification: the probability that counts as present. Segmentation: the per-pixel
    /// probability that counts a pixel in the region.
    pub threshold: f32,
    /// Segmentation: the fraction of the image the region must cover to count as present.
    #[serde(default)]
    pub min_fraction: Option<f32>,
    /// The coded concept of the label, for DICOM Structured Reports (SNOMED CT, DCM, …);
    /// without it the report codes the label in bedside's private scheme `99BEDSIDE`.
    #[serde(default)]
    pub code: Option<LabelCode>,
}

/// `code = { value = "36118008", scheme = "SCT", meaning = "Pneumothorax" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelCode {
    pub value: String,
    pub scheme: String,
    pub meaning: String,
}

impl Label {
    /// The score a finding compares with its threshold: a probability for classification,
    /// the region's fraction of the image for segmentation.
    pub fn finding_threshold(&self, task: Task) -> f32 {
        match task {
            Task::Classification | Task::Detection => self.threshold,
            Task::Segmentation => self.min_fraction.unwrap_or(0.0),
        }
    }
}

/// Most labels a model may have: per-frame scores live in fixed arrays of this size, so that
/// scoring a video frame allocates nothing.
pub const MAX_LABELS: usize = 16;

/// Most outline vertices one segmentation finding may carry (labels × regions × points):
/// about 16 bytes each in JSON, so that a finding stays within
/// `crate::finding::MAX_FINDING_BYTES`.
pub const MAX_OUTLINE_VERTICES: usize = 1024;

/// `[detection]` in the manifest: the output grid a detection model promises
/// (`crate::task::detect` decodes it).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionSpec {
    /// Input pixels per output grid cell.
    pub stride: usize,
    /// Boxes of one label overlapping a better one by more than this are dropped.
    pub iou_threshold: f32,
    /// The most boxes one image may yield (after suppression, best first).
    pub max_detections: usize,
}

/// Channels before the label logits in a detection output: objectness, x, y, log w, log h.
pub const BOX_CHANNELS: usize = 5;

/// `[segmentation]` in the manifest: how a label's thresholded mask becomes the regions a
/// finding lists (`crate::task::regions`). Sizes are in the model's output pixels.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentationSpec {
    /// Radius of the square morphological opening applied first (0: none); removes specks
    /// and thin bridges narrower than `2 * opening_px + 1`.
    pub opening_px: u32,
    /// Components smaller than this many pixels are not regions.
    pub min_region_px: u32,
    /// The largest this many regions are listed (the finding counts all of them).
    pub max_regions: usize,
    /// Most vertices of one outline polygon.
    pub outline_points: usize,
    /// First Douglas–Peucker tolerance, doubled until the outline fits `outline_points`.
    pub outline_tolerance_px: f64,
}

impl Default for SegmentationSpec {
    fn default() -> Self {
        Self {
            opening_px: 0,
            min_region_px: 4,
            max_regions: 5,
            outline_points: 32,
            outline_tolerance_px: 0.5,
        }
    }
}

impl DetectionSpec {
    /// The output length a detection model with `labels` labels must have for an input of
    /// `input_hw`, or `None` when the input is not a whole number of strides.
    pub fn expected_len(&self, input_hw: (usize, usize), labels: usize) -> Option<usize> {
        let (h, w) = input_hw;
        (self.stride > 0 && h % self.stride == 0 && w % self.stride == 0)
            .then(|| (BOX_CHANNELS + labels) * (h / self.stride) * (w / self.stride))
    }
}

impl Manifest {
    /// The region rules of a segmentation model: its `[segmentation]` (checked at load to fit
    /// [`MAX_OUTLINE_VERTICES`]), else the defaults with fewer outline points when many labels
    /// would not fit otherwise.
    pub fn segmentation_spec(&self) -> SegmentationSpec {
        self.segmentation.unwrap_or_else(|| {
            let d = SegmentationSpec::default();
            let fit = MAX_OUTLINE_VERTICES / (self.labels.len().max(1) * d.max_regions);
            SegmentationSpec {
                outline_points: fit.clamp(3, d.outline_points),
                ..d
            }
        })
    }

    /// Reads `model.toml` from a model folder and checks that it is coherent.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| ModelError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        manifest
            .validate()
            .map_err(|reason| ModelError::Manifest { path, reason })?;
        Ok(manifest)
    }

    /// Input height and width.
    pub fn input_hw(&self) -> (usize, usize) {
        (self.input.shape[2], self.input.shape[3])
    }

    fn validate(&self) -> Result<(), String> {
        let m = &self.model;
        if m.id.is_empty()
            || !m
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "model.id {:?}: use letters, digits, '-' or '_'",
                m.id
            ));
        }
        if m.version.is_empty() {
            return Err("model.version is empty".into());
        }
        check_sha256("model.sha256", &m.sha256)?;
        if let Some(p) = &m.parent {
            check_sha256("model.parent.sha256", &p.sha256)?;
        }
        if let Some(p) = &m.pruned {
            check_sha256("model.pruned.sha256", &p.sha256)?;
        }
        let s = &self.input.shape;
        if s.len() != 4 || s[0] != 1 || s[1] != 1 || s[2] == 0 || s[3] == 0 {
            return Err(format!(
                "input.shape {s:?}: bedside feeds one grey image, [1, 1, H, W]"
            ));
        }
        let p = &self.preprocess;
        if !(p.std.is_finite() && p.std > 0.0 && p.mean.is_finite()) {
            return Err(format!(
                "preprocess.std must be > 0 and mean finite (mean {}, std {})",
                p.mean, p.std
            ));
        }
        if let WindowChoice::Fixed { width, .. } = p.window
            && width < 1.0
        {
            return Err(format!("preprocess.window.width {width} must be >= 1"));
        }
        if self.labels.is_empty() {
            return Err("no [[labels]]".into());
        }
        if self.labels.len() > MAX_LABELS {
            return Err(format!(
                "{} labels: bedside scores at most {} per model",
                self.labels.len(),
                MAX_LABELS
            ));
        }
        for l in &self.labels {
            if !(0.0..=1.0).contains(&l.threshold) {
                return Err(format!(
                    "label {:?}: threshold {} is not in [0, 1]",
                    l.name, l.threshold
                ));
            }
            if let Some(c) = &l.code
                && (c.value.trim().is_empty()
                    || c.meaning.trim().is_empty()
                    || c.scheme.is_empty()
                    || c.scheme.len() > 16
                    || c.scheme.contains(char::is_whitespace)
                    || c.value.len() > 64)
            {
                return Err(format!(
                    "label {:?}: code needs a value (at most 64 characters), a scheme (at most 16, no spaces) and a meaning",
                    l.name
                ));
            }
            match (m.task, l.min_fraction) {
                (Task::Segmentation, Some(f)) if (0.0..=1.0).contains(&f) => {}
                (Task::Segmentation, f) => {
                    return Err(format!(
                        "label {:?}: a segmentation label needs min_fraction in [0, 1] (got {f:?})",
                        l.name
                    ));
                }
                (Task::Classification | Task::Detection, Some(_)) => {
                    return Err(format!(
                        "label {:?}: min_fraction is for segmentation models",
                        l.name
                    ));
                }
                (Task::Classification | Task::Detection, None) => {}
            }
        }
        match (m.task, self.output.activation) {
            (Task::Segmentation, Activation::Softmax) if self.labels.len() < 2 => {
                return Err("output.activation softmax needs at least two labels".into());
            }
            _ => {}
        }
        match (m.task, &self.detection) {
            (Task::Detection, None) => {
                return Err("a detection model needs a [detection] table (stride, iou_threshold, max_detections)".into());
            }
            (Task::Detection, Some(d)) => {
                if d.expected_len(self.input_hw(), self.labels.len()).is_none() {
                    return Err(format!(
                        "detection.stride {} does not divide the input {:?}",
                        d.stride,
                        self.input_hw()
                    ));
                }
                if !(0.0..=1.0).contains(&d.iou_threshold) || d.max_detections == 0 {
                    return Err(format!(
                        "detection.iou_threshold {} must be in [0, 1] and max_detections {} at least 1",
                        d.iou_threshold, d.max_detections
                    ));
                }
            }
            (_, Some(_)) => return Err("[detection] is for detection models".into()),
            (_, None) => {}
        }
        match (m.task, &self.segmentation) {
            (Task::Segmentation, Some(s)) => {
                let vertices = self.labels.len() * s.max_regions * s.outline_points;
                if vertices > MAX_OUTLINE_VERTICES {
                    return Err(format!(
                        "{} labels x segmentation.max_regions {} x outline_points {} = {vertices} outline vertices; at most {MAX_OUTLINE_VERTICES} fit in a finding",
                        self.labels.len(),
                        s.max_regions,
                        s.outline_points
                    ));
                }
                if s.max_regions == 0
                    || s.outline_points < 3
                    || s.max_regions > 64
                    || s.outline_points > 256
                {
                    return Err(format!(
                        "segmentation.max_regions {} must be in 1..=64 and outline_points {} in 3..=256 (a finding stays small)",
                        s.max_regions, s.outline_points
                    ));
                }
                if !(s.outline_tolerance_px.is_finite() && s.outline_tolerance_px >= 0.0)
                    || s.opening_px > 16
                {
                    return Err(format!(
                        "segmentation.outline_tolerance_px {} must be >= 0 and opening_px {} at most 16",
                        s.outline_tolerance_px, s.opening_px
                    ));
                }
            }
            (_, Some(_)) => return Err("[segmentation] is for segmentation models".into()),
            (_, None) => {}
        }
        if let Some(par) = &self.parity
            && !(par.max_abs.is_finite() && par.max_abs > 0.0)
        {
            return Err(format!("parity.max_abs {} must be > 0", par.max_abs));
        }
        Ok(())
    }
}

fn check_sha256(field: &str, value: &str) -> Result<(), String> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!("{field} {value:?} is not 64 lowercase hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[model]
id = "m"
version = "1"
task = "classification"
file = "model.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[input]
name = "input"
shape = [1, 1, 8, 8]
layout = "NCHW"
[preprocess]
window = "dicom"
resize = "bilinear-antialias"
mean = 0.5
std = 0.25
[output]
name = "logits"
activation = "softmax"
[[labels]]
name = "a"
threshold = 0.5
"#;

    #[test]
    fn parses_and_validates() {
        let m: Manifest = toml::from_str(GOOD).unwrap();
        m.validate().unwrap();
        assert_eq!(m.preprocess.window, WindowChoice::Named(NamedWindow::Dicom));
        assert_eq!(m.input_hw(), (8, 8));
    }

    #[test]
    fn frames_default_to_the_first_and_select_within_the_object() {
        let m: Manifest = toml::from_str(GOOD).unwrap();
        assert_eq!(m.input.frames, Frames::First);
        assert_eq!(m.input.frames.select(40), vec![0]);
        let all: Manifest = toml::from_str(
            &GOOD.replace("layout = \"NCHW\"", "layout = \"NCHW\"\nframes = \"all\""),
        )
        .unwrap();
        assert_eq!(all.input.frames.select(3), vec![0, 1, 2]);
        let some: Manifest = toml::from_str(&GOOD.replace(
            "layout = \"NCHW\"",
            "layout = \"NCHW\"\nframes = [0, 5, 99]",
        ))
        .unwrap();
        assert_eq!(some.input.frames.select(10), vec![0, 5]);
        let bad = toml::from_str::<Manifest>(&GOOD.replace(
            "layout = \"NCHW\"",
            "layout = \"NCHW\"\nframes = \"middle\"",
        ))
        .unwrap_err();
        assert!(bad.to_string().contains("middle"), "{bad}");
    }

    #[test]
    fn fixed_window_parses() {
        let text = GOOD.replace(
            r#"window = "dicom""#,
            "window = { center = 40.0, width = 400.0 }",
        );
        let m: Manifest = toml::from_str(&text).unwrap();
        assert_eq!(
            m.preprocess.window,
            WindowChoice::Fixed {
                center: 40.0,
                width: 400.0
            }
        );
    }

    #[test]
    fn rejects_bad_fields_with_their_name() {
        let bad = GOOD.replace("shape = [1, 1, 8, 8]", "shape = [1, 3, 8, 8]");
        let m: Manifest = toml::from_str(&bad).unwrap();
        assert!(m.validate().unwrap_err().contains("input.shape"));
        let bad = GOOD.replace("threshold = 0.5", "threshold = 1.5");
        let m: Manifest = toml::from_str(&bad).unwrap();
        assert!(m.validate().unwrap_err().contains("threshold"));
        let bad = GOOD.replace("sha256 = \"0000", "sha256 = \"XX00");
        let m: Manifest = toml::from_str(&bad).unwrap();
        assert!(m.validate().unwrap_err().contains("model.sha256"));
        let coded = |code: &str| {
            let text = GOOD.replace(
                "threshold = 0.5",
                &format!("threshold = 0.5\ncode = {code}"),
            );
            toml::from_str::<Manifest>(&text).unwrap().validate()
        };
        coded(r#"{ value = "36118008", scheme = "SCT", meaning = "Pneumothorax" }"#).unwrap();
        let e = coded(r#"{ value = "1", scheme = "S C T", meaning = "x" }"#).unwrap_err();
        assert!(e.contains("code needs"), "{e}");
        assert!(coded(r#"{ value = "", scheme = "SCT", meaning = "x" }"#).is_err());
    }

    #[test]
    fn segmentation_rules_are_checked_and_default_to_fit_a_finding() {
        let seg = GOOD
            .replace(r#"task = "classification""#, r#"task = "segmentation""#)
            .replace(r#"activation = "softmax""#, r#"activation = "sigmoid""#)
            .replace("threshold = 0.5", "threshold = 0.5\nmin_fraction = 0.01");
        let m: Manifest = toml::from_str(&seg).unwrap();
        m.validate().unwrap();
        assert_eq!(m.segmentation_spec(), SegmentationSpec::default());
        let with = |table: &str| -> Result<(), String> {
            let m: Manifest =
                toml::from_str(&seg.replace("[[labels]]", &format!("{table}\n[[labels]]")))
                    .map_err(|e| e.to_string())?;
            m.validate()
        };
        with("[segmentation]\nopening_px = 1\nmax_regions = 3").unwrap();
        let e = with("[segmentation]\nmax_regions = 64\noutline_points = 64").unwrap_err();
        assert!(e.contains("4096 outline vertices"), "{e}");
        let e = with("[segmentation]\noutline_points = 2").unwrap_err();
        assert!(e.contains("outline_points 2"), "{e}");
        assert!(
            with("[segmentation]\nopenning_px = 1")
                .unwrap_err()
                .contains("unknown field")
        );
        let cls: Manifest =
            toml::from_str(&GOOD.replace("[[labels]]", "[segmentation]\n[[labels]]")).unwrap();
        assert!(
            cls.validate()
                .unwrap_err()
                .contains("for segmentation models")
        );
        // Sixteen labels without a table: fewer outline points, within the finding's budget.
        let many: String = (0..16)
            .map(|i| format!("[[labels]]\nname = \"l{i}\"\nthreshold = 0.5\nmin_fraction = 0.01\n"))
            .collect();
        let text = seg[..seg.find("[[labels]]").unwrap()].to_string() + &many;
        let m: Manifest = toml::from_str(&text).unwrap();
        m.validate().unwrap();
        let s = m.segmentation_spec();
        assert!(
            16 * s.max_regions * s.outline_points <= MAX_OUTLINE_VERTICES,
            "{s:?}"
        );
    }
}
