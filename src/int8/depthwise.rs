//! bedside's direct int8 depthwise convolution (one input channel per group).
//!
//! tract 0.23.9 turns a quantized depthwise conv into one m = 1 matmul per channel over an
//! eager im2col (EfficientNet-B0: 295 of 405 ms). Here each output channel is computed
//! straight from its input plane:
//!
//! - the plane is copied once, minus the input zero point, into an i16 buffer with the
//!   padding around it (zeros: a padded tap contributes nothing), split into
//!   `stride_h × stride_w` phases (rows and columns by their remainder modulo the stride);
//! - in a phase every output pixel `(oy, ox)` reads tap `(ky, kx)` at a fixed distance from
//!   `oy · pitch + ox`, so the whole output plane is one flat run of positions (the few
//!   columns past the output's width are computed and dropped). The run is walked in chunks
//!   of [`CHUNK`] positions whose accumulators stay in registers through all `kh × kw` taps:
//!   one load and one multiply-add per tap and position, no accumulator traffic. LLVM
//!   vectorises the chunk (NEON's widening multiply-add on aarch64); on x86 with AVX2 a
//!   hand-written loop takes the taps in pairs with `VPMADDWD` (two products per lane);
//! - each output row is requantized like the GEMM path ([`super::requant`]).
//!
//! The previous form accumulated tap by tap into a row buffer (a load, multiply-add and
//! store per tap, with a call per tap and row): on MobileNetV3-Small's 7×7 and 14×14 planes
//! it ran at about 1 GMAC/s.
//!
//! Weight zero points are subtracted from the taps at load, so asymmetric weights cost nothing.

use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::conv::{OutPtr, parallel, start_run};
use super::geometry::Geometry;
use super::requant;
use super::{ConvParts, QuantParams};

/// Output positions accumulated together in registers (four AVX2 registers of i32).
const CHUNK: usize = 32;

struct Scratch {
    /// `[sh × sw phases][hq rows][wq cols]` of `x - x0`, zero outside the image, then
    /// [`CHUNK`] zeros that the last chunk's dropped positions may read.
    phases: Vec<i16>,
    /// One accumulator per flat output position, rounded up to whole chunks.
    acc: Vec<i32>,
}

#[derive(Clone)]
pub struct QConvDepthwise {
    pub(crate) geo: Geometry,
    /// `w - k0` per output channel, `kh × kw` taps.
    taps: Arc<Vec<i16>>,
    /// Where each tap reads, relative to the flat output position, in the phase buffer.
    offsets: Arc<Vec<usize>>,
    q: Arc<QuantParams>,
    x0: i32,
    x_signed: bool,
    /// Rows and columns of one phase.
    hq: usize,
    wq: usize,
    out_dt: DatumType,
    pool: Arc<Mutex<Vec<Scratch>>>,
}

impl std::fmt::Debug for QConvDepthwise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QConvDepthwise")
            .field("geo", &self.geo)
            .finish()
    }
}

impl PartialEq for QConvDepthwise {
    fn eq(&self, other: &Self) -> bool {
        self.geo == other.geo && Arc::ptr_eq(&self.taps, &other.taps)
    }
}
impl Eq for QConvDepthwise {}

impl QConvDepthwise {
    pub fn new(parts: ConvParts) -> QConvDepthwise {
        let ConvParts {
            geo,
            weights,
            w_signed,
            x_signed,
            x0,
            k0,
            q,
            out_dt,
        } = parts;
        let taps_per = geo.kh * geo.kw;
        let taps = (0..geo.co)
            .flat_map(|o| {
                let z = k0[if k0.len() == 1 { 0 } else { o }];
                weights[o * taps_per..(o + 1) * taps_per]
                    .iter()
                    .map(move |&b| {
                        let w = if w_signed { b as i8 as i32 } else { b as i32 };
                        (w - z) as i16
                    })
            })
            .collect();
        // Rows and columns every tap of every output pixel can reach, padding included.
        let hp = ((geo.oh - 1) * geo.sh + (geo.kh - 1) * geo.dh + 1).max(geo.pt + geo.h);
        let wp = ((geo.ow - 1) * geo.sw + (geo.kw - 1) * geo.dw + 1).max(geo.pl + geo.w);
        let (hq, wq) = (hp.div_ceil(geo.sh), wp.div_ceil(geo.sw));
        let offsets = (0..geo.kh)
            .flat_map(|ky| (0..geo.kw).map(move |kx| (ky * geo.dh, kx * geo.dw)))
            .map(|(ry, rx)| {
                let phase = (ry % geo.sh) * geo.sw + rx % geo.sw;
                phase * hq * wq + (ry / geo.sh) * wq + rx / geo.sw
            })
            .collect();
        QConvDepthwise {
            geo,
            taps: Arc::new(taps),
            offsets: Arc::new(offsets),
            q: Arc::new(q),
            x0,
            x_signed,
            hq,
            wq,
            out_dt,
            pool: Arc::default(),
        }
    }

