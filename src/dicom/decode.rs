//! Reading a DICOM file and decoding its frames into modality units — the one place every
//! DICOM source (file, watch folder, C-STORE SCP) turns pixel data into an [`Image`].
//!
//! dicom-pixeldata does the transfer-syntax work (native, RLE, JPEG baseline/extended/
//! lossless, deflate, and with the cargo features JPEG-LS and JPEG 2000) and gives stored
//! values with Bits Stored and signedness applied; this module applies Pixel Padding, the
//! Modality LUT (Sequence or rescale) and picks the first VOI LUT or window. The VOI and
//! MONOCHROME1 are applied by [`crate::prepare`], shared by every source, cameras included.

use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::{
    ConvertOptions, ModalityLutOption, PhotometricInterpretation, PixelDecoder,
    PixelRepresentation, PlanarConfiguration, VoiLutFunction,
};

use crate::source::{
    Image, Modality, ModalityTransform, Photometric, Pixels, Provenance, SopInstanceUid, Stored,
    Voi, VoiFunction, VoiLut, Window,
};

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
    pub(crate) fn with_path(self, p: &Path) -> Self {
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

/// Limits on one DICOM input, checked before anything large is allocated. The board
/// profile's `[memory]` sets them; these are its defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_rows: u32,
    pub max_cols: u32,
    pub max_frames: u32,
    pub max_file_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_rows: 4096,
            max_cols: 4096,
            max_frames: 2000,
            max_file_bytes: 256 << 20,
        }
    }
}

/// Reads a Part-10 file and decodes its first frame.
pub fn read_file(path: &Path) -> Result<Image, DecodeError> {
    let obj = open_file(path)?;
    decode_frame(&obj, 0).map_err(|e| e.with_path(path))
}

/// Refuses a file larger than `max_bytes` before reading it (it would be read whole).
pub fn check_file_size(path: &Path, max_bytes: u64) -> Result<(), DecodeError> {
    let len = std::fs::metadata(path)
        .map_err(|e| DecodeError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .len();
    if len > max_bytes {
        return Err(DecodeError::Unsupported {
            path: Some(path.to_owned()),
            reason: format!(
                "the file is {:.1} MiB; this board reads at most {} MiB (memory.max_file_mib)",
                len as f64 / 1048576.0,
                max_bytes >> 20
            ),
        });
    }
    Ok(())
}

/// Refuses an object whose header announces more than the board plans for (rows, columns,
/// frames), before any pixel is decoded: a header of a few bytes can claim gigabytes.
pub fn check_limits(obj: &DefaultDicomObject, limits: &ImageLimits) -> Result<(), DecodeError> {
    let dim = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_int::<u64>().ok())
            .unwrap_or(0)
    };
    let (rows, cols, bits) = (
        dim(tags::ROWS),
        dim(tags::COLUMNS),
        dim(tags::BITS_ALLOCATED),
    );
    let frames = number_of_frames(obj) as u64;
    if rows > limits.max_rows as u64
        || cols > limits.max_cols as u64
        || frames > limits.max_frames as u64
    {
        return Err(DecodeError::Unsupported {
            path: None,
            reason: format!(
                "the header announces {rows}x{cols} x {frames} frame(s) of {bits} bits ({:.1} MiB of pixels); this board plans for at most {}x{} x {} frames (memory.max_image_rows/cols, max_frames): refused before decoding",
                (rows * cols * frames * bits.max(8) / 8) as f64 / 1048576.0,
                limits.max_rows,
                limits.max_cols,
                limits.max_frames
            ),
        });
    }
    Ok(())
}

/// Reads a Part-10 file (its pixel data still encoded), to decode frames one by one, within
/// the default limits ([`ImageLimits::default`]: tools on a workstation). The daemon opens
/// with its board's limit: [`open_file_within`].
pub fn open_file(path: &Path) -> Result<DefaultDicomObject, DecodeError> {
    open_file_within(path, ImageLimits::default().max_file_bytes)
}

