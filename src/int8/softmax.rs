//! Softmax over an axis that is not the innermost one, in f32 and in onnxruntime's
//! `QLinearSoftmax` (u8/i8).
//!
//! Why bedside has its own: a detector's distribution-focal-loss head (YOLOv8's DFL) takes a
//! softmax over 16 bins laid out along axis 1 of `[1, 16, 4, 8400]`. tract 0.23.9 walks such
//! an axis one softmax at a time through a collapsed ndarray view with libm's `exp`: 33,600
//! strided softmaxes of 16 values, 57 % of YOLOv8n's time. Here the tensor is seen as
//! `[outer, d, inner]` and worked in blocks of `inner`: for a block, the running maximum,
//! the exponentials and their sums are whole contiguous rows of `inner`, so every pass is a
//! vector loop and the block (d × 512 floats) stays in L1/L2.
//!
//! - f32 ([`FloatSoftmax`]): `exp` is a Cephes-style polynomial with Cody–Waite range
//!   reduction, written without fused multiply-adds so every CPU gives the same bits; it is
//!   within 2 units in the last place of the exact value and the softmax within a few of
//!   onnxruntime's (its own polynomial): `tolerance` in `parity.rs` says how many.
//! - u8/i8 ([`quantized`]): onnxruntime's exact arithmetic — a 256-entry table of
//!   `exp((k − 255 + shift)·xs)` indexed by the distance `k` from the maximum, sums in f32 in
//!   axis order, `round_half_even(e · ⌊1/ys⌋ / Σ) + y0` — so the bytes are the same.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Floats of `inner` per block: d × 512 × 4 B = 32 KiB for the DFL head's 16 bins.
const BLOCK: usize = 512;

/// `[outer, d, inner]` of a softmax over `axes` (contiguous) of `shape`.
pub fn split(shape: &[usize], axes: &[usize]) -> Option<(usize, usize, usize)> {
    let (&first, &last) = (axes.iter().min()?, axes.iter().max()?);
    if last - first + 1 != axes.len() || last >= shape.len() {
        return None;
    }
    let outer = shape[..first].iter().product();
    let d = shape[first..=last].iter().product();
    let inner = shape[last + 1..].iter().product();
    Some((outer, d, inner))
}

/// tract's f32 `Softmax` over axes that are not the innermost ones (tract's own row kernel
/// already serves a softmax over the last axis).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FloatSoftmax {
    pub axes: TVec<usize>,
}

impl Op for FloatSoftmax {
    fn name(&self) -> StaticName {
        "BedsideSoftmax".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axes {:?}, blocks of {BLOCK}", self.axes)])
    }
    op_as_typed_op!();
}

impl EvalOp for FloatSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let (outer, d, inner) =
            split(input.shape(), &self.axes).context("softmax axes are not contiguous")?;
        let mut out = unsafe { Tensor::uninitialized::<f32>(input.shape())? };
        {
            let view = input.try_as_plain_ram()?;
            let x = view.as_slice::<f32>()?;
            let mut plain = out.try_as_plain_ram_mut()?;
            let y = plain.as_slice_mut::<f32>()?;
            float(x, y, outer, d, inner);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for FloatSoftmax {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
}

/// Softmax of `x` (`[outer, d, inner]`) along `d` into `y`.
pub fn float(x: &[f32], y: &mut [f32], outer: usize, d: usize, inner: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { float_avx2(x, y, outer, d, inner) };
        return;
    }
    float_any(x, y, outer, d, inner)
}

/// The same loops compiled for AVX2 (8 lanes instead of SSE2's 4); no FMA, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn float_avx2(x: &[f32], y: &mut [f32], outer: usize, d: usize, inner: usize) {
    float_any(x, y, outer, d, inner)
}

