//! From an [`Image`] in modality units to the model's input tensor: VOI window, MONOCHROME1
//! inversion, resize, normalise. One code path for every source, so the model always sees
//! the image the way it was trained on and the way a viewer would show it.

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::F32;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};

use crate::model::manifest::{NamedWindow, Preprocess, ResizeKind, WindowChoice};
use crate::source::{Image, Photometric, Voi, VoiFunction, Window};

#[derive(Debug, thiserror::Error)]
#[error("cannot prepare a {rows}x{cols} image: {reason}")]
pub struct PrepareError {
    rows: u32,
    cols: u32,
    reason: String,
}

/// Prepares images for one model; keeps its buffers between images.
pub struct Preparer {
    spec: Preprocess,
    resizer: Resizer,
    display: Vec<F32>,
    resized: TypedImage<'static, F32>,
    tensor: Vec<f32>,
    /// Luma → display value for video frames, and the window it was built for.
    luma_lut: (Option<Window>, [f32; 256]),
}

impl Preparer {
    /// `height`/`width`: the model's input size.
    pub fn new(spec: Preprocess, height: usize, width: usize) -> Self {
        Preparer {
            spec,
            resizer: Resizer::new(),
            display: Vec::new(),
            resized: TypedImage::new(width as u32, height as u32),
            tensor: vec![0.0; height * width],
            luma_lut: (None, [0.0; 256]),
        }
    }

    /// Prepares one 8-bit luma video frame (`width` × `height`, row-major, 0 black): the
    /// manifest's window maps the 256 luma values through a table built once, then resize and
    /// normalise as for [`Preparer::prepare`].
    /// Allocates nothing once the first frame of a size has been seen.
    pub fn prepare_luma(
        &mut self,
        luma: &[u8],
        width: u32,
        height: u32,
    ) -> Result<&[f32], PrepareError> {
        let err = |reason: String| PrepareError {
            rows: height,
            cols: width,
            reason,
        };
        if luma.len() != width as usize * height as usize {
            return Err(err(format!("{} pixels given", luma.len())));
        }
        // Video has no VOI of its own: "dicom" means as shown, 0..255 → 0..1.
        let voi = match self.spec.window {
            WindowChoice::Named(NamedWindow::Dicom) => Window {
                center: 128.0,
                width: 256.0,
                function: VoiFunction::Linear,
            },
            WindowChoice::Fixed { center, width } => Window {
                center,
                width,
                function: VoiFunction::Linear,
            },
        };
        if self.luma_lut.0 != Some(voi) {
            for (v, o) in self.luma_lut.1.iter_mut().enumerate() {
                *o = apply_window(voi, v as f64) as f32;
            }
            self.luma_lut.0 = Some(voi);
        }
        let lut = &self.luma_lut.1;
        self.display.clear();
        self.display
            .extend(luma.iter().map(|&v| F32::new(lut[v as usize])));
        self.resize_normalise(width, height).map_err(err)
    }

    /// Prepares `image` and returns the NCHW tensor (one channel), valid until the next call.
    pub fn prepare(&mut self, image: &Image) -> Result<&[f32], PrepareError> {
        let err = |reason: String| PrepareError {
            rows: image.rows,
            cols: image.cols,
            reason,
        };
        let n = image.rows as usize * image.cols as usize;
        if image.pixels.len() != n {
            return Err(err(format!("{} pixels given", image.pixels.len())));
        }
        display_into(image, &self.spec.window, &mut self.display);
        self.resize_normalise(image.cols, image.rows).map_err(err)
    }

    /// Resizes `self.display` (`width` × `height`) to the model's size and normalises it.
    fn resize_normalise(&mut self, width: u32, height: u32) -> Result<&[f32], String> {
        let src = TypedImageRef::new(width, height, &self.display).map_err(|e| e.to_string())?;
        let ResizeKind::BilinearAntialias = self.spec.resize;
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        self.resizer
            .resize_typed(&src, &mut self.resized, &options)
            .map_err(|e| e.to_string())?;
        let (mean, std) = (self.spec.mean, self.spec.std);
        for (t, p) in self.tensor.iter_mut().zip(self.resized.pixels()) {
            *t = (p.0 - mean) / std;
        }
        Ok(&self.tensor)
    }
}