    /// Flat output positions (`oy · wq + ox`) up to the last real pixel, in whole chunks.
    fn positions(&self) -> usize {
        ((self.geo.oh - 1) * self.wq + self.geo.ow).next_multiple_of(CHUNK)
    }

    fn scratch(&self) -> Scratch {
        let g = &self.geo;
        Scratch {
            phases: vec![0; g.sh * g.sw * self.hq * self.wq + CHUNK],
            acc: vec![0; self.positions()],
        }
    }

    /// Fills the phase planes for one input channel (the padding stays zero: it is written
    /// once when the buffer is made and never touched again).
    fn load_plane(&self, plane: &[u8], phases: &mut [i16]) {
        let g = &self.geo;
        let phase_len = self.hq * self.wq;
        let x0 = self.x0;
        for (y, src) in plane.chunks_exact(g.w).enumerate() {
            let py = y + g.pt;
            let row = ((py % g.sh) * g.sw) * phase_len + (py / g.sh) * self.wq;
            for cp in 0..g.sw {
                // Input columns x with (x + pl) % sw == cp land at (x + pl) / sw, consecutive.
                let first = (cp + g.sw - g.pl % g.sw) % g.sw;
                if first >= g.w {
                    continue;
                }
                let at = row + cp * phase_len + (first + g.pl) / g.sw;
                let dst = &mut phases[at..];
                if g.sw == 1 {
                    // Plain slices: the conversion vectorises (a `step_by` iterator does not).
                    convert(src, dst, x0, self.x_signed);
                } else {
                    let src = src[first..].iter().step_by(g.sw);
                    for (d, &b) in dst.iter_mut().zip(src) {
                        let v = if self.x_signed {
                            b as i8 as i32
                        } else {
                            b as i32
                        };
                        *d = (v - x0) as i16;
                    }
                }
            }
        }
    }

    /// Runs input channels `range` (of every image: item = image × channel) into `out`;
    /// each item writes only its own output channels.
    fn run_items(&self, x: &[u8], out: OutPtr, range: std::ops::Range<usize>, s: &mut Scratch) {
        let g = &self.geo;
        let mult = g.cog();
        let (taps_per, opl) = (g.kh * g.kw, g.out_plane());
        for item in range {
            let (batch, c) = (item / g.ci, item % g.ci);
            let plane = &x[(batch * g.ci + c) * g.in_plane()..][..g.in_plane()];
            self.load_plane(plane, &mut s.phases);
            for m in 0..mult {
                let o = c * mult + m;
                let taps = &self.taps[o * taps_per..(o + 1) * taps_per];
                // SAFETY: output channel `o` of this image belongs to this item only.
                let dst = unsafe { out.slice((batch * g.co + o) * opl, opl) };
                let requant = Requant {
                    bias: self.q.bias[o],
                    scale: self.q.scale[o],
                    range: self.q.range,
                    ow: g.ow,
                    pitch: self.wq,
                };
                channel(&s.phases, &self.offsets, taps, &mut s.acc, &requant, dst);
            }
        }
    }
}

/// `dst[i] = src[i] − x0` as i16, for the first `src.len()` values of `dst`.
fn convert(src: &[u8], dst: &mut [i16], x0: i32, signed: bool) {
    let (x0, dst) = (x0 as i16, &mut dst[..src.len()]);
    if signed {
        for (d, &b) in dst.iter_mut().zip(src) {
            *d = (b as i8 as i16).wrapping_sub(x0);
        }
    } else {
        for (d, &b) in dst.iter_mut().zip(src) {
            *d = (b as i16).wrapping_sub(x0);
        }
    }
}

/// How one channel's flat accumulators become its output rows.
struct Requant {
    bias: i32,
    scale: f32,
    range: requant::OutRange,
    ow: usize,
    /// Flat positions per output row (the phase's width).
    pitch: usize,
}

/// One output channel: accumulate every tap over the flat plane, then requantize its rows
/// (the few positions past each row's end are dropped).
#[inline(always)]
fn channel_with(
    acc_fn: impl Fn(&[i16], &[usize], &[i16], &mut [i32]),
    src: &[i16],
    offsets: &[usize],
    taps: &[i16],
    acc: &mut [i32],
    q: &Requant,
    dst: &mut [u8],
) {
    acc_fn(src, offsets, taps, acc);
    for (oy, row) in dst.chunks_exact_mut(q.ow).enumerate() {
        requant::row_impl(&acc[oy * q.pitch..][..q.ow], q.bias, q.scale, q.range, row);
    }
}