/// Reads a Part-10 file of at most `max_bytes` (`memory.max_file_mib`; a deflated data set
/// may inflate to as much and no more), its pixel data still encoded. Refused before anything
/// is allocated for it: a larger file, and a declared length the bytes cannot hold.
pub fn open_file_within(path: &Path, max_bytes: u64) -> Result<DefaultDicomObject, DecodeError> {
    check_file_size(path, max_bytes)?;
    let read = |reason: String| DecodeError::Read {
        path: path.to_owned(),
        reason,
    };
    // Read whole (the memory plan counts memory.max_file_mib for it), every length checked
    // against the bytes there are before dicom-rs sizes a buffer from it (dicom::lengths).
    let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
    let read_bytes =
        super::lengths::check_file(&bytes, max_bytes).map_err(|e| read(e.to_string()))?;
    // From the magic code on (dicom-rs refuses a file without one, as before).
    let magic = super::lengths::magic_code_at(&bytes).unwrap_or(0);
    // And should the check and dicom-rs ever disagree again, no single buffer larger than a
    // few times what there is to read (`alloc::capped`): text decoded to UTF-8 takes up to 3
    // bytes for each byte read, and a growing string up to twice what it holds; 8 for both.
    let cap = read_bytes.saturating_mul(8).saturating_add(1 << 20);
    crate::alloc::capped(cap, || {
        dicom_object::OpenFileOptions::new()
            .read_preamble(dicom_object::file::ReadPreamble::Never)
            .from_reader(&bytes[magic..])
    })
    .map_err(|e| read(error_chain(&e)))
}

/// Decodes the first frame of a DICOM object into modality units.
pub fn decode_object(obj: &DefaultDicomObject) -> Result<Image, DecodeError> {
    decode_frame(obj, 0)
}

/// The number of frames in an object (1 when it does not say).
pub fn frame_count(obj: &DefaultDicomObject) -> u32 {
    number_of_frames(obj)
}

