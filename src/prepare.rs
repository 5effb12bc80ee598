//! From an [`Image`] to the model's input tensor: VOI window, MONOCHROME1 inversion,
//! resize, normalise. One code path for every source, so the model always sees the image the
//! way it was trained on and the way a viewer would show it.
//!
//! One pass, no full-size copy: every stored value goes through one table (Modality LUT →
//! VOI → MONOCHROME1 → the model's normalisation, at most 65,536 entries, built per image) as
//! its row is read by the antialiased downscale. Normalising before resizing gives the same
//! tensor as after, up to float rounding: the filter's weights sum to 1.

use crate::model::manifest::{NamedWindow, Preprocess, ResizeKind, WindowChoice};
use crate::source::{Image, Photometric, Pixels, Stored, Voi, VoiFunction, Window};

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
    height: usize,
    width: usize,
    resize: Resize,
    /// Stored sample → normalised model input, for the current image.
    table: Vec<f32>,
    tensor: Vec<f32>,
    /// Luma → normalised model input for video frames, and the window it was built for.
    luma_lut: (Option<Window>, [f32; 256]),
}

impl Preparer {
    /// `height`/`width`: the model's input size.
    pub fn new(spec: Preprocess, height: usize, width: usize) -> Self {
        Preparer {
            spec,
            height,
            width,
            resize: Resize::default(),
            table: Vec::new(),
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
        if luma.len() != width as usize * height as usize || width == 0 || height == 0 {
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
            let (mean, std) = (self.spec.mean, self.spec.std);
            for (v, o) in self.luma_lut.1.iter_mut().enumerate() {
                *o = (apply_window(voi, v as f64) as f32 - mean) / std;
            }
            self.luma_lut.0 = Some(voi);
        }
        let lut = &self.luma_lut.1;
        let w = width as usize;
        let ResizeKind::BilinearAntialias = self.spec.resize;
        self.resize.run(
            (w, height as usize),
            (self.width, self.height),
            |y, row| {
                for (o, &v) in row.iter_mut().zip(&luma[y * w..(y + 1) * w]) {
                    *o = lut[v as usize];
                }
            },
            &mut self.tensor,
        );
        Ok(&self.tensor)
    }

    /// Prepares `image` and returns the NCHW tensor (one channel), valid until the next call.
    pub fn prepare(&mut self, image: &Image) -> Result<&[f32], PrepareError> {
        let err = |reason: String| PrepareError {
            rows: image.rows,
            cols: image.cols,
            reason,
        };
        let n = image.rows as usize * image.cols as usize;
        if image.pixels.len() != n || n == 0 {
            return Err(err(format!("{} pixels given", image.pixels.len())));
        }
        let map = DisplayMap::new(image, &self.spec.window);
        let (mean, std) = (self.spec.mean, self.spec.std);
        let w = image.cols as usize;
        let ResizeKind::BilinearAntialias = self.spec.resize;
        let (src, dst) = ((w, image.rows as usize), (self.width, self.height));
        match (&image.pixels, &map.table) {
            (Pixels::Stored(stored), Some(display)) => {
                self.table.clear();
                self.table.extend(display.iter().map(|&d| (d - mean) / std));
                let table = &self.table;
                self.resize.run(
                    src,
                    dst,
                    |y, row| {
                        for (o, &s) in row.iter_mut().zip(&stored.samples[y * w..(y + 1) * w]) {
                            *o = table[s as usize];
                        }
                    },
                    &mut self.tensor,
                );
            }
            (pixels, _) => self.resize.run(
                src,
                dst,
                |y, row| {
                    for (x, o) in row.iter_mut().enumerate() {
                        *o = (map.apply(pixels.value(y * w + x)) - mean) / std;
                    }
                },
                &mut self.tensor,
            ),
        }
        Ok(&self.tensor)
    }
}

/// The image as a viewer shows it, in [0, 1] (0 black), row-major: the VOI the manifest
/// chooses (the object's own, else its full range), MONOCHROME1 inverted, padding black.
/// This is what every model's input is resized from; tests compare it with DCMTK and pydicom.
pub fn display(image: &Image, choice: &WindowChoice) -> Vec<f32> {
    let map = DisplayMap::new(image, choice);
    (0..image.pixels.len())
        .map(|i| map.pixel(&image.pixels, i))
        .collect()
}

/// Stored or modality value to display value in [0, 1], as [`display`] maps them: for
/// drawing a picture without a full-size display copy of the image (overlays, tensors).
#[derive(Debug, Clone)]
pub struct DisplayMap {
    voi: Voi,
    invert: bool,
    /// For stored pixels: the display value of every 16-bit sample pattern.
    table: Option<Vec<f32>>,
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
        let mut map = Self {
            voi,
            invert: image.photometric == Photometric::Monochrome1,
            table: None,
        };
        if let Pixels::Stored(stored) = &image.pixels {
            map.table = Some(
                (0..=u16::MAX)
                    .map(|s| map.apply(stored.value(stored.stored(s))))
                    .collect(),
            );
        }
        map
    }