/// The image as a viewer shows it, in [0, 1] (0 black), row-major: the VOI the manifest
/// chooses (the object's own, else its full range), MONOCHROME1 inverted, padding black.
/// This is what every model's input is resized from; tests compare it with DCMTK and pydicom.
pub fn display(image: &Image, choice: &WindowChoice) -> Vec<f32> {
    let mut out = Vec::new();
    display_into(image, choice, &mut out);
    out.into_iter().map(|p| p.0).collect()
}

fn display_into(image: &Image, choice: &WindowChoice, out: &mut Vec<F32>) {
    let map = DisplayMap::new(image, choice);
    out.clear();
    out.extend(image.pixels.iter().map(|&v| F32::new(map.apply(v))));
}

/// One stored pixel value to its display value in [0, 1], as [`display`] maps them: for
/// drawing a picture without a full-size display copy of the image (overlays).
#[derive(Debug, Clone)]
pub struct DisplayMap {
    voi: Voi,
    invert: bool,
}

impl DisplayMap {
    pub fn new(image: &Image, choice: &WindowChoice) -> Self {
        let voi = match choice {
            WindowChoice::Named(NamedWindow::Dicom) => image
                .voi
                .clone()
                .unwrap_or_else(|| Voi::Window(full_range(&image.pixels))),
            WindowChoice::Fixed { center, width } => Voi::Window(Window {
                center: *center,
                width: *width,
                function: VoiFunction::Linear,
            }),
        };
        Self {
            voi,
            invert: image.photometric == Photometric::Monochrome1,
        }
    }

    pub fn apply(&self, v: f32) -> f32 {
        if v.is_nan() {
            0.0 // padding: no image here, shown black
        } else {
            let y = apply_voi(&self.voi, v as f64) as f32;
            if self.invert { 1.0 - y } else { y }
        }
    }
}

/// A window spanning the image's whole range (padding aside), used when the object
/// declares none.
fn full_range(pixels: &[f32]) -> Window {
    let (lo, hi) = pixels
        .iter()
        .filter(|v| !v.is_nan())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 0.0) };
    let (lo, hi) = (lo as f64, hi as f64);
    Window {
        center: (lo + hi) / 2.0,
        width: (hi - lo).max(1.0),
        function: VoiFunction::LinearExact,
    }
}

/// A VOI transformation onto display values in [0, 1]: a window, or a VOI LUT table whose
/// entries span 0..=2^bits-1.
pub fn apply_voi(voi: &Voi, x: f64) -> f64 {
    match voi {
        Voi::Window(w) => apply_window(*w, x),
        Voi::Lut(lut) => {
            let last = lut.data.len() as i64 - 1;
            let i = (x.round() as i64 - lut.first as i64).clamp(0, last);
            let max = ((1u32 << lut.bits.clamp(1, 16)) - 1) as f64;
            (lut.data[i as usize] as f64 / max).min(1.0)
        }
    }
}