/// Decodes one frame into modality units, the way a viewer starts from it: stored values,
/// then Pixel Padding marked (`NaN`), then the Modality LUT (a Modality LUT Sequence, else
/// Rescale Slope/Intercept); the first VOI LUT or window is carried for [`crate::prepare`].
/// Colour images become luma (ITU-R BT.601) in [0, 1].
pub fn decode_frame(obj: &DefaultDicomObject, frame: u32) -> Result<Image, DecodeError> {
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
    let frames = number_of_frames(obj);
    if frame >= frames {
        return Err(unsupported(format!(
            "frame {frame} asked of an object with {frames}"
        )));
    }

    if let Some(image) = native_ybr_422(obj, frame, rows, cols)? {
        return Ok(image);
    }
    // libjpeg-turbo (grey lossless and 12-bit JPEG), CharLS (grey JPEG-LS) and bedside's
    // RLE decoder write straight into the samples; the attributes come from a stand-in of the header
    // (`stand_in`), so nothing full-size is copied.
    let direct = if super::turbo::applies(obj) {
        Some(contained("the JPEG decoder", || {
            super::turbo::decode(obj, frame, frames)
        })?)
    } else if super::jpegls::applies(obj) {
        Some(contained("the JPEG-LS decoder", || {
            super::jpegls::decode(obj, frame, frames)
        })?)
    } else if super::rle::applies(obj) {
        Some(contained("the RLE decoder", || {
            super::rle::decode(obj, frame, frames, rows as usize, cols as usize)
                .map(|samples| (rows as u32, cols as u32, samples))
        })?)
    } else {
        None
    };
    if let Some(decoded) = direct {
        let (r, c, samples) =
            decoded.map_err(|reason| DecodeError::Pixels { path: None, reason })?;
        if r as u64 != rows || c as u64 != cols {
            return Err(DecodeError::Pixels {
                path: None,
                reason: format!("the stream is {r}x{c}, the header says {rows}x{cols}"),
            });
        }
        let header = stand_in(obj, frames);
        let attrs = contained("the pixel decoder", || {
            header.decode_pixel_data_frame(frame)
        })?
        .map_err(pixels_err)?;
        let (pixels, photometric, voi) = grey(obj, &attrs, frame, samples)?;
        return Ok(Image {
            rows: r,
            cols: c,
            pixels,
            photometric,
            voi,
            frame,
            pixel_spacing_mm: pixel_spacing(obj),
            provenance: provenance(obj),
        });
    }

    // A decoder must never take the daemon down with it: a panic inside a codec on a
    // hostile or broken file becomes an ordinary decode error.
    let decoded = contained("the pixel decoder", || obj.decode_pixel_data_frame(frame))?
        .map_err(pixels_err)?;
    let (rows, cols) = (decoded.rows(), decoded.columns());
    if rows == 0 || cols == 0 {
        return Err(unsupported(format!("empty image ({rows}x{cols})")));
    }
    let n = rows as usize * cols as usize;
    let short = |got: usize, per: usize| DecodeError::Pixels {
        path: None,
        reason: format!(
            "{got} samples for a {rows}x{cols} frame of {per} sample(s) per pixel: the pixel data is shorter than the image"
        ),
    };

    let (pixels, photometric, voi) = match (
        decoded.samples_per_pixel(),
        decoded.photometric_interpretation(),
    ) {
        (
            1,
            p @ (PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2),
        ) => {
            if decoded.bits_allocated() <= 16 {
                let data = decoded.data();
                let samples: Vec<u16> = if decoded.bits_allocated() <= 8 {
                    data.iter().map(|&b| b as u16).collect()
                } else {
                    data.chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect()
                };
                if samples.len() != n {
                    return Err(short(samples.len(), 1));
                }
                grey(obj, &decoded, frame, samples)?
            } else {
                // 32-bit data: rare (dose maps, float images); kept as values.
                let options = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
                let values: Vec<f32> = decoded
                    .to_vec_frame_with_options(0, &options)
                    .map_err(pixels_err)?;
                if values.len() != n {
                    return Err(short(values.len(), 1));
                }
                let modality = modality_of(obj, &decoded, frame)?;
                // A 32-bit rescale keeps its precision; a LUT or padding sees integers.
                let values = values
                    .into_iter()
                    .map(|v| match &modality.transform {
                        ModalityTransform::Rescale { slope, intercept }
                            if modality.padding.is_none() =>
                        {
                            (v as f64 * slope + intercept) as f32
                        }
                        _ => modality.apply(v as i32),
                    })
                    .collect();
                let voi = first_voi(&decoded).map_err(pixels_err)?;
                (Pixels::Values(values), photometric_of(p), voi)
            }
        }
        (3, p) => {
            let max = ((1u64 << decoded.bits_stored().clamp(1, 16)) - 1) as f32;
            let luma: Vec<f32> = colour_luma(&decoded, p, n)
                .map_err(|reason| DecodeError::Pixels { path: None, reason })?
                .into_iter()
                .map(|y| y / max)
                .collect();
            // Luma is already display values: the identity window over [0, 1].
            (
                Pixels::Values(luma),
                Photometric::Monochrome2,
                Some(identity_voi()),
            )
        }
        (spp, p) => {
            return Err(unsupported(format!(
                "{spp} samples per pixel with photometric interpretation {p}"
            )));
        }
    };

    let provenance = provenance(obj);
    Ok(Image {
        rows,
        cols,
        pixels,
        photometric,
        voi,
        frame,
        pixel_spacing_mm: pixel_spacing(obj),
        provenance,
    })
}

