//! Requantization: i32 accumulators back to u8/i8, per output channel.
//!
//! The formula is onnxruntime's (MLAS `MlasRequantizeOutput`), so that bedside's ops give the
//! bytes onnxruntime gives: `y = clamp(round_half_even(acc as f32 * scale), lo - y0, hi - y0) + y0`,
//! with `scale = x_scale * w_scale[o] / y_scale` computed in f32 in that order. tract's own
//! path uses a fixed-point multiplier instead, which differs by one step now and then.
//!
//! Rounding uses the 1.5·2²³ trick ([`round_small`]) rather than `f32::round_ties_even`: on
//! x86-64's baseline (SSE2) the latter is a library call per element, while the addition
//! vectorises. It is exact for |v| < 2²², which the clamp guarantees.

/// Where a requantized value lands: the output type's range and zero point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutRange {
    pub y0: i32,
    pub lo: i32,
    pub hi: i32,
}

impl OutRange {
    pub fn new(y0: i32, signed: bool) -> Self {
        let (lo, hi) = if signed { (-128, 127) } else { (0, 255) };
        OutRange { y0, lo, hi }
    }
}

const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23

/// `round_half_even(v)` for |v| < 2²²: adding 1.5·2²³ leaves the rounded integer in the low
/// mantissa bits (the FPU rounds half to even), read back as bits — integer operations only,
/// so the loops around it vectorise (a float-to-int `as` cast needs a NaN check per value).
#[inline(always)]
pub fn round_small(v: f32) -> i32 {
    ((v + MAGIC).to_bits() as i32).wrapping_sub(0x4B40_0000)
}

#[inline(always)]
fn one(acc: i32, scale: f32, lo: f32, hi: f32, y0: i32) -> u8 {
    // Compare-and-select rather than f32::max/min: same result for the finite values that
    // reach here, and it maps onto MAXPS/MINPS without NaN fix-ups, so the loop vectorises.
    let v = acc as f32 * scale;
    let v = if v < lo { lo } else { v };
    let v = if v > hi { hi } else { v };
    round_small(v).wrapping_add(y0) as u8
}

/// [`row`] without the CPU dispatch, for callers already compiled for the CPU's features.
#[inline(always)]
pub(super) fn row_impl(acc: &[i32], add: i32, scale: f32, range: OutRange, out: &mut [u8]) {
    let lo = (range.lo - range.y0) as f32;
    let hi = (range.hi - range.y0) as f32;
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = one(a.wrapping_add(add), scale, lo, hi, range.y0);
    }
}

#[inline(always)]
fn row_cols_impl(
    acc: &[i32],
    add: i32,
    col_factor: i32,
    cols: &[i32],
    scale: f32,
    range: OutRange,
    out: &mut [u8],
) {
    let lo = (range.lo - range.y0) as f32;
    let hi = (range.hi - range.y0) as f32;
    for ((o, &a), &c) in out.iter_mut().zip(acc).zip(cols) {
        let v = a.wrapping_add(add).wrapping_sub(col_factor.wrapping_mul(c));
        *o = one(v, scale, lo, hi, range.y0);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(acc: &[i32], add: i32, scale: f32, range: OutRange, out: &mut [u8]) {
    row_impl(acc, add, scale, range, out)
}

/// Requantizes one row of accumulators (one output channel): `out[i] = q(acc[i] + add)`.
/// `out` and `acc` have the same length. Bytes are written as the output type's bit pattern
/// (i8 as two's complement).
pub fn row(acc: &[i32], add: i32, scale: f32, range: OutRange, out: &mut [u8]) {
    debug_assert_eq!(acc.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { row_avx2(acc, add, scale, range, out) };
    }
    row_impl(acc, add, scale, range, out)
}

/// Like [`row`] with a per-column correction: `out[i] = q(acc[i] + add - col_factor * cols[i])`
/// (the weight zero point times the column sums, when weights are not symmetric).
pub fn row_with_cols(
    acc: &[i32],
    add: i32,
    col_factor: i32,
    cols: &[i32],
    scale: f32,
    range: OutRange,
    out: &mut [u8],
) {
    row_cols_impl(acc, add, col_factor, cols, scale, range, out)
}

/// Requantizes a single value (for the element-wise ops' scalar tails and tests).
pub fn value(acc: f32, range: OutRange) -> u8 {
    let lo = (range.lo - range.y0) as f32;
    let hi = (range.hi - range.y0) as f32;
    let v = if acc < lo { lo } else { acc };
    let v = if v > hi { hi } else { v };
    round_small(v).wrapping_add(range.y0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_and_clamps_like_mlas() {
        let r = OutRange::new(10, false);
        let acc = [0, 1, 2, 3, 5, -5, -7, 1000, -1000];
        let mut out = [0u8; 9];
        row(&acc, 0, 0.5, r, &mut out);
        // 0.5 -> 0, 1.0 -> 1, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2, -3.5 -> -4, clamps at 255 and 0
        assert_eq!(out, [10, 10, 11, 12, 12, 8, 6, 255, 0]);
        let s = OutRange::new(-3, true);
        let mut out = [0u8; 3];
        row(&[1000, -1000, 7], 0, 1.0, s, &mut out);
        assert_eq!(out.map(|b| b as i8), [127, -128, 4]);
    }

    #[test]
    fn column_correction_is_subtracted() {
        let r = OutRange::new(0, true);
        let mut out = [0u8; 2];
        row_with_cols(&[10, 10], 5, 2, &[1, 3], 1.0, r, &mut out);
        assert_eq!(out.map(|b| b as i8), [13, 9]);
    }
}