#[inline(always)]
fn float_any(x: &[f32], y: &mut [f32], outer: usize, d: usize, inner: usize) {
    let mut max = [0f32; BLOCK];
    let mut sum = [0f32; BLOCK];
    let plane = d * inner;
    for o in 0..outer {
        let (x, y) = (
            &x[o * plane..(o + 1) * plane],
            &mut y[o * plane..(o + 1) * plane],
        );
        let mut j0 = 0;
        while j0 < inner {
            let w = BLOCK.min(inner - j0);
            let (m, s) = (&mut max[..w], &mut sum[..w]);
            m.copy_from_slice(&x[j0..j0 + w]);
            for k in 1..d {
                let row = &x[k * inner + j0..k * inner + j0 + w];
                for (m, &v) in m.iter_mut().zip(row) {
                    *m = if v > *m { v } else { *m };
                }
            }
            s.fill(0.0);
            for k in 0..d {
                let at = k * inner + j0;
                let (row, out) = (&x[at..at + w], &mut y[at..at + w]);
                for (((o, &v), &m), s) in out.iter_mut().zip(row).zip(m.iter()).zip(s.iter_mut()) {
                    let e = exp(v - m);
                    *o = e;
                    *s += e;
                }
            }
            for s in s.iter_mut() {
                *s = 1.0 / *s;
            }
            for k in 0..d {
                let at = k * inner + j0;
                for (o, &r) in y[at..at + w].iter_mut().zip(s.iter()) {
                    *o *= r;
                }
            }
            j0 += w;
        }
    }
}

/// `e^x` for `x ≤ 0` (what a softmax feeds it), branch-free so that loops over it vectorise.
/// Cody–Waite reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`, Cephes' degree-6 polynomial for `e^r`,
/// then `2^n` put into the exponent bits in two halves, so that results below f32's normal
/// range come out as the denormals they are. Below `ln(2^-150)` it is 0, as onnxruntime's.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// ln(2^-150): below it, e^x rounds to 0 in f32.
    const LOW: f32 = -103.972_08;
    // 1.5 · 2^23: adding it rounds to an integer (half to even) in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x0 = x;
    let x = if x < LOW { LOW } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_15e-4f32;
    p = p * r + 1.398_199_950_7e-3;
    p = p * r + 8.333_451_907_3e-3;
    p = p * r + 4.166_579_589_4e-2;
    p = p * r + 1.666_666_545_9e-1;
    p = p * r + 5.000_000_120_1e-1;
    let e = p * r * r + r + 1.0;
    let ni = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let half = ni >> 1;
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    let v = e * pow2(half) * pow2(ni - half);
    if x0 < LOW { 0.0 } else { v }
}

/// onnxruntime's `QLinearSoftmax` table: entry `k` is `e^((k − 255 + shift)·xs)` with
/// `shift = max(0, ln(f32::MAX / d) − 5) / xs`, so that the maximum of a softmax maps to
/// entry 255 and a sum of `d` entries cannot overflow. `k` is 255 minus the distance of an
/// input byte from the maximum of its softmax, for u8 and i8 alike.
pub fn table(x_scale: f32, d: usize) -> [f32; 256] {
    let shift = (f64::from(f32::MAX / d as f32).ln() - 5.0).max(0.0) / f64::from(x_scale);
    std::array::from_fn(|k| ((k as f64 - 255.0 + shift) * f64::from(x_scale)).exp() as f32)
}

/// The parameters of one `QLinearSoftmax`, all folded at load.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub table: Box<[f32; 256]>,
    /// `⌊1 / y_scale⌋`, as onnxruntime takes it.
    pub y_scale: f32,
    pub y0: i32,
    pub signed: bool,
    /// The softmax's axes (one axis from opset 13, the axis and all after it before).
    pub axes: TVec<usize>,
}

