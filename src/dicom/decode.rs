//! Reading a DICOM file and decoding its first frame.
//!
//! dicom-pixeldata does the transfer-syntax work (native, RLE, JPEG baseline/extended/lossless,
//! deflate) and applies the Modality LUT (rescale slope/intercept, Bits Stored, signedness);
//! the VOI window and MONOCHROME1 are applied later by [`crate::prepare`], which is shared by
//! every source.

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::{PhotometricInterpretation, PixelDecoder, VoiLutFunction};

use crate::source::{Image, Photometric, Provenance, SopInstanceUid, VoiFunction, Window};

/// A DICOM object that bedside cannot turn into an image. The message names the file and
/// the reason; it never contains patient data.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot read DICOM file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot decode pixel data{}: {reason}", at(.path))]
    Pixels {
        path: Option<PathBuf>,
        reason: String,
    },
    #[error("unsupported image{}: {reason}", at(.path))]
    Unsupported {
        path: Option<PathBuf>,
        reason: String,
    },
}

fn at(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

impl DecodeError {
    fn with_path(self, p: &Path) -> Self {
        match self {
            DecodeError::Pixels { reason, .. } => DecodeError::Pixels {
                path: Some(p.to_owned()),
                reason,
            },
            DecodeError::Unsupported { reason, .. } => DecodeError::Unsupported {
                path: Some(p.to_owned()),
                reason,
            },
            e => e,
        }
    }
}

/// The largest frame decoded, in samples: 64 M. A 43×43 cm detector at 100 µm is 18.5 M,
/// mammography at 4096×5625 is 23 M; decoding needs about 4 bytes per sample.
pub const MAX_FRAME_SAMPLES: u64 = 64_000_000;

/// Reads a Part-10 file and decodes its first frame.
pub fn read_file(path: &Path) -> Result<Image, DecodeError> {
    let obj = dicom_object::open_file(path).map_err(|e| DecodeError::Read {
        path: path.to_owned(),
        reason: error_chain(&e),
    })?;
    decode_object(&obj).map_err(|e| e.with_path(path))
}

/// Decodes the first frame of a DICOM object into modality units.
pub fn decode_object(obj: &DefaultDicomObject) -> Result<Image, DecodeError> {
    let pixels_err = |e: dicom_pixeldata::Error| DecodeError::Pixels {
        path: None,
        reason: error_chain(&e),
    };
    let unsupported = |reason: String| DecodeError::Unsupported { path: None, reason };

    // Before any decoder allocates: a header can claim an image of gigabytes in a few bytes.
    let dim = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_int::<u64>().ok())
            .unwrap_or(0)
    };
    let (rows, cols, samples) = (
        dim(tags::ROWS),
        dim(tags::COLUMNS),
        dim(tags::SAMPLES_PER_PIXEL).max(1),
    );
    if rows * cols * samples > MAX_FRAME_SAMPLES {
        return Err(unsupported(format!(
            "{rows}x{cols} with {samples} samples per pixel is {} M samples per frame; bedside decodes at most {} M",
            rows * cols * samples / 1_000_000,
            MAX_FRAME_SAMPLES / 1_000_000
        )));
    }

    // A decoder must never take the daemon down with it: a panic inside a codec on a
    // hostile or broken file becomes an ordinary decode error.
    let decoded = contain_panic(|| obj.decode_pixel_data_frame(0))
        .map_err(|msg| DecodeError::Pixels {
            path: None,
            reason: format!("the pixel decoder failed on this object ({msg})"),
        })?
        .map_err(pixels_err)?;

    if decoded.samples_per_pixel() != 1 {
        return Err(unsupported(format!(
            "{} samples per pixel ({}); only grey images are read so far",
            decoded.samples_per_pixel(),
            decoded.photometric_interpretation()
        )));
    }
    let photometric = match decoded.photometric_interpretation() {
        PhotometricInterpretation::Monochrome1 => Photometric::Monochrome1,
        PhotometricInterpretation::Monochrome2 => Photometric::Monochrome2,
        other => return Err(unsupported(format!("photometric interpretation {other}"))),
    };
    let (rows, cols) = (decoded.rows(), decoded.columns());
    if rows == 0 || cols == 0 {
        return Err(unsupported(format!("empty image ({rows}x{cols})")));
    }
    let pixels: Vec<f32> = decoded.to_vec_frame(0).map_err(pixels_err)?;
    if pixels.len() != rows as usize * cols as usize {
        return Err(DecodeError::Pixels {
            path: None,
            reason: format!("{} samples for a {rows}x{cols} frame", pixels.len()),
        });
    }

    let window = first_window(&decoded).map_err(pixels_err)?;
    let provenance = Provenance {
        modality: string_of(obj, tags::MODALITY),
        sop_instance_uid: string_of(obj, tags::SOP_INSTANCE_UID)
            .or_else(|| Some(obj.meta().media_storage_sop_instance_uid().to_owned()))
            .map(|u| u.trim_end_matches(['\0', ' ']).to_owned())
            .filter(|u| !u.is_empty())
            .map(SopInstanceUid::new),
        frames: number_of_frames(obj),
    };
    Ok(Image {
        rows,
        cols,
        pixels,
        photometric,
        window,
        provenance,
    })
}

/// The first VOI window the object declares, as a viewer opens it.
fn first_window(
    decoded: &dicom_pixeldata::DecodedPixelData<'_>,
) -> Result<Option<Window>, dicom_pixeldata::Error> {
    let Some(w) = decoded.window()?.and_then(|w| w.first().copied()) else {
        return Ok(None);
    };
    if !(w.width.is_finite() && w.center.is_finite()) || w.width <= 0.0 {
        return Ok(None);
    }
    let function = match decoded.voi_lut_function()?.and_then(|f| f.first().copied()) {
        Some(VoiLutFunction::LinearExact) => VoiFunction::LinearExact,
        Some(VoiLutFunction::Sigmoid) => VoiFunction::Sigmoid,
        Some(VoiLutFunction::Linear) | None => VoiFunction::Linear,
    };
    Ok(Some(Window {
        center: w.center,
        width: w.width,
        function,
    }))
}

fn string_of(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let value = obj.element(tag).ok()?.to_str().ok()?;
    let value = value.trim_matches(['\0', ' ']);
    (!value.is_empty()).then(|| value.to_owned())
}

fn number_of_frames(obj: &InMemDicomObject) -> u32 {
    obj.element(tags::NUMBER_OF_FRAMES)
        .ok()
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1)
        .max(1)
}

thread_local! {
    static CONTAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(message)`. The panic hook installed by
/// [`install_panic_hook`] stays quiet for contained panics, so the caller's error is the
/// only thing said about it.
fn contain_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CONTAINED.with(|c| c.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into())
    })
}

/// Replaces the default panic message (several lines, with a backtrace hint) by one line,
/// and says nothing for panics that a decoder raised and bedside contained.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if !CONTAINED.with(|c| c.get()) {
            eprintln!("bedside: internal error: {info}");
        }
    }));
}

/// An error and its causes on one line, outermost first.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