/// Uncompressed YBR_FULL_422 (two pixels in four samples: Y0 Y1 Cb Cr), which
/// dicom-pixeldata 0.10 sizes as if it had three samples per pixel and refuses: its luma is
/// its Y samples, read here straight from the Pixel Data element.
fn native_ybr_422(
    obj: &DefaultDicomObject,
    frame: u32,
    rows: u64,
    cols: u64,
) -> Result<Option<Image>, DecodeError> {
    let is_422 =
        string_of(obj, tags::PHOTOMETRIC_INTERPRETATION).as_deref() == Some("YBR_FULL_422");
    let native = !obj
        .meta()
        .transfer_syntax()
        .starts_with("1.2.840.10008.1.2.4")
        && obj.meta().transfer_syntax().trim_end_matches('\0') != "1.2.840.10008.1.2.5";
    if !is_422 || !native {
        return Ok(None);
    }
    let bits_allocated = obj
        .element(tags::BITS_ALLOCATED)
        .ok()
        .and_then(|e| e.to_int::<u16>().ok())
        .unwrap_or(8);
    let bits_stored = obj
        .element(tags::BITS_STORED)
        .ok()
        .and_then(|e| e.to_int::<u16>().ok())
        .unwrap_or(bits_allocated);
    let bytes = bits_allocated.div_ceil(8) as usize;
    let n = (rows * cols) as usize;
    let fail = |reason: String| DecodeError::Pixels { path: None, reason };
    let data = obj
        .element(tags::PIXEL_DATA)
        .map_err(|_| fail("no Pixel Data".into()))?
        .to_bytes()
        .map_err(|e| fail(e.to_string()))?;
    let len = n * 2 * bytes;
    let start = len * frame as usize;
    let Some(frame_bytes) = data.get(start..start + len) else {
        return Err(fail(format!(
            "{} bytes of YBR_FULL_422 pixel data, frame {frame} needs bytes {start}..{}: the pixel data is shorter than the image",
            data.len(),
            start + len
        )));
    };
    let max = ((1u32 << bits_stored.clamp(1, 16)) - 1) as f32;
    let sample = |i: usize| -> f32 {
        if bytes == 1 {
            frame_bytes[i] as f32
        } else {
            u16::from_le_bytes([frame_bytes[2 * i], frame_bytes[2 * i + 1]]) as f32
        }
    };
    let pixels = Pixels::Values((0..n).map(|i| sample((i / 2) * 4 + i % 2) / max).collect());
    Ok(Some(Image {
        rows: rows as u32,
        cols: cols as u32,
        pixels,
        photometric: Photometric::Monochrome2,
        voi: Some(identity_voi()),
        frame,
        pixel_spacing_mm: pixel_spacing(obj),
        provenance: provenance(obj),
    }))
}

/// Display values already in [0, 1] (luma): the identity window.
fn identity_voi() -> Voi {
    Voi::Window(Window {
        center: 0.5,
        width: 1.0,
        function: VoiFunction::LinearExact,
    })
}

fn provenance(obj: &DefaultDicomObject) -> Provenance {
    Provenance {
        modality: string_of(obj, tags::MODALITY),
        sop_instance_uid: string_of(obj, tags::SOP_INSTANCE_UID)
            .or_else(|| Some(obj.meta().media_storage_sop_instance_uid().to_owned()))
            .map(|u| u.trim_end_matches(['\0', ' ']).to_owned())
            .filter(|u| !u.is_empty())
            .map(SopInstanceUid::new),
        frames: number_of_frames(obj),
    }
}

/// Luma samples (BT.601, in stored units) of one decoded colour frame. Native planar RGB is
/// read here from the raw samples (dicom-pixeldata 0.10 refuses it); native YBR_FULL_422
/// never gets this far ([`native_ybr_422`]), and compressed 4:2:2 arrives upsampled.
fn colour_luma(
    decoded: &dicom_pixeldata::DecodedPixelData<'_>,
    p: &PhotometricInterpretation,
    n: usize,
) -> Result<Vec<f32>, String> {
    let bytes = decoded.bits_allocated().div_ceil(8) as usize;
    let data = decoded.data();
    let sample = |i: usize| -> f32 {
        if bytes == 1 {
            data[i] as f32
        } else {
            u16::from_le_bytes([data[2 * i], data[2 * i + 1]]) as f32
        }
    };
    let ybr = matches!(
        p,
        PhotometricInterpretation::YbrFull | PhotometricInterpretation::YbrFull422
    );
    // Y of full-range YBR is BT.601 luma already.
    let luma = |r: f32, g: f32, b: f32| {
        if ybr {
            r
        } else {
            0.299 * r + 0.587 * g + 0.114 * b
        }
    };
    let short = |have: usize, need: usize| {
        format!(
            "{have} bytes of colour pixel data where {need} are needed: the pixel data is shorter than the image"
        )
    };
    if decoded.planar_configuration() == PlanarConfiguration::PixelFirst && bytes <= 2 {
        if data.len() < 3 * n * bytes {
            return Err(short(data.len(), 3 * n * bytes));
        }
        return Ok((0..n)
            .map(|i| luma(sample(i), sample(n + i), sample(2 * n + i)))
            .collect());
    }
    let rgb: Vec<f32> = decoded.to_vec_frame(0).map_err(|e| error_chain(&e))?;
    if rgb.len() != 3 * n {
        return Err(short(rgb.len(), 3 * n));
    }
    Ok(rgb
        .chunks_exact(3)
        .map(|s| luma(s[0], s[1], s[2]))
        .collect())
}

