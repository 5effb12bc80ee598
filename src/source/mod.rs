//! Where images come from. Every source produces the same [`Image`], so preparation,
//! inference and findings never need to know whether pixels came from a file, a DICOM
//! association or a camera.

pub mod camera;
pub mod convert;
pub mod replay;
pub mod scp;
pub mod spool;
pub mod v4l2;
pub mod watch;

use serde::Serialize;

/// How an image reached bedside; carried into the finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// `bedside infer FILE`.
    File,
    /// The daemon's inbox folder.
    WatchFolder,
    /// Received by the daemon's DICOM C-STORE SCP.
    DicomScp,
    /// Live video from a V4L2 capture device.
    V4l2,
    /// Live video replayed from a recording (demos, tests, benchmarks).
    Replay,
}

impl SourceKind {
    /// The name a finding gives the source (its JSON form), for file names.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::WatchFolder => "watch-folder",
            SourceKind::DicomScp => "dicom-scp",
            SourceKind::V4l2 => "v4l2",
            SourceKind::Replay => "replay",
        }
    }
}

/// Whether the smallest value is shown black (MONOCHROME2) or white (MONOCHROME1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Photometric {
    Monochrome1,
    Monochrome2,
}

/// VOI LUT function of a window (PS3.3 C.11.2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

/// How modality values become display values: a window, or a VOI LUT table (PS3.3 C.11.2).
#[derive(Debug, Clone, PartialEq)]
pub enum Voi {
    Window(Window),
    Lut(VoiLut),
}

/// A VOI LUT table: values at or below `first` map to `data[0]`, at or above
/// `first + data.len() - 1` to the last entry; entries are `bits` wide.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiLut {
    pub first: i32,
    pub bits: u8,
    pub data: Vec<u16>,
}

/// A VOI window in modality units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub center: f64,
    pub width: f64,
    pub function: VoiFunction,
}

/// A DICOM SOP Instance UID. It identifies one image of one patient, so it is kept out of
/// logs and debug output: findings carry only its keyed hash.
#[derive(Clone, PartialEq, Eq)]
pub struct SopInstanceUid(String);

impl SopInstanceUid {
    pub fn new(uid: impl Into<String>) -> Self {
        Self(uid.into())
    }

    /// The UID itself; for hashing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SopInstanceUid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SopInstanceUid(<redacted>)")
    }
}

/// What is known of an image's origin, without anything that identifies the patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    pub modality: Option<String>,
    pub sop_instance_uid: Option<SopInstanceUid>,
    /// Number of frames in the object; bedside reads the first.
    pub frames: u32,
}

/// One grey image in modality units (after the Modality LUT), with what a viewer needs to
/// display it: its photometric interpretation and its own VOI window, if any.
#[derive(Debug, Clone)]
pub struct Image {
    pub rows: u32,
    pub cols: u32,
    /// Row-major, `rows * cols` values.
    /// `NaN` marks padding (Pixel Padding Value): no image there, shown black.
    pub pixels: Vec<f32>,
    pub photometric: Photometric,
    /// The object's first VOI transformation, if it has one.
    pub voi: Option<Voi>,
    /// Which frame of the object this is (0 for single-frame objects).
    pub frame: u32,
    /// Row and column spacing in mm (Pixel Spacing, else Imager Pixel Spacing).
    pub pixel_spacing_mm: Option<[f64; 2]>,
    pub provenance: Provenance,
}