impl Quantized {
    /// `x` and `y` are the raw bytes of `[outer, d, inner]`.
    pub fn run(&self, x: &[u8], y: &mut [u8], outer: usize, d: usize, inner: usize) {
        let mut max = [0u8; BLOCK];
        let mut sum = [0f32; BLOCK];
        let plane = d * inner;
        // Signed bytes are compared and distanced as i8: flipping the top bit maps them onto
        // u8 in the same order.
        let key = if self.signed { 0x80u8 } else { 0 };
        for o in 0..outer {
            let (x, y) = (
                &x[o * plane..(o + 1) * plane],
                &mut y[o * plane..(o + 1) * plane],
            );
            let mut j0 = 0;
            while j0 < inner {
                let w = BLOCK.min(inner - j0);
                let (m, s) = (&mut max[..w], &mut sum[..w]);
                for (m, &v) in m.iter_mut().zip(&x[j0..j0 + w]) {
                    *m = v ^ key;
                }
                for k in 1..d {
                    for (m, &v) in m.iter_mut().zip(&x[k * inner + j0..k * inner + j0 + w]) {
                        *m = (*m).max(v ^ key);
                    }
                }
                s.fill(0.0);
                for k in 0..d {
                    let at = k * inner + j0;
                    for ((s, &v), &m) in s.iter_mut().zip(&x[at..at + w]).zip(m.iter()) {
                        *s += self.table[usize::from(255 - (m - (v ^ key)))];
                    }
                }
                for k in 0..d {
                    let at = k * inner + j0;
                    let (row, out) = (&x[at..at + w], &mut y[at..at + w]);
                    for (((o, &v), &m), &s) in out.iter_mut().zip(row).zip(m.iter()).zip(s.iter()) {
                        let e = self.table[usize::from(255 - (m - (v ^ key)))];
                        let q = ((e * self.y_scale) / s).round_ties_even();
                        *o = self.byte(q);
                    }
                }
                j0 += w;
            }
        }
    }

    /// Saturated to the output type: the maximum of an i8 softmax with output scale 1/256
    /// comes to 256 − 128 = 128 and is stored as 127 (onnxruntime 1.32 does the same).
    fn byte(&self, q: f32) -> u8 {
        let q = q as i32 + self.y0;
        if self.signed {
            q.clamp(-128, 127) as i8 as u8
        } else {
            q.clamp(0, 255) as u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(a.to_bits().abs_diff(b.to_bits()));
            x += 1.0e-4;
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-200.0), 0.0);
        // Denormal results: as close as their few mantissa bits allow.
        for x in [-88.0f32, -95.0, -100.0] {
            let (a, b) = (exp(x), x.exp());
            assert!((a - b).abs() <= b * 1e-3 + 1.5e-45, "{x}: {a} vs {b}");
        }
    }

    #[test]
    fn blocked_softmax_is_the_softmax_of_every_column() {
        // inner = 1100 spans three blocks, the last one partial.
        let (outer, d, inner) = (2, 7, 1100);
        let x: Vec<f32> = (0..outer * d * inner)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0)
            .collect();
        let mut y = vec![0f32; x.len()];
        float(&x, &mut y, outer, d, inner);
        for o in 0..outer {
            for j in 0..inner {
                let at = |k: usize| o * d * inner + k * inner + j;
                // x - max is an f32 subtraction in every f32 softmax (onnxruntime's too): its
                // rounding is part of the op, so the f64 reference starts from the same f32
                // difference and the bound below measures exp, the sum and the division.
                let m = (0..d).map(|k| x[at(k)]).fold(f32::MIN, f32::max);
                let e = |k: usize| ((x[at(k)] - m) as f64).exp();
                let s: f64 = (0..d).map(e).sum();
                for k in 0..d {
                    let want = e(k) / s;
                    let got = y[at(k)] as f64;
                    assert!(
                        (got - want).abs() <= 4.0 * f32::EPSILON as f64 * want.max(1e-30),
                        "o {o} j {j} k {k}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantized_tables_put_the_maximum_at_255() {
        let t = table(0.1, 16);
        assert!(t[255] > t[254] && t[0] > 0.0 && t[255].is_finite());
        assert!(16.0 * t[255] < f32::MAX);
    }
}