fn channel(
    src: &[i16],
    offsets: &[usize],
    taps: &[i16],
    acc: &mut [i32],
    q: &Requant,
    dst: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { channel_avx2(src, offsets, taps, acc, q, dst) };
    }
    channel_with(accumulate_impl, src, offsets, taps, acc, q, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn channel_avx2(
    src: &[i16],
    offsets: &[usize],
    taps: &[i16],
    acc: &mut [i32],
    q: &Requant,
    dst: &mut [u8],
) {
    channel_with(
        // SAFETY: this function runs only on CPUs with AVX2.
        |s, o, t, a| unsafe { accumulate_pairs_avx2(s, o, t, a) },
        src,
        offsets,
        taps,
        acc,
        q,
        dst,
    )
}

/// `acc[i] = Σ_t src[offsets[t] + i] · taps[t]` for every position `i` of `acc` (whole
/// chunks; `src` reaches `offsets.max() + acc.len()`).
#[inline(always)]
fn accumulate_impl(src: &[i16], offsets: &[usize], taps: &[i16], acc: &mut [i32]) {
    let reach = offsets.iter().max().copied().unwrap_or(0) + acc.len();
    assert!(src.len() >= reach && offsets.len() == taps.len());
    for (c, out) in acc.chunks_exact_mut(CHUNK).enumerate() {
        let base = c * CHUNK;
        let mut a = [0i32; CHUNK];
        for (&off, &w) in offsets.iter().zip(taps) {
            let s: &[i16; CHUNK] = src[base + off..base + off + CHUNK].try_into().unwrap();
            let w = w as i32;
            for (a, &v) in a.iter_mut().zip(s) {
                *a = a.wrapping_add((v as i32).wrapping_mul(w));
            }
        }
        out.copy_from_slice(&a);
    }
}

/// [`accumulate_impl`] with x86's `VPMADDWD`: taps go in pairs, the two taps' inputs
/// interleaved as i16 pairs and multiplied by the pair of weights, two products summed per
/// i32 lane (exact: |x − x0|, |w − k0| ≤ 383, so a pair stays far below 2^31). Half the
/// multiplies of the portable loop. An odd last tap pairs with a zero weight.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_pairs_avx2(src: &[i16], offsets: &[usize], taps: &[i16], acc: &mut [i32]) {
    use std::arch::x86_64::*;
    let reach = offsets.iter().max().copied().unwrap_or(0) + acc.len();
    assert!(src.len() >= reach && offsets.len() == taps.len());
    assert!(acc.len().is_multiple_of(CHUNK));
    let n = taps.len();
    let sp = src.as_ptr();
    for c in 0..acc.len() / CHUNK {
        let base = c * CHUNK;
        // Two halves of 16 positions; per half, lanes hold positions 0-3 and 8-11 (lo) and
        // 4-7 and 12-15 (hi), the order VPUNPCKLWD/HWD leave within 128-bit lanes.
        let mut a = [_mm256_setzero_si256(); 4];
        let mut t = 0;
        while t < n {
            let (o0, w0) = (offsets[t], taps[t]);
            let (o1, w1) = if t + 1 < n {
                (offsets[t + 1], taps[t + 1])
            } else {
                (o0, 0)
            };
            let w = _mm256_set1_epi32(((w1 as i32) << 16) | (w0 as u16 as i32));
            for h in 0..2 {
                // SAFETY: base + o + 32 <= reach <= src.len() (asserted above).
                let (s0, s1) = unsafe {
                    (
                        _mm256_loadu_si256(sp.add(base + o0 + 16 * h) as *const __m256i),
                        _mm256_loadu_si256(sp.add(base + o1 + 16 * h) as *const __m256i),
                    )
                };
                let lo = _mm256_unpacklo_epi16(s0, s1);
                let hi = _mm256_unpackhi_epi16(s0, s1);
                a[2 * h] = _mm256_add_epi32(a[2 * h], _mm256_madd_epi16(lo, w));
                a[2 * h + 1] = _mm256_add_epi32(a[2 * h + 1], _mm256_madd_epi16(hi, w));
            }
            t += 2;
        }
        let out = acc[base..base + CHUNK].as_mut_ptr();
        for h in 0..2 {
            let (lo, hi) = (a[2 * h], a[2 * h + 1]);
            // SAFETY: out has CHUNK = 32 i32s; each half writes 16 of them.
            unsafe {
                _mm256_storeu_si256(
                    out.add(16 * h) as *mut __m256i,
                    _mm256_permute2x128_si256(lo, hi, 0x20),
                );
                _mm256_storeu_si256(
                    out.add(16 * h + 8) as *mut __m256i,
                    _mm256_permute2x128_si256(lo, hi, 0x31),
                );
            }
        }
    }
}

impl Op for QConvDepthwise {
    fn name(&self) -> StaticName {
        "BedsideQDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geo;
        Ok(vec![format!(
            "{}x{} s{}x{} d{}x{} channels {}→{}",
            g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.ci, g.co
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QConvDepthwise {
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let (mut out, threads) = start_run(&self.geo, self.out_dt, &x)?;
        let ptr = OutPtr::new(out.as_bytes_mut());
        let x = x.as_bytes();
        parallel(self.geo.batch * self.geo.ci, threads, |range| {
            let taken = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
            let mut s = taken.unwrap_or_else(|| self.scratch());
            self.run_items(x, ptr, range, &mut s);
            if let Ok(mut p) = self.pool.lock() {
                p.push(s);
            }
            Ok(())
        })?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QConvDepthwise {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.out_dt.fact(self.geo.output_shape())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(i32::datum_type()),
            self.geo.macs().to_dim()
        )))
    }
}