    /// A value in modality units to its display value (`NaN`, padding, is black).
    pub fn apply(&self, v: f32) -> f32 {
        if v.is_nan() {
            0.0 // padding: no image here, shown black
        } else {
            let y = apply_voi(&self.voi, v as f64) as f32;
            if self.invert { 1.0 - y } else { y }
        }
    }

    /// The display value of pixel `i` of `pixels` (those of the image the map was made for).
    pub fn pixel(&self, pixels: &Pixels, i: usize) -> f32 {
        match (pixels, &self.table) {
            (Pixels::Stored(s), Some(table)) => table[s.samples[i] as usize],
            (p, _) => self.apply(p.value(i)),
        }
    }
}

/// A window spanning the image's whole range (padding aside), used when the object
/// declares none.
fn full_range(pixels: &Pixels) -> Window {
    let (lo, hi) = match pixels {
        Pixels::Values(v) => min_max(v.iter().copied()),
        Pixels::Stored(stored) => min_max(present(stored).map(|v| stored.value(v))),
    };
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 0.0) };
    let (lo, hi) = (lo as f64, hi as f64);
    Window {
        center: (lo + hi) / 2.0,
        width: (hi - lo).max(1.0),
        function: VoiFunction::LinearExact,
    }
}

fn min_max(values: impl Iterator<Item = f32>) -> (f32, f32) {
    values
        .filter(|v| !v.is_nan())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
}

/// The stored values that occur in an image, each once.
fn present(stored: &Stored) -> impl Iterator<Item = i32> + '_ {
    let mut seen = vec![0u64; 1024];
    for &s in &stored.samples {
        seen[s as usize >> 6] |= 1 << (s & 63);
    }
    (0..=u16::MAX)
        .filter(move |&s| seen[s as usize >> 6] & (1 << (s & 63)) != 0)
        .map(|s| stored.stored(s))
}

/// The antialiased bilinear resize (a triangle filter widened by the scale when shrinking,
/// as PIL and fast_image_resize do), separable: each source row is filled by the caller,
/// filtered horizontally into a buffer of `src_h × dst_w`, then columns filtered vertically.
/// Memory: one source row and that buffer (1.8 MB for 2048 rows into 224 columns).
#[derive(Default)]
struct Resize {
    row: Vec<f32>,
    across: Vec<f32>,
    h: Axis,
    v: Axis,
}

impl Resize {
    fn run(
        &mut self,
        (sw, sh): (usize, usize),
        (dw, dh): (usize, usize),
        mut fill: impl FnMut(usize, &mut [f32]),
        out: &mut [f32],
    ) {
        self.h.plan(sw, dw);
        self.v.plan(sh, dh);
        self.row.resize(sw, 0.0);
        self.across.resize(sh * dw, 0.0);
        for y in 0..sh {
            fill(y, &mut self.row);
            let across = &mut self.across[y * dw..(y + 1) * dw];
            for (x, o) in across.iter_mut().enumerate() {
                let (start, weights) = self.h.taps(x);
                *o = weights
                    .iter()
                    .zip(&self.row[start..start + weights.len()])
                    .map(|(w, v)| w * v)
                    .sum();
            }
        }
        for (y, out_row) in out.chunks_exact_mut(dw).take(dh).enumerate() {
            out_row.fill(0.0);
            let (start, weights) = self.v.taps(y);
            for (k, w) in weights.iter().enumerate() {
                let src = &self.across[(start + k) * dw..(start + k + 1) * dw];
                for (o, v) in out_row.iter_mut().zip(src) {
                    *o += w * v;
                }
            }
        }
    }
}

/// The filter taps of one axis: for each output index, the first input index and the
/// normalised weights from there.
#[derive(Default)]
struct Axis {
    sizes: (usize, usize),
    /// (first input index, offset into `weights`, number of taps)
    bounds: Vec<(usize, usize, usize)>,
    weights: Vec<f32>,
}

