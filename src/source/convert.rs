//! Camera buffers to luma: the pure part of live video. Every V4L2 pixel format bedside reads
//! becomes one 8-bit grey frame, cropped to the region the board profile names (the
//! ultrasound sector, without the cart's menus and overlays), in full range (0 black, 255
//! white) — the form the models were trained on.
//!
//! Kept free of any device so that it can be tested on recorded buffers against references
//! made by other software (ffmpeg, Pillow): `tests/fixtures/video/`.

use serde::Deserialize;

/// The capture formats bedside converts (V4L2 fourcc in the comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PixelFormat {
    /// `YUYV`: packed 4:2:2, Y0 U Y1 V.
    Yuyv,
    /// `UYVY`: packed 4:2:2, U Y0 V Y1.
    Uyvy,
    /// `NV12`: Y plane, then interleaved CbCr at half resolution both ways.
    Nv12,
    /// `GREY`: 8-bit luma only.
    Grey,
    /// `MJPG`: one JPEG per frame (most USB capture sticks).
    #[serde(rename = "MJPG")]
    Mjpeg,
}

impl PixelFormat {
    pub const ALL: [PixelFormat; 5] = [
        PixelFormat::Yuyv,
        PixelFormat::Uyvy,
        PixelFormat::Nv12,
        PixelFormat::Grey,
        PixelFormat::Mjpeg,
    ];

    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Uyvy => *b"UYVY",
            PixelFormat::Nv12 => *b"NV12",
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }

    pub fn from_fourcc(code: [u8; 4]) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.fourcc() == code)
    }

    /// The quantization V4L2 means by "default" for this format: limited (16–235) for
    /// Y'CbCr video, full for grey and JPEG (JFIF).
    pub fn default_range(self) -> Range {
        match self {
            PixelFormat::Yuyv | PixelFormat::Uyvy | PixelFormat::Nv12 => Range::Limited,
            PixelFormat::Grey | PixelFormat::Mjpeg => Range::Full,
        }
    }

    /// Bytes per line of the (first) plane when the driver pads nothing.
    pub fn min_stride(self, width: u32) -> usize {
        match self {
            PixelFormat::Yuyv | PixelFormat::Uyvy => width as usize * 2,
            PixelFormat::Nv12 | PixelFormat::Grey => width as usize,
            PixelFormat::Mjpeg => 0,
        }
    }
}

impl std::fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.fourcc()).unwrap_or("?"))
    }
}

/// Luma quantization range of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Range {
    /// Studio swing: black 16, white 235 (BT.601/709 video).
    Limited,
    /// 0–255.
    Full,
}

/// A rectangle of the frame, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "[u32; 4]")]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl TryFrom<[u32; 4]> for Rect {
    type Error = String;
    fn try_from([x, y, width, height]: [u32; 4]) -> Result<Self, String> {
        if width == 0 || height == 0 {
            return Err(format!("crop [{x}, {y}, {width}, {height}] is empty"));
        }
        Ok(Rect {
            x,
            y,
            width,
            height,
        })
    }
}

impl Rect {
    pub fn full(width: u32, height: u32) -> Self {
        Rect {
            x: 0,
            y: 0,
            width,
            height,
        }
    }

    pub fn pixels(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// True when the rectangle lies inside a `width` × `height` frame.
    pub fn fits(&self, width: u32, height: u32) -> bool {
        self.x as u64 + self.width as u64 <= width as u64
            && self.y as u64 + self.height as u64 <= height as u64
    }
}

/// How one stream's buffers are laid out, as negotiated with the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes per line of the first plane (V4L2 `bytesperline`); ignored for MJPEG.
    pub stride: usize,
    pub range: Range,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("{format} buffer of {got} bytes, {want} expected for {width}x{height}")]
    Short {
        format: PixelFormat,
        got: usize,
        want: usize,
        width: u32,
        height: u32,
    },
    #[error("crop {crop:?} does not fit a {width}x{height} frame")]
    Crop { crop: Rect, width: u32, height: u32 },
    #[error("output holds {got} pixels, the crop has {want}")]
    Output { got: usize, want: usize },
    #[error("MJPEG frame: {0}")]
    Jpeg(String),
    #[error("MJPEG frame is {got_w}x{got_h}, the stream was negotiated at {width}x{height}")]
    JpegSize {
        got_w: u32,
        got_h: u32,
        width: u32,
        height: u32,
    },
}

/// Converts camera buffers of one layout; owns the scratch a format needs (the whole
/// decoded JPEG for MJPEG), allocated once when the stream starts.
pub struct Converter {
    layout: Layout,
    crop: Rect,
    /// Luma value → full-range luma.
    lut: [u8; 256],
    jpeg: Option<Jpeg>,
}

