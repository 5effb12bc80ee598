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

/// An image's values, row-major.
///
/// Grey DICOM stays as the stored integers with its Modality transform beside them: a
/// 2048×2560 radiograph is 10 MB of samples instead of 21 MB of floats, and everything that
/// shows it (the model's tensor, the overlay) goes from stored value to display value through
/// one table built per image ([`crate::prepare::DisplayMap`]).
#[derive(Debug, Clone)]
pub enum Pixels {
    Stored(Stored),
    /// Values already in modality units (NIfTI, colour luma, YBR 4:2:2 luma in [0, 1]).
    /// `NaN` marks padding: no image there, shown black.
    Values(Vec<f32>),
}

/// Grey stored values with Bits Stored applied, and how they become modality units.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The samples; when `signed`, each is the two's-complement pattern of an `i16`.
    pub samples: Vec<u16>,
    pub signed: bool,
    pub modality: Modality,
}

/// The Modality transform of PS3.3 C.11.1, with Pixel Padding.
#[derive(Debug, Clone, Default)]
pub struct Modality {
    /// Stored values that mean "no image here" (Pixel Padding Value up to Pixel Padding
    /// Range Limit), inclusive.
    pub padding: Option<(i32, i32)>,
    pub transform: ModalityTransform,
}

#[derive(Debug, Clone)]
pub enum ModalityTransform {
    Rescale {
        slope: f64,
        intercept: f64,
    },
    /// A Modality LUT: stored values at or below `first` map to `data[0]`, beyond the end to
    /// the last entry.
    Lut {
        first: i32,
        data: Vec<u16>,
    },
}

impl Default for ModalityTransform {
    fn default() -> Self {
        ModalityTransform::Rescale {
            slope: 1.0,
            intercept: 0.0,
        }
    }
}

impl Stored {
    /// The stored value of sample `s`.
    pub fn stored(&self, s: u16) -> i32 {
        if self.signed {
            s as i16 as i32
        } else {
            s as i32
        }
    }

    /// A stored value in modality units; `NaN` for padding.
    pub fn value(&self, stored: i32) -> f32 {
        self.modality.apply(stored)
    }
}

impl Modality {
    /// A stored value in modality units; `NaN` for padding.
    pub fn apply(&self, stored: i32) -> f32 {
        if self
            .padding
            .is_some_and(|(lo, hi)| stored >= lo && stored <= hi)
        {
            return f32::NAN;
        }
        match &self.transform {
            ModalityTransform::Rescale { slope, intercept } => {
                (stored as f64 * slope + intercept) as f32
            }
            ModalityTransform::Lut { first, data } => {
                let i = (stored as i64 - *first as i64).clamp(0, data.len() as i64 - 1);
                data[i as usize] as f32
            }
        }
    }
}

impl Pixels {
    pub fn len(&self) -> usize {
        match self {
            Pixels::Stored(s) => s.samples.len(),
            Pixels::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of pixel `i` in modality units (`NaN` for padding).
    pub fn value(&self, i: usize) -> f32 {
        match self {
            Pixels::Stored(s) => s.value(s.stored(s.samples[i])),
            Pixels::Values(v) => v[i],
        }
    }

    /// Every value in modality units, row-major (`NaN` for padding). Computed one by one:
    /// no full-size copy.
    pub fn values(&self) -> impl Iterator<Item = f32> + '_ {
        (0..self.len()).map(|i| self.value(i))
    }
}

/// One grey image in modality units (after the Modality LUT), with what a viewer needs to
/// display it: its photometric interpretation and its own VOI window, if any.
#[derive(Debug, Clone)]
pub struct Image {
    pub rows: u32,
    pub cols: u32,
    /// Row-major, `rows * cols` values.
    pub pixels: Pixels,
    pub photometric: Photometric,
    /// The object's first VOI transformation, if it has one.
    pub voi: Option<Voi>,
    /// Which frame of the object this is (0 for single-frame objects).
    pub frame: u32,
    /// Row and column spacing in mm (Pixel Spacing, else Imager Pixel Spacing).
    pub pixel_spacing_mm: Option<[f64; 2]>,
    pub provenance: Provenance,
}
