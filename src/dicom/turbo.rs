//! Grey JPEG through libjpeg-turbo 3's TurboJPEG API where dicom-pixeldata's decoder
//! (jpeg-decoder) falls short: 12-bit lossy JPEG (Extended, .51), which it cannot read at
//! all, and lossless JPEG (.57, .70), which libjpeg-turbo reads faster (see
//! `benches/scp.sh`).
//!
//! The frame is decoded here straight into the stored samples; every attribute (rescale,
//! windows, padding, signedness) still goes through the one path in [`super::decode`].

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;

/// Transfer syntax JPEG Extended (Process 2 & 4).
pub const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

/// JPEG Lossless, process 14, and its first-order-prediction (SV1) form.
pub const JPEG_LOSSLESS: [&str; 2] = ["1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"];

/// True for objects this module decodes: grey JPEG Extended with more than 8 bits, and grey
/// lossless JPEG.
pub fn applies(obj: &DefaultDicomObject) -> bool {
    let ts = obj.meta().transfer_syntax().trim_end_matches('\0');
    let int = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_int::<u16>().ok())
            .unwrap_or(0)
    };
    let grey = int(tags::SAMPLES_PER_PIXEL) <= 1;
    grey && ((ts == JPEG_EXTENDED && int(tags::BITS_STORED) > 8) || JPEG_LOSSLESS.contains(&ts))
}

/// Owns a TurboJPEG decompressor (also used by the live video path for MJPEG frames).
pub(crate) struct Handle(turbojpeg_sys::tjhandle);

// SAFETY: a TurboJPEG handle is not tied to the thread that made it; it is only ever used
// through `&mut`/owned access, one call at a time.
unsafe impl Send for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { turbojpeg_sys::tj3Destroy(self.0) }
    }
}

impl Handle {
    /// A new decompressor.
    pub(crate) fn decompressor() -> Result<Self, String> {
        // SAFETY: plain FFI constructor; a null handle is an error.
        let handle =
            unsafe { turbojpeg_sys::tj3Init(turbojpeg_sys::TJINIT_TJINIT_DECOMPRESS as i32) };
        if handle.is_null() {
            return Err("cannot start the TurboJPEG decompressor".into());
        }
        Ok(Handle(handle))
    }

    pub(crate) fn raw(&self) -> turbojpeg_sys::tjhandle {
        self.0
    }

    pub(crate) fn error(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
        unsafe {
            std::ffi::CStr::from_ptr(turbojpeg_sys::tj3GetErrorStr(self.0))
                .to_string_lossy()
                .into_owned()
        }
    }
}

/// Decodes a grey JPEG of any precision TurboJPEG reads (2–16 bits) into (rows, cols,
/// samples).
fn decode_gray(jpeg: &[u8]) -> Result<(u32, u32, Vec<u16>), String> {
    use turbojpeg_sys as tj;
    // SAFETY: plain FFI calls; every buffer passed is valid for the length given, and the
    // output buffer holds width * height samples of the grey pixel format asked for, in the
    // sample type of the function called (8, 12 or 16 bits).
    unsafe {
        let h = Handle::decompressor()?;
        if tj::tj3DecompressHeader(h.0, jpeg.as_ptr(), jpeg.len() as _) != 0 {
            return Err(format!("JPEG header: {}", h.error()));
        }
        let width = tj::tj3Get(h.0, tj::TJPARAM_TJPARAM_JPEGWIDTH as i32);
        let height = tj::tj3Get(h.0, tj::TJPARAM_TJPARAM_JPEGHEIGHT as i32);
        let precision = tj::tj3Get(h.0, tj::TJPARAM_TJPARAM_PRECISION as i32);
        if width <= 0 || height <= 0 {
            return Err(format!("JPEG of {width}x{height}"));
        }
        let n = width as usize * height as usize;
        let (ptr, len) = (jpeg.as_ptr(), jpeg.len() as _);
        let gray = tj::TJPF_TJPF_GRAY;
        let (status, samples) = match precision {
            2..=8 => {
                let mut out = vec![0u8; n];
                let s = tj::tj3Decompress8(h.0, ptr, len, out.as_mut_ptr(), 0, gray);
                (s, out.into_iter().map(u16::from).collect())
            }
            9..=12 => {
                let mut out = vec![0i16; n];
                let s = tj::tj3Decompress12(h.0, ptr, len, out.as_mut_ptr(), 0, gray);
                (s, out.into_iter().map(|v| v as u16).collect())
            }
            13..=16 => {
                let mut out = vec![0u16; n];
                let s = tj::tj3Decompress16(h.0, ptr, len, out.as_mut_ptr(), 0, gray);
                (s, out)
            }
            p => return Err(format!("a JPEG of {p}-bit precision")),
        };
        if status != 0 {
            return Err(format!("{precision}-bit JPEG: {}", h.error()));
        }
        Ok((height as u32, width as u32, samples))
    }
}

/// Decodes frame `frame` of `obj` into (rows, cols, stored samples).
pub fn decode(obj: &DefaultDicomObject, frame: u32, frames: u32) -> Result<Samples, String> {
    let jpeg = super::encapsulated::frame_bytes(obj, frame, frames)?;
    decode_gray(&jpeg)
}

/// (rows, cols, one stored sample per pixel).
pub type Samples = (u32, u32, Vec<u16>);
