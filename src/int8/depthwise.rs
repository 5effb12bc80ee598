//! bedside's direct int8 depthwise convolution (one input channel per group).
//!
//! tract 0.23.9 turns a quantized depthwise conv into one m = 1 matmul per channel over an
//! eager im2col (EfficientNet-B0: 295 of 405 ms). Here each output channel is computed
//! straight from its input plane:
//!
//! - the plane is copied once, minus the input zero point, into an i16 buffer with the
//!   padding around it (zeros: a padded tap contributes nothing) and split into `stride`
//!   column phases, so that every tap of every stride reads a contiguous run;
//! - each output row accumulates `kh × kw` taps over the whole row (`acc[x] += plane[x] · w`),
//!   a loop LLVM vectorises (NEON on aarch64; an AVX2 copy is selected at run time on x86);
//! - the row is requantized like the GEMM path ([`super::requant`]).
//!
//! Weight zero points are subtracted from the taps at load, so asymmetric weights cost nothing.

use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::conv::{OutPtr, parallel, start_run};
use super::geometry::Geometry;
use super::requant;
use super::{ConvParts, QuantParams};

struct Scratch {
    /// `[sw phases][hp rows][wq cols]` of `x - x0`, zero outside the image.
    phases: Vec<i16>,
    acc: Vec<i32>,
}

#[derive(Clone)]
pub struct QConvDepthwise {
    pub(crate) geo: Geometry,
    /// `w - k0` per output channel, `kh × kw` taps.
    taps: Arc<Vec<i16>>,
    q: Arc<QuantParams>,
    x0: i32,
    x_signed: bool,
    /// Padded rows and per-phase columns of the scratch planes.
    hp: usize,
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
        let wq = wp.div_ceil(geo.sw);
        QConvDepthwise {
            geo,
            taps: Arc::new(taps),
            q: Arc::new(q),
            x0,
            x_signed,
            hp,
            wq,
            out_dt,
            pool: Arc::default(),
        }
    }

    /// Fills the phase planes for one input channel.
    fn load_plane(&self, plane: &[u8], phases: &mut [i16]) {
        let g = &self.geo;
        phases.fill(0);
        let phase_len = self.hp * self.wq;
        for y in 0..g.h {
            let src = &plane[y * g.w..(y + 1) * g.w];
            let py = y + g.pt;
            for (x, &b) in src.iter().enumerate() {
                let v = if self.x_signed {
                    b as i8 as i32
                } else {
                    b as i32
                };
                let px = x + g.pl;
                let (ph, col) = (px % g.sw, px / g.sw);
                phases[ph * phase_len + py * self.wq + col] = (v - self.x0) as i16;
            }
        }
    }

    /// Runs input channels `range` (of every image: item = image × channel) into `out`;
    /// each item writes only its own output channels.
    fn run_items(&self, x: &[u8], out: OutPtr, range: std::ops::Range<usize>, s: &mut Scratch) {
        let g = &self.geo;
        let mult = g.cog();
        let (taps_per, opl, phase_len) = (g.kh * g.kw, g.out_plane(), self.hp * self.wq);
        for item in range {
            let (batch, c) = (item / g.ci, item % g.ci);
            let plane = &x[(batch * g.ci + c) * g.in_plane()..][..g.in_plane()];
            self.load_plane(plane, &mut s.phases);
            for m in 0..mult {
                let o = c * mult + m;
                let taps = &self.taps[o * taps_per..(o + 1) * taps_per];
                // SAFETY: output channel `o` of this image belongs to this item only.
                let dst = unsafe { out.slice((batch * g.co + o) * opl, opl) };
                for oy in 0..g.oh {
                    let acc = &mut s.acc[..g.ow];
                    acc.fill(0);
                    for ky in 0..g.kh {
                        let py = oy * g.sh + ky * g.dh;
                        for kx in 0..g.kw {
                            let off = kx * g.dw;
                            let (ph, col) = (off % g.sw, off / g.sw);
                            let src = &s.phases[ph * phase_len + py * self.wq + col..][..g.ow];
                            accumulate(acc, src, taps[ky * g.kw + kx]);
                        }
                    }
                    requant::row(
                        acc,
                        self.q.bias[o],
                        self.q.scale[o],
                        self.q.range,
                        &mut dst[oy * g.ow..(oy + 1) * g.ow],
                    );
                }
            }
        }
    }
}

#[inline(always)]
fn accumulate_impl(acc: &mut [i32], src: &[i16], w: i16) {
    let w = w as i32;
    for (a, &v) in acc.iter_mut().zip(src) {
        *a = a.wrapping_add((v as i32).wrapping_mul(w));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_avx2(acc: &mut [i32], src: &[i16], w: i16) {
    accumulate_impl(acc, src, w)
}

fn accumulate(acc: &mut [i32], src: &[i16], w: i16) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { accumulate_avx2(acc, src, w) };
    }
    accumulate_impl(acc, src, w)
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
            let mut s = taken.unwrap_or_else(|| Scratch {
                phases: vec![0; self.geo.sw * self.hp * self.wq],
                acc: vec![0; self.geo.ow],
            });
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