impl Axis {
    fn plan(&mut self, input: usize, output: usize) {
        if self.sizes == (input, output) && !self.bounds.is_empty() {
            return;
        }
        self.sizes = (input, output);
        self.bounds.clear();
        self.weights.clear();
        let scale = input as f64 / output as f64;
        let filter_scale = scale.max(1.0);
        let radius = filter_scale; // the triangle's support is 1
        for o in 0..output {
            let center = (o as f64 + 0.5) * scale;
            let lo = (center - radius).floor().max(0.0) as usize;
            let hi = ((center + radius).ceil() as usize).min(input);
            let taps: Vec<f64> = (lo..hi)
                .map(|i| triangle((i as f64 + 0.5 - center) / filter_scale))
                .collect();
            // Zero weights at either end are dropped.
            let first = taps.iter().position(|&w| w != 0.0).unwrap_or(0);
            let last = taps
                .iter()
                .rposition(|&w| w != 0.0)
                .map_or(first, |l| l + 1);
            let sum: f64 = taps[first..last].iter().sum();
            let start = self.weights.len();
            self.weights.extend(
                taps[first..last]
                    .iter()
                    .map(|w| if sum != 0.0 { (w / sum) as f32 } else { 0.0 }),
            );
            self.bounds
                .push((lo + first, start, self.weights.len() - start));
        }
    }

    fn taps(&self, o: usize) -> (usize, &[f32]) {
        let (start, offset, len) = self.bounds[o];
        (start, &self.weights[offset..offset + len])
    }
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
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
            pixels: Pixels::Values(pixels),
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

    /// The stored form of a 12-bit image with rescale, padding and MONOCHROME1 gives the same
    /// display and tensor as the same image in modality units.
    #[test]
    fn stored_pixels_prepare_like_their_values() {
        use crate::source::{Modality, ModalityTransform, Stored};
        let (rows, cols) = (300u32, 410u32);
        let samples: Vec<u16> = (0..rows * cols)
            .map(|i| (i.wrapping_mul(2654435761u32) >> 20) as u16 & 0x0FFF)
            .collect();
        let modality = Modality {
            padding: Some((0, 40)),
            transform: ModalityTransform::Rescale {
                slope: 0.5,
                intercept: -1024.0,
            },
        };
        let stored = Stored {
            samples: samples.clone(),
            signed: false,
            modality: modality.clone(),
        };
        let values: Vec<f32> = samples.iter().map(|&s| modality.apply(s as i32)).collect();
        let mut a = image(values, rows, cols, Photometric::Monochrome1);
        a.voi = Some(Voi::Window(lin(-300.0, 1200.0)));
        let mut b = a.clone();
        b.pixels = Pixels::Stored(stored);
        assert_eq!(
            display(&a, &spec().window),
            display(&b, &spec().window),
            "display values"
        );
        for voi in [a.voi.clone(), None] {
            a.voi = voi.clone();
            b.voi = voi;
            let mut p = Preparer::new(spec(), 224, 224);
            let ta = p.prepare(&a).unwrap().to_vec();
            let tb = p.prepare(&b).unwrap().to_vec();
            let max = ta
                .iter()
                .zip(&tb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(max < 1e-5, "max diff {max}");
        }
    }

    /// The fused resize gives what fast_image_resize's bilinear convolution (the resize used
    /// before, and the reference the Python pipeline's PIL matches) gives on the display
    /// image, normalised after: shrinking by odd factors, by 11 (a radiograph to 224),
    /// growing, and one axis each way.
    #[test]
    fn fused_resize_matches_fast_image_resize() {
        use fast_image_resize::images::{TypedImage, TypedImageRef};
        use fast_image_resize::pixels::F32;
        use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
        let mut worst = 0.0f32;
        for (sw, sh, dw, dh) in [
            (2560, 2048, 224, 224),
            (640, 480, 256, 256),
            (100, 77, 224, 224),
            (333, 50, 64, 200),
            (7, 5, 3, 2),
        ] {
            let luma: Vec<u8> = (0..sw * sh)
                .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
                .collect();
            let mut p = Preparer::new(spec(), dh as usize, dw as usize);
            let ours = p.prepare_luma(&luma, sw, sh).unwrap().to_vec();
            let shown: Vec<F32> = luma
                .iter()
                .map(|&v| F32::new(apply_window(lin(128.0, 256.0), v as f64) as f32))
                .collect();
            let src = TypedImageRef::new(sw, sh, &shown).unwrap();
            let mut dst = TypedImage::<F32>::new(dw, dh);
            let options =
                ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
            Resizer::new()
                .resize_typed(&src, &mut dst, &options)
                .unwrap();
            for (o, t) in ours.iter().zip(dst.pixels()) {
                worst = worst.max((o - (t.0 - 0.5) / 0.25).abs());
            }
        }
        // In units of the normalised tensor (std 0.25): 1e-5 is 2.5e-6 of the display range.
        assert!(worst < 1e-5, "max diff {worst}");
    }
}