/// The VOI LUT functions of PS3.3 C.11.2.1.2 and C.11.2.1.3, onto display values in [0, 1].
pub fn apply_window(w: Window, x: f64) -> f64 {
    let (c, width) = (w.center, w.width);
    match w.function {
        VoiFunction::Linear => {
            // Defined for width >= 1; width 1 is a threshold at c - 0.5.
            let width = width.max(1.0);
            let lo = c - 0.5 - (width - 1.0) / 2.0;
            let hi = c - 0.5 + (width - 1.0) / 2.0;
            if x <= lo {
                0.0
            } else if x > hi {
                1.0
            } else {
                (x - (c - 0.5)) / (width - 1.0) + 0.5
            }
        }
        VoiFunction::LinearExact => {
            if x <= c - width / 2.0 {
                0.0
            } else if x > c + width / 2.0 {
                1.0
            } else {
                (x - c) / width + 0.5
            }
        }
        VoiFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / width).exp()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Provenance;

    fn lin(c: f64, w: f64) -> Window {
        Window {
            center: c,
            width: w,
            function: VoiFunction::Linear,
        }
    }

    #[test]
    fn linear_window_follows_the_standard() {
        // PS3.3 C.11.2.1.2.1 example: c=2048, w=4096 maps 0..4095 onto the full range.
        let w = lin(2048.0, 4096.0);
        assert_eq!(apply_window(w, 0.0), 0.0);
        assert_eq!(apply_window(w, 4095.0), 1.0);
        assert!((apply_window(w, 2047.5) - 0.5).abs() < 1e-12);
        // Outside the window it clips.
        let w = lin(100.0, 11.0);
        assert_eq!(apply_window(w, 94.5), 0.0);
        assert_eq!(apply_window(w, 104.6), 1.0);
        assert!((apply_window(w, 99.5) - 0.5).abs() < 1e-12);
        // Width 1 is a threshold, not a division by zero.
        let w = lin(10.0, 1.0);
        assert_eq!(apply_window(w, 9.5), 0.0);
        assert_eq!(apply_window(w, 9.6), 1.0);
    }

    #[test]
    fn linear_exact_and_sigmoid() {
        let w = Window {
            center: 0.0,
            width: 10.0,
            function: VoiFunction::LinearExact,
        };
        assert_eq!(apply_window(w, -5.0), 0.0);
        assert!((apply_window(w, 2.5) - 0.75).abs() < 1e-12);
        let w = Window {
            function: VoiFunction::Sigmoid,
            ..w
        };
        assert!((apply_window(w, 0.0) - 0.5).abs() < 1e-12);
        assert!(apply_window(w, 50.0) > 0.999);
    }

    fn image(pixels: Vec<f32>, rows: u32, cols: u32, photometric: Photometric) -> Image {
        Image {
            rows,
            cols,
            pixels,
            photometric,
            voi: Some(Voi::Window(lin(50.0, 101.0))),
            frame: 0,
            pixel_spacing_mm: None,
            provenance: Provenance {
                modality: None,
                sop_instance_uid: None,
                frames: 1,
            },
        }
    }

    fn spec() -> Preprocess {
        Preprocess {
            window: WindowChoice::Named(NamedWindow::Dicom),
            resize: ResizeKind::BilinearAntialias,
            mean: 0.5,
            std: 0.25,
        }
    }

    #[test]
    fn monochrome1_displays_like_its_inverse_in_monochrome2() {
        // A horizontal ramp, and the same ramp stored inverted (100 - v) as MONOCHROME1 with
        // the window mirrored: a viewer shows both identically, so must bedside. Under the
        // LINEAR function the mirror of centre c is 100 + 1 - c (its -0.5 offset flips).
        let (rows, cols) = (40u32, 60u32);
        let ramp: Vec<f32> = (0..rows * cols)
            .map(|i| (i % cols) as f32 * 100.0 / 59.0)
            .collect();
        let mono2 = image(ramp.clone(), rows, cols, Photometric::Monochrome2);
        let mut mono1 = image(
            ramp.iter().map(|v| 100.0 - v).collect(),
            rows,
            cols,
            Photometric::Monochrome1,
        );
        mono1.voi = Some(Voi::Window(lin(51.0, 101.0)));
        let mut p = Preparer::new(spec(), 16, 16);
        let a = p.prepare(&mono2).unwrap().to_vec();
        let b = p.prepare(&mono1).unwrap().to_vec();
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-4, "max diff {max}");
        // Left is dark, right is bright, normalised with mean 0.5 / std 0.25.
        assert!(a[0] < -1.5 && a[15] > 1.5, "{} {}", a[0], a[15]);
    }

    #[test]
    fn no_window_uses_the_full_range() {
        let mut img = image(
            vec![1000.0, 3000.0, 1000.0, 3000.0],
            2,
            2,
            Photometric::Monochrome2,
        );
        img.voi = None;
        let mut p = Preparer::new(spec(), 2, 2);
        let t = p.prepare(&img).unwrap();
        assert_eq!(t, &[-2.0, 2.0, -2.0, 2.0]);
    }
}
