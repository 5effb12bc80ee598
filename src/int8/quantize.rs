//! f32 → u8/i8 quantization (`QuantizeLinear` with one scale and zero point), vectorised.
//!
//! tract 0.23.9 quantizes one value at a time through a generic element-wise op: 16 % of
//! MONAI BasicUNet's int8 time, 12 % of YOLOv8n's (int8-pt, where every convolution's input
//! is quantized from float). This op computes exactly what tract's does —
//! `clamp(round_half_even(x · (1/scale)) + zero_point)`, with tract's own `1/scale` — in
//! loops the compiler turns into 8-lane vector code, so swapping it in changes no output.
//!
//! It replaces tract's op after tract has optimised the model ([`super::plan`]), so tract's
//! own rewrites (dequantize/quantize pairs folded into lookup tables, …) happen first.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{QuantizeLinearI8, QuantizeLinearU8};

/// bedside's stand-in for tract's `QuantizeLinearU8` / `QuantizeLinearI8` on f32 input.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantize {
    /// tract's multiplier: `1 / scale`.
    pub mult: f32,
    pub zero_point: i32,
    pub signed: bool,
}

// `mult` is a finite scale, never NaN: equality is total.
impl Eq for Quantize {}

impl Quantize {
    /// The op in place of `node`, when it is tract's quantization of an f32 tensor.
    pub fn replacing(model: &TypedModel, node: &TypedNode) -> Option<Quantize> {
        let ew = node.op_as::<ElementWiseOp>()?;
        if model.outlet_fact(node.inputs[0]).ok()?.datum_type != DatumType::F32 {
            return None;
        }
        if let Some(q) = ew.0.downcast_ref::<QuantizeLinearU8>() {
            return Some(Quantize {
                mult: q.scale,
                zero_point: i32::from(q.zero_point),
                signed: false,
            });
        }
        let q = ew.0.downcast_ref::<QuantizeLinearI8>()?;
        Some(Quantize {
            mult: q.scale,
            zero_point: i32::from(q.zero_point),
            signed: true,
        })
    }

    fn out_dt(&self) -> DatumType {
        if self.signed {
            DatumType::I8
        } else {
            DatumType::U8
        }
    }

    /// `y[i] = clamp(round_half_even(x[i] · mult) + zero_point)`, NaN quantized as 0 (as
    /// tract's `NaN as i32`).
    pub fn run(&self, x: &[f32], y: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { self.run_avx2(x, y) };
            return;
        }
        self.run_any(x, y)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, x: &[f32], y: &mut [u8]) {
        self.run_any(x, y)
    }

    #[inline(always)]
    fn run_any(&self, x: &[f32], y: &mut [u8]) {
        // 1.5 · 2^23: adding it rounds (half to even) into the low mantissa bits.
        const MAGIC: f32 = 12_582_912.0;
        let (lo, hi) = if self.signed { (-128, 127) } else { (0, 255) };
        // Clamped before rounding: the bounds are integers, so the result is the same as
        // rounding first, and the magic-number rounding stays in range.
        let (vlo, vhi) = ((lo - self.zero_point) as f32, (hi - self.zero_point) as f32);
        let (mult, zp, magic) = (self.mult, self.zero_point, MAGIC.to_bits() as i32);
        for (o, &v) in y.iter_mut().zip(x) {
            let v = v * mult;
            let v = if v.is_nan() { 0.0 } else { v };
            let v = if v < vlo { vlo } else { v };
            let v = if v > vhi { vhi } else { v };
            let n = (v + MAGIC).to_bits() as i32 - magic;
            *o = (n + zp) as u8;
        }
    }
}

impl Op for Quantize {
    fn name(&self) -> StaticName {
        "BedsideQuantizeLinear".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "f32 → {:?}, 1/scale {} zero point {}",
            self.out_dt(),
            self.mult,
            self.zero_point
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for Quantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let mut out = unsafe { Tensor::uninitialized_dt(self.out_dt(), input.shape())? };
        let view = input.try_as_plain_ram()?;
        self.run(view.as_slice::<f32>()?, out.as_bytes_mut());
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Quantize {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.out_dt().fact(inputs[0].shape.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::quant::{quantize_linear_f32_i8, quantize_linear_f32_u8};

    /// Bit for bit tract's own scalar function, on values around every rounding tie and
    /// beyond both ends of the range.
    #[test]
    fn quantizes_exactly_as_tract() {
        let mut x: Vec<f32> = (-40_000..40_000).map(|i| i as f32 * 0.0125).collect();
        // (Not infinities: tract's own function overflows adding the zero point to i32::MAX.)
        x.extend([0.5, 1.5, 2.5, -0.5, -1.5, 1e5, -1e5]);
        for (mult, zp, signed) in [
            (1.0 / 0.05f32, 3, false),
            (1.0 / 0.0173f32, 128, false),
            (1.0, 0, false),
            (1.0 / 0.021f32, -7, true),
            (2.0, 0, true),
        ] {
            let q = Quantize {
                mult,
                zero_point: zp,
                signed,
            };
            let mut y = vec![0u8; x.len()];
            q.run(&x, &mut y);
            for (&v, &got) in x.iter().zip(&y) {
                let want = if signed {
                    quantize_linear_f32_i8(v, mult, zp) as u8
                } else {
                    quantize_linear_f32_u8(v, mult, zp)
                };
                assert_eq!(got, want, "x {v} mult {mult} zp {zp} signed {signed}");
            }
        }
        let q = Quantize {
            mult: 1.0,
            zero_point: 9,
            signed: false,
        };
        let mut y = [0u8];
        q.run(&[f32::NAN], &mut y);
        assert_eq!(y[0], 9);
    }
}