fn photometric_of(p: &PhotometricInterpretation) -> Photometric {
    if *p == PhotometricInterpretation::Monochrome1 {
        Photometric::Monochrome1
    } else {
        Photometric::Monochrome2
    }
}

/// One grey frame's stored samples (one per pixel, as the codec gave them) as an image's
/// pixels: Bits Stored and signedness applied, the Modality transform and the first VOI
/// read from `attrs` (the decoded frame, or the header's stand-in).
fn grey(
    obj: &DefaultDicomObject,
    attrs: &dicom_pixeldata::DecodedPixelData<'_>,
    frame: u32,
    mut samples: Vec<u16>,
) -> Result<(Pixels, Photometric, Option<Voi>), DecodeError> {
    // Some codecs (CharLS on signed data with fewer than 16 bits stored) hand back the bit
    // pattern unsigned, others sign-extend: sign-extend or mask to Bits Stored, as a viewer
    // does.
    let bits = attrs.bits_stored().clamp(1, 16) as u32;
    let signed = attrs.pixel_representation() == PixelRepresentation::Signed;
    if signed {
        let shift = 16 - bits;
        for s in samples.iter_mut() {
            *s = (((*s << shift) as i16) >> shift) as u16;
        }
    } else if bits < 16 {
        let mask = ((1u32 << bits) - 1) as u16;
        for s in samples.iter_mut() {
            *s &= mask;
        }
    }
    let modality = modality_of(obj, attrs, frame)?;
    let voi = first_voi(attrs).map_err(|e| DecodeError::Pixels {
        path: None,
        reason: error_chain(&e),
    })?;
    Ok((
        Pixels::Stored(Stored {
            samples,
            signed,
            modality,
        }),
        photometric_of(attrs.photometric_interpretation()),
        voi,
    ))
}

/// Pixel Padding and the Modality transform of one frame: a Modality LUT Sequence, else
/// Rescale Slope/Intercept (per frame when the object has them per frame).
fn modality_of(
    obj: &DefaultDicomObject,
    attrs: &dicom_pixeldata::DecodedPixelData<'_>,
    frame: u32,
) -> Result<Modality, DecodeError> {
    let transform = match modality_lut(obj)
        .map_err(|reason| DecodeError::Unsupported { path: None, reason })?
    {
        Some(lut) => lut,
        None => attrs
            .rescale()
            .ok()
            .and_then(|r| r.get(frame as usize).or_else(|| r.first()).copied())
            .map(|r| ModalityTransform::Rescale {
                slope: r.slope,
                intercept: r.intercept,
            })
            .unwrap_or_default(),
    };
    Ok(Modality {
        padding: padding_range(obj),
        transform,
    })
}

/// Stored values that mean "no image here": Pixel Padding Value, up to Pixel Padding Range
/// Limit when given.
fn padding_range(obj: &InMemDicomObject) -> Option<(i32, i32)> {
    let value = |tag| obj.element(tag).ok().and_then(|e| e.to_int::<i32>().ok());
    let pad = value(tags::PIXEL_PADDING_VALUE)?;
    let limit = value(tags::PIXEL_PADDING_RANGE_LIMIT).unwrap_or(pad);
    Some((pad.min(limit), pad.max(limit)))
}

