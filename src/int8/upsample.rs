//! Nearest-neighbour upsampling of u8/i8 images by integer factors in height and width.
//!
//! tract 0.23.9 has a fast path for f32 only; one-byte tensors go through its generic
//! element-by-element copy. YOLOv8n's onnxruntime QOperator form upsamples u8 feature maps
//! twice per run, and that took 4.7 ms of 37.5 (12 %). This op computes the same thing —
//! `out[.., y, x] = in[.., y / sh, x / sw]` — a row at a time: each input row is widened
//! once and the copy repeated `sh − 1` times with `copy_from_slice`.
//!
//! It replaces tract's `NearestUpsample` after tract has optimised the model
//! ([`super::plan`]), for one-byte types with scale 1 on every axis but the last two.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::NearestUpsample;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upsample {
    pub sh: usize,
    pub sw: usize,
}

impl Upsample {
    /// The op in place of `node`, when it is tract's nearest upsample of a one-byte tensor
    /// over its last two axes.
    pub fn replacing(model: &TypedModel, node: &TypedNode) -> Option<Upsample> {
        let op = node.op_as::<NearestUpsample>()?;
        let dt = model.outlet_fact(node.inputs[0]).ok()?.datum_type;
        let rank = op.scales.len();
        if dt.size_of() != 1 || rank < 2 || op.scales[..rank - 2].iter().any(|&s| s != 1) {
            return None;
        }
        Some(Upsample {
            sh: op.scales[rank - 2],
            sw: op.scales[rank - 1],
        })
    }

    /// `x`: planes of `h × w` bytes; `y`: the same planes at `h·sh × w·sw`.
    pub fn run(&self, x: &[u8], y: &mut [u8], h: usize, w: usize) {
        let (sh, sw) = (self.sh, self.sw);
        let ow = w * sw;
        if h == 0 || w == 0 {
            return;
        }
        for (src, dst) in x.chunks_exact(h * w).zip(y.chunks_exact_mut(h * sh * ow)) {
            for (row, out) in src.chunks_exact(w).zip(dst.chunks_exact_mut(sh * ow)) {
                let (first, rest) = out.split_at_mut(ow);
                if sw == 2 {
                    for (pair, &v) in first.chunks_exact_mut(2).zip(row) {
                        pair[0] = v;
                        pair[1] = v;
                    }
                } else {
                    for (run, &v) in first.chunks_exact_mut(sw).zip(row) {
                        run.fill(v);
                    }
                }
                for copy in rest.chunks_exact_mut(ow) {
                    copy.copy_from_slice(first);
                }
            }
        }
    }
}

impl Op for Upsample {
    fn name(&self) -> StaticName {
        "BedsideNearestUpsample".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("×{} ×{}", self.sh, self.sw)])
    }
    op_as_typed_op!();
}

impl EvalOp for Upsample {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let rank = input.rank();
        ensure!(rank >= 2 && input.datum_type().size_of() == 1);
        let mut shape: TVec<usize> = input.shape().into();
        let (h, w) = (shape[rank - 2], shape[rank - 1]);
        shape[rank - 2] *= self.sh;
        shape[rank - 1] *= self.sw;
        let mut out = unsafe { Tensor::uninitialized_dt(input.datum_type(), &shape)? };
        self.run(input.as_bytes(), out.as_bytes_mut(), h, w);
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Upsample {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        let rank = shape.len();
        shape[rank - 2] = shape[rank - 2].clone() * self.sh;
        shape[rank - 1] = shape[rank - 1].clone() * self.sw;
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `op` alone in a model, run once on `input`.
    fn run_alone(op: Box<dyn TypedOp>, input: &Tensor) -> Tensor {
        let mut model = TypedModel::default();
        let fact = input.datum_type().fact(input.shape());
        let x = model.add_source("x", fact).unwrap();
        let y = model.wire_node("up", op, &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let plan = model.into_runnable().unwrap();
        let mut out = plan.run(tvec!(input.clone().into_tvalue())).unwrap();
        out.remove(0).into_tensor()
    }

    /// The same bytes as tract's own op, for factors 1 to 3 on odd sizes, u8 and i8.
    #[test]
    fn upsamples_exactly_as_tract() {
        let (n, c, h, w) = (2, 3, 5, 7);
        let x: Vec<u8> = (0..n * c * h * w).map(|i| (i * 37 % 251) as u8).collect();
        let xi: Vec<i8> = x.iter().map(|&b| b as i8).collect();
        let inputs = [
            Tensor::from_shape(&[n, c, h, w], &x).unwrap(),
            Tensor::from_shape(&[n, c, h, w], &xi).unwrap(),
        ];
        for input in &inputs {
            for (sh, sw) in [(2, 2), (1, 2), (2, 1), (3, 2), (2, 3), (1, 1)] {
                let tract_op = NearestUpsample {
                    scales: tvec!(1, 1, sh, sw),
                };
                let want = run_alone(Box::new(tract_op), input);
                let got = run_alone(Box::new(Upsample { sh, sw }), input);
                assert_eq!(got.shape(), want.shape(), "×{sh} ×{sw}");
                assert_eq!(got.datum_type(), want.datum_type());
                assert_eq!(got.as_bytes(), want.as_bytes(), "×{sh} ×{sw}");
            }
        }
    }
}
