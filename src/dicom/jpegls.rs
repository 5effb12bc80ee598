//! Grey JPEG-LS (lossless and near-lossless) through CharLS, decoded straight into the
//! stored samples.
//!
//! dicom-pixeldata calls the same CharLS, but through the `charls` crate, which decodes into
//! a new buffer that dicom-pixeldata then appends to another, and bedside copied that into
//! its samples again: three full-size buffers for one frame. Here CharLS writes into the
//! samples themselves (`charls_jpegls_decoder_decode_to_buffer`). Colour JPEG-LS stays with
//! dicom-pixeldata. Without the `jpeg-ls` feature nothing applies and such objects are
//! refused as before.

use dicom_object::DefaultDicomObject;

/// Transfer syntaxes JPEG-LS Lossless and JPEG-LS Near-Lossless.
#[cfg(feature = "jpeg-ls")]
const JPEG_LS: [&str; 2] = ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"];

/// Whether `obj` is a grey JPEG-LS image this module decodes.
#[cfg(feature = "jpeg-ls")]
pub fn applies(obj: &DefaultDicomObject) -> bool {
    use dicom_dictionary_std::tags;
    let ts = obj.meta().transfer_syntax().trim_end_matches('\0');
    let int = |tag| obj.element(tag).ok().and_then(|e| e.to_int::<u16>().ok());
    JPEG_LS.contains(&ts)
        && int(tags::SAMPLES_PER_PIXEL).unwrap_or(1) == 1
        && matches!(int(tags::BITS_ALLOCATED), Some(8 | 16))
}

#[cfg(not(feature = "jpeg-ls"))]
pub fn applies(_: &DefaultDicomObject) -> bool {
    false
}

#[cfg(not(feature = "jpeg-ls"))]
pub fn decode(_: &DefaultDicomObject, _: u32, _: u32) -> Result<super::turbo::Samples, String> {
    Err("this build has no JPEG-LS decoder (cargo feature jpeg-ls)".into())
}

/// Frame `frame` of `obj` (which [`applies`]) as (rows, cols, stored samples).
#[cfg(feature = "jpeg-ls")]
pub fn decode(
    obj: &DefaultDicomObject,
    frame: u32,
    frames: u32,
) -> Result<super::turbo::Samples, String> {
    let stream = super::encapsulated::frame_bytes(obj, frame, frames)?;
    let decoder = Decoder::new()?;
    decoder.samples(&stream)
}

/// Owns a CharLS decoder.
#[cfg(feature = "jpeg-ls")]
struct Decoder(*mut charls_sys::charls_jpegls_decoder);

#[cfg(feature = "jpeg-ls")]
impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: made by charls_jpegls_decoder_create, destroyed once.
        unsafe { charls_sys::charls_jpegls_decoder_destroy(self.0) }
    }
}

#[cfg(feature = "jpeg-ls")]
impl Decoder {
    fn new() -> Result<Self, String> {
        // SAFETY: plain FFI constructor; null is an error.
        let d = unsafe { charls_sys::charls_jpegls_decoder_create() };
        if d.is_null() {
            return Err("cannot start the CharLS decoder".into());
        }
        Ok(Decoder(d))
    }

    /// CharLS's message for a failed call.
    fn check(what: &str, code: charls_sys::charls_jpegls_errc) -> Result<(), String> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: CharLS returns a static NUL-terminated message for every code.
        let msg = unsafe {
            std::ffi::CStr::from_ptr(charls_sys::charls_get_error_message(code))
                .to_string_lossy()
                .into_owned()
        };
        Err(format!("JPEG-LS {what}: {msg}"))
    }

    /// Decodes the frame whose header was read into `size` bytes at `dst`, rows packed.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `size` bytes.
    unsafe fn decode_into(&self, dst: *mut std::ffi::c_void, size: usize) -> Result<(), String> {
        // SAFETY: the decoder is valid and its source set; the caller vouches for `dst`.
        Self::check("decode", unsafe {
            charls_sys::charls_jpegls_decoder_decode_to_buffer(self.0, dst, size, 0)
        })
    }

    /// Decodes `stream` (one grey frame) into (rows, cols, samples).
    fn samples(&self, stream: &[u8]) -> Result<super::turbo::Samples, String> {
        use charls_sys as c;
        // SAFETY: the decoder is valid; `stream` outlives every call that reads it (the
        // decode is the last); the frame info is a plain C struct CharLS fills in.
        let info = unsafe {
            Self::check(
                "stream",
                c::charls_jpegls_decoder_set_source_buffer(
                    self.0,
                    stream.as_ptr().cast(),
                    stream.len(),
                ),
            )?;
            Self::check("header", c::charls_jpegls_decoder_read_header(self.0))?;
            let mut info: c::charls_frame_info = std::mem::zeroed();
            Self::check(
                "frame info",
                c::charls_jpegls_decoder_get_frame_info(self.0, &mut info),
            )?;
            info
        };
        if info.component_count != 1 {
            return Err(format!(
                "a JPEG-LS frame of {} components where the header says one sample per pixel",
                info.component_count
            ));
        }
        let n = info.width as usize * info.height as usize;
        let bytes = if info.bits_per_sample <= 8 { 1 } else { 2 };
        let mut size = 0usize;
        // SAFETY: as above; `size` is an out parameter.
        unsafe {
            Self::check(
                "size",
                c::charls_jpegls_decoder_get_destination_size(self.0, 0, &mut size),
            )?;
        }
        if size != n * bytes {
            return Err(format!(
                "CharLS wants {size} bytes for {n} samples of {bytes} byte(s)"
            ));
        }
        let samples = if bytes == 2 {
            let mut out = vec![0u16; n];
            // SAFETY: `out` holds exactly `size` bytes (n samples of 2 bytes), which CharLS
            // fills with native-endian 16-bit samples.
            unsafe { self.decode_into(out.as_mut_ptr().cast(), size)? };
            out
        } else {
            let mut out = vec![0u8; n];
            // SAFETY: `out` holds exactly `size` bytes, one per sample.
            unsafe { self.decode_into(out.as_mut_ptr().cast(), size)? };
            out.into_iter().map(u16::from).collect()
        };
        Ok((info.height, info.width, samples))
    }
}

#[cfg(all(test, feature = "jpeg-ls"))]
mod tests {
    use super::*;

    /// pydicom's grey JPEG-LS files decode to what dicom-pixeldata's decoder gives, and a
    /// broken stream is an error.
    #[test]
    fn matches_dicom_pixeldata_on_real_files() {
        use dicom_pixeldata::PixelDecoder;
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pydicom");
        let mut checked = 0;
        for entry in std::fs::read_dir(&data).unwrap() {
            let path = entry.unwrap().path();
            let Ok(obj) = dicom_object::open_file(&path) else {
                continue;
            };
            if !applies(&obj) {
                continue;
            }
            let frames = crate::dicom::decode::frame_count(&obj);
            let theirs = obj.decode_pixel_data_frame(0).unwrap();
            let theirs: Vec<u16> = if theirs.bits_allocated() <= 8 {
                theirs.data().iter().map(|&b| b as u16).collect()
            } else {
                theirs
                    .data()
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect()
            };
            let (_, _, ours) = decode(&obj, 0, frames).unwrap();
            assert_eq!(ours, theirs, "{}", path.display());
            checked += 1;
        }
        assert!(checked >= 2, "only {checked} grey JPEG-LS files");
        let e = Decoder::new()
            .unwrap()
            .samples(&[0xFF, 0xD8, 0xFF, 0xF7, 0, 3]);
        assert!(e.unwrap_err().starts_with("JPEG-LS "));
    }
}