/// A Modality LUT table (PS3.3 C.11.1), which replaces Rescale Slope/Intercept when present.
fn modality_lut(obj: &InMemDicomObject) -> Result<Option<ModalityTransform>, String> {
    let Ok(seq) = obj.element(tags::MODALITY_LUT_SEQUENCE) else {
        return Ok(None);
    };
    let Some(item) = seq.items().and_then(|i| i.first()) else {
        return Ok(None);
    };
    let descriptor: Vec<i32> = item
        .element(tags::LUT_DESCRIPTOR)
        .map_err(|_| "Modality LUT Sequence without LUT Descriptor".to_string())?
        .to_multi_int::<i32>()
        .map_err(|e| format!("Modality LUT Descriptor: {e}"))?;
    if descriptor.len() != 3 {
        return Err(format!(
            "Modality LUT Descriptor has {} values",
            descriptor.len()
        ));
    }
    let entries = if descriptor[0] == 0 {
        65536
    } else {
        descriptor[0] as usize & 0xFFFF
    };
    // The first mapped value is US or SS as the pixels are; a 16-bit pattern above 32767
    // read as unsigned but meant signed is what viewers undo.
    let first = descriptor[1];
    let data: Vec<u16> = item
        .element(tags::LUT_DATA)
        .map_err(|_| "Modality LUT Sequence without LUT Data".to_string())?
        .to_multi_int::<u16>()
        .map_err(|e| format!("Modality LUT Data: {e}"))?;
    if data.len() < entries || data.is_empty() {
        return Err(format!(
            "Modality LUT Data has {} entries, its descriptor says {entries}",
            data.len()
        ));
    }
    Ok(Some(ModalityTransform::Lut {
        first,
        data: data[..entries].to_vec(),
    }))
}

/// The first VOI transformation the object declares, as a viewer opens it: a VOI LUT
/// Sequence wins over windows (PS3.3 C.11.2).
fn first_voi(
    decoded: &dicom_pixeldata::DecodedPixelData<'_>,
) -> Result<Option<Voi>, dicom_pixeldata::Error> {
    if let Some(lut) = decoded.voi_lut_sequence()?.and_then(|l| l.first())
        && !lut.data.is_empty()
    {
        return Ok(Some(Voi::Lut(VoiLut {
            first: lut.min_pixel_value,
            bits: lut.bits_stored,
            data: lut.data.clone(),
        })));
    }
    Ok(first_window(decoded)?.map(Voi::Window))
}

fn pixel_spacing(obj: &InMemDicomObject) -> Option<[f64; 2]> {
    [tags::PIXEL_SPACING, tags::IMAGER_PIXEL_SPACING]
        .into_iter()
        .find_map(|tag| {
            let v: Vec<f64> = obj.element(tag).ok()?.to_multi_float64().ok()?;
            (v.len() == 2 && v.iter().all(|x| x.is_finite() && *x > 0.0)).then(|| [v[0], v[1]])
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

/// A stand-in of `obj` for reading its pixel attributes through dicom-pixeldata (which
/// gives rescale, windows and VOI LUTs, per frame where the object has them, only from a
/// decoded frame): every element but the pixel data, which becomes `frames` uncompressed
/// 1×1 frames. Costs a few bytes per frame instead of a second full-size copy.
fn stand_in(obj: &DefaultDicomObject, frames: u32) -> DefaultDicomObject {
    let bits_allocated = obj
        .element(tags::BITS_ALLOCATED)
        .ok()
        .and_then(|e| e.to_int::<u16>().ok())
        .unwrap_or(16);
    let mut header = InMemDicomObject::from_element_iter(
        obj.iter()
            .filter(|e| e.header().tag != tags::PIXEL_DATA)
            .cloned(),
    );
    let bytes = frames as usize * if bits_allocated <= 8 { 1 } else { 2 };
    let vr = if bits_allocated <= 8 { VR::OB } else { VR::OW };
    header.put(DataElement::new(
        tags::PIXEL_DATA,
        vr,
        PrimitiveValue::from(vec![0u8; bytes.next_multiple_of(2)]),
    ));
    for tag in [tags::ROWS, tags::COLUMNS] {
        header.put(DataElement::new(tag, VR::US, PrimitiveValue::from(1u16)));
    }
    let mut meta = obj.meta().clone();
    meta.transfer_syntax = uids::EXPLICIT_VR_LITTLE_ENDIAN.to_owned();
    header.with_exact_meta(meta)
}

/// [`contain_panic`], a panic becoming the decode error "`what` failed on this object".
fn contained<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, DecodeError> {
    contain_panic(f).map_err(|msg| DecodeError::Pixels {
        path: None,
        reason: format!("{what} failed on this object ({msg})"),
    })
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

/// Wraps the panic hook in place so that it is not called for the panics bedside contains (a
/// decoder's, turned into a decode error) — for harnesses whose own hook takes every panic for
/// a crash, as libFuzzer's does (it aborts). Uncontained panics still reach that hook.
pub fn skip_contained_panics_in_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !CONTAINED.with(|c| c.get()) {
            previous(info);
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