struct Jpeg {
    handle: crate::dicom::turbo::Handle,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Converter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Converter")
            .field("layout", &self.layout)
            .field("crop", &self.crop)
            .finish()
    }
}

impl Converter {
    pub fn new(layout: Layout, crop: Rect) -> Result<Self, ConvertError> {
        if !crop.fits(layout.width, layout.height) {
            return Err(ConvertError::Crop {
                crop,
                width: layout.width,
                height: layout.height,
            });
        }
        let jpeg = match layout.format {
            PixelFormat::Mjpeg => Some(Jpeg {
                handle: crate::dicom::turbo::Handle::decompressor().map_err(ConvertError::Jpeg)?,
                scratch: vec![0; layout.width as usize * layout.height as usize],
            }),
            _ => None,
        };
        Ok(Converter {
            layout,
            crop,
            lut: range_lut(layout.range),
            jpeg,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn crop(&self) -> Rect {
        self.crop
    }

    /// Writes the crop's luma, row-major, into `out` (exactly `crop.pixels()` long).
    /// `buf` is one whole buffer as the driver filled it (`bytesused` bytes).
    pub fn to_luma(&mut self, buf: &[u8], out: &mut [u8]) -> Result<(), ConvertError> {
        let (layout, crop) = (self.layout, self.crop);
        if out.len() != crop.pixels() {
            return Err(ConvertError::Output {
                got: out.len(),
                want: crop.pixels(),
            });
        }
        let short = |want: usize| ConvertError::Short {
            format: layout.format,
            got: buf.len(),
            want,
            width: layout.width,
            height: layout.height,
        };
        let (cw, ch) = (crop.width as usize, crop.height as usize);
        let (cx, cy) = (crop.x as usize, crop.y as usize);
        let stride = layout.stride.max(layout.format.min_stride(layout.width));
        let mut plane = |bytes_per_px: usize, offset: usize| -> Result<(), ConvertError> {
            // The last line needs only its pixels, not its padding.
            let want = stride * (layout.height as usize - 1) + layout.width as usize * bytes_per_px;
            if buf.len() < want {
                return Err(short(want));
            }
            for (r, row) in out.chunks_exact_mut(cw).enumerate() {
                let start = (cy + r) * stride + cx * bytes_per_px + offset;
                let src = &buf[start..start + (cw - 1) * bytes_per_px + 1];
                for (o, &y) in row.iter_mut().zip(src.iter().step_by(bytes_per_px)) {
                    *o = self.lut[y as usize];
                }
            }
            Ok(())
        };
        match layout.format {
            PixelFormat::Yuyv => plane(2, 0)?,
            PixelFormat::Uyvy => plane(2, 1)?,
            // NV12 and GREY: luma is the first plane, one byte per pixel; the chroma plane
            // after it is not needed.
            PixelFormat::Nv12 | PixelFormat::Grey => plane(1, 0)?,
            PixelFormat::Mjpeg => {
                let jpeg = self.jpeg.as_mut().expect("MJPEG converter has a decoder");
                decode_jpeg_grey(jpeg, buf, layout.width, layout.height)?;
                let w = layout.width as usize;
                for (r, row) in out.chunks_exact_mut(cw).enumerate() {
                    let start = (cy + r) * w + cx;
                    for (o, &y) in row.iter_mut().zip(&jpeg.scratch[start..start + cw]) {
                        *o = self.lut[y as usize];
                    }
                }
            }
        }
        let _ = ch;
        Ok(())
    }
}

/// Decodes a baseline JPEG straight to its luma (TurboJPEG's grey output: the Y channel, no
/// colour conversion) into the preallocated scratch.
fn decode_jpeg_grey(
    jpeg: &mut Jpeg,
    buf: &[u8],
    width: u32,
    height: u32,
) -> Result<(), ConvertError> {
    use turbojpeg_sys as tj;
    let h = jpeg.handle.raw();
    // SAFETY: `buf` is valid for its length; the scratch holds width*height bytes and is
    // only written after the header says the image is exactly that size.
    unsafe {
        if tj::tj3DecompressHeader(h, buf.as_ptr(), buf.len() as _) != 0 {
            return Err(ConvertError::Jpeg(jpeg.handle.error()));
        }
        let got_w = tj::tj3Get(h, tj::TJPARAM_TJPARAM_JPEGWIDTH as i32);
        let got_h = tj::tj3Get(h, tj::TJPARAM_TJPARAM_JPEGHEIGHT as i32);
        if got_w != width as i32 || got_h != height as i32 {
            return Err(ConvertError::JpegSize {
                got_w: got_w.max(0) as u32,
                got_h: got_h.max(0) as u32,
                width,
                height,
            });
        }
        let status = tj::tj3Decompress8(
            h,
            buf.as_ptr(),
            buf.len() as _,
            jpeg.scratch.as_mut_ptr(),
            0,
            tj::TJPF_TJPF_GRAY,
        );
        // A warning too (data cut short, a corrupt segment) loses the frame: a half-grey
        // image must not reach a model. The next frame comes a frame period later.
        if status != 0 {
            return Err(ConvertError::Jpeg(jpeg.handle.error()));
        }
    }
    Ok(())
}

/// Limited range: 16 → 0, 235 → 255, rounded, clamped (what ffmpeg's swscale and every
/// player do with studio-swing luma).
fn range_lut(range: Range) -> [u8; 256] {
    let mut lut = [0u8; 256];
    for (v, o) in lut.iter_mut().enumerate() {
        *o = match range {
            Range::Full => v as u8,
            Range::Limited => (((v as f32 - 16.0) * 255.0 / 219.0).round()).clamp(0.0, 255.0) as u8,
        };
    }
    lut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(format: PixelFormat, w: u32, h: u32, range: Range) -> Layout {
        Layout {
            format,
            width: w,
            height: h,
            stride: format.min_stride(w),
            range,
        }
    }

    #[test]
    fn yuyv_and_uyvy_take_every_luma_sample() {
        // 4x2: Y = 10 * index, chroma 128.
        let ys: Vec<u8> = (0..8).map(|i| i * 10 + 20).collect();
        let mut yuyv = Vec::new();
        let mut uyvy = Vec::new();
        for p in ys.chunks(2) {
            yuyv.extend_from_slice(&[p[0], 128, p[1], 128]);
            uyvy.extend_from_slice(&[128, p[0], 128, p[1]]);
        }
        for (fmt, buf) in [(PixelFormat::Yuyv, &yuyv), (PixelFormat::Uyvy, &uyvy)] {
            let mut c = Converter::new(layout(fmt, 4, 2, Range::Full), Rect::full(4, 2)).unwrap();
            let mut out = [0u8; 8];
            c.to_luma(buf, &mut out).unwrap();
            assert_eq!(out.to_vec(), ys, "{fmt}");
            let mut c = Converter::new(
                layout(fmt, 4, 2, Range::Full),
                Rect::try_from([1, 1, 2, 1]).unwrap(),
            )
            .unwrap();
            let mut out = [0u8; 2];
            c.to_luma(buf, &mut out).unwrap();
            assert_eq!(out, [ys[5], ys[6]], "{fmt} crop");
        }
    }

    #[test]
    fn padded_stride_is_skipped() {
        let mut l = layout(PixelFormat::Grey, 3, 2, Range::Full);
        l.stride = 8;
        let buf = [1, 2, 3, 0, 0, 0, 0, 0, 4, 5, 6];
        let mut c = Converter::new(l, Rect::full(3, 2)).unwrap();
        let mut out = [0u8; 6];
        c.to_luma(&buf, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn limited_range_expands_to_full() {
        let lut = range_lut(Range::Limited);
        assert_eq!(
            (lut[0], lut[16], lut[126], lut[235], lut[255]),
            (0, 0, 128, 255, 255)
        );
    }

    #[test]
    fn short_buffers_and_bad_crops_are_errors() {
        let l = layout(PixelFormat::Yuyv, 4, 2, Range::Full);
        let mut c = Converter::new(l, Rect::full(4, 2)).unwrap();
        let mut out = [0u8; 8];
        let e = c.to_luma(&[0; 15], &mut out).unwrap_err();
        assert!(
            matches!(
                e,
                ConvertError::Short {
                    got: 15,
                    want: 16,
                    ..
                }
            ),
            "{e}"
        );
        assert!(Converter::new(l, Rect::try_from([2, 0, 3, 2]).unwrap()).is_err());
        assert!(Rect::try_from([0, 0, 0, 2]).is_err());
    }

    #[test]
    fn broken_jpeg_is_an_error_not_a_panic() {
        let l = layout(PixelFormat::Mjpeg, 16, 16, Range::Full);
        let mut c = Converter::new(l, Rect::full(16, 16)).unwrap();
        let mut out = [0u8; 256];
        assert!(matches!(
            c.to_luma(b"not a jpeg", &mut out),
            Err(ConvertError::Jpeg(_))
        ));
    }
}
