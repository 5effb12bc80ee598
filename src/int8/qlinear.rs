//! onnxruntime's integer element-wise ops (`com.microsoft` domain), which tract 0.23.9 does
//! not know: `QLinearAdd`, `QLinearMul`, `QLinearConcat`, `QLinearGlobalAveragePool`,
//! `QLinearSigmoid`, `QLinearLeakyRelu`. With them, onnxruntime's full QOperator export
//! loads, and tensors stay u8/i8 from one convolution to the next instead of being
//! dequantized around every residual Add and skip Concat.
//!
//! Each op computes what onnxruntime computes, in the same float formulation:
//! - Add / Mul: `y = round(fixed + ra·a + rb·b)` (Add) or `round(r·(a−a0)(b−b0)) + y0` (Mul),
//!   with numpy broadcasting;
//! - Concat and the activations: a 256-entry table per input,
//!   `table[x] = clamp(round(f((x − x0)·xs) / ys) + y0)` with `f` the identity, the logistic
//!   function or leaky ReLU — onnxruntime builds the same tables;
//! - GlobalAveragePool: `Σ(x − x0)` per channel, requantized with `xs / (ys · H·W)`.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ndarray::{ArrayViewD, IxDyn, Zip};
use tract_onnx::tract_hir::internal::*;

use super::requant::{self, OutRange};
use super::softmax;
use super::{NodeCoverage, Placement};

/// Adds the ops to tract-onnx's parser (looked up by op type, whatever the domain).
pub fn register(reg: &mut tract_onnx::model::OnnxOpRegister) {
    reg.insert("QLinearAdd", |_, n| parse(n, Kind::Add));
    reg.insert("QLinearMul", |_, n| parse(n, Kind::Mul));
    reg.insert("QLinearConcat", |_, n| parse(n, Kind::Concat));
    reg.insert("QLinearGlobalAveragePool", |_, n| {
        parse(n, Kind::GlobalAveragePool)
    });
    reg.insert("QLinearSigmoid", |_, n| parse(n, Kind::Sigmoid));
    reg.insert("QLinearLeakyRelu", |_, n| parse(n, Kind::LeakyRelu));
    reg.insert("QGemm", |_, n| parse(n, Kind::Gemm));
    reg.insert("QLinearSoftmax", |_, n| parse(n, Kind::Softmax));
}

#[allow(clippy::unnecessary_wraps)]
fn parse(node: &NodeProto, kind: Kind) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let _: Option<&ParsingContext> = None;
    let opset = node.get_attr_opt::<i64>("opset")?;
    if kind == Kind::Softmax && opset.is_none() {
        bail!("QLinearSoftmax needs its opset attribute");
    }
    // QLinearSoftmax follows Softmax: axis 1 (and all after it) before opset 13, -1 from it.
    let axis_default = match opset {
        Some(o) if kind == Kind::Softmax => {
            if o < 13 {
                1
            } else {
                -1
            }
        }
        _ => 0,
    };
    let op = QLinear {
        kind,
        axis: node.get_attr_opt::<i64>("axis")?.unwrap_or(axis_default),
        opset: opset.unwrap_or(0),
        alpha: node.get_attr_opt::<f32>("alpha")?.unwrap_or(0.01),
        channels_last: node.get_attr_opt::<i64>("channels_last")?.unwrap_or(0) != 0,
        trans_a: node.get_attr_opt::<i64>("transA")?.unwrap_or(0) != 0,
        trans_b: node.get_attr_opt::<i64>("transB")?.unwrap_or(0) != 0,
        gemm_alpha: node.get_attr_opt::<f32>("alpha")?.unwrap_or(1.0),
    };
    Ok((expand(op), vec![]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Add,
    Mul,
    Concat,
    GlobalAveragePool,
    Sigmoid,
    LeakyRelu,
    Gemm,
    Softmax,
}

impl Kind {
    fn onnx_name(self) -> &'static str {
        match self {
            Kind::Add => "QLinearAdd",
            Kind::Mul => "QLinearMul",
            Kind::Concat => "QLinearConcat",
            Kind::GlobalAveragePool => "QLinearGlobalAveragePool",
            Kind::Sigmoid => "QLinearSigmoid",
            Kind::LeakyRelu => "QLinearLeakyRelu",
            Kind::Gemm => "QGemm",
            Kind::Softmax => "QLinearSoftmax",
        }
    }
    /// Index of the output zero point among the node's inputs.
    fn y_zp_input(self) -> usize {
        match self {
            Kind::Add | Kind::Mul => 7,
            Kind::Concat => 1,
            Kind::GlobalAveragePool | Kind::Sigmoid | Kind::LeakyRelu | Kind::Softmax => 4,
            // Optional: without it, QGemm's output is f32.
            Kind::Gemm => 8,
        }
    }
    /// Indices of the data tensors among the node's inputs.
    fn data_inputs(self, n_inputs: usize) -> Vec<usize> {
        match self {
            Kind::Add | Kind::Mul => vec![0, 3],
            Kind::Concat => (2..n_inputs).step_by(3).collect(),
            _ => vec![0],
        }
    }
}

/// The parsed node, before typing.
#[derive(Debug, Clone)]
struct QLinear {
    kind: Kind,
    axis: i64,
    /// QLinearSoftmax's `opset` attribute: which Softmax it follows.
    opset: i64,
    alpha: f32,
    channels_last: bool,
    trans_a: bool,
    trans_b: bool,
    gemm_alpha: f32,
}

impl Expansion for QLinear {
    fn name(&self) -> StaticName {
        self.kind.onnx_name().into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        if self.kind == Kind::Gemm {
            return self.gemm_rules(s, inputs, outputs);
        }
        let yz = self.kind.y_zp_input();
        if inputs.len() <= yz {
            bail!("{} needs at least {} inputs", self.kind.onnx_name(), yz + 1);
        }
        s.equals(&outputs[0].datum_type, &inputs[yz].datum_type)?;
        match self.kind {
            Kind::Gemm => unreachable!("QGemm has its own rules"),
            Kind::Add | Kind::Mul => {
                check_input_arity(inputs, 8)?;
                s.given_2(&inputs[0].shape, &inputs[3].shape, move |s, a, b| {
                    s.equals(
                        &outputs[0].shape,
                        tract_onnx::tract_core::broadcast::multi_broadcast(&[a, b])?,
                    )
                })?;
            }
            Kind::Sigmoid | Kind::LeakyRelu | Kind::Softmax => {
                check_input_arity(inputs, 5)?;
                s.equals(&outputs[0].shape, &inputs[0].shape)?;
            }
            Kind::GlobalAveragePool => {
                check_input_arity(inputs, 5)?;
                let last = self.channels_last;
                s.given(&inputs[0].shape, move |s, shape| {
                    let mut out = shape.clone();
                    let spatial = if last {
                        1..shape.len() - 1
                    } else {
                        2..shape.len()
                    };
                    for d in spatial {
                        out[d] = 1.to_dim();
                    }
                    s.equals(&outputs[0].shape, out)
                })?;
            }
            Kind::Concat => {
                if inputs.len() < 5 || !(inputs.len() - 2).is_multiple_of(3) {
                    bail!("QLinearConcat takes y_scale, y_zp and (x, x_scale, x_zp) triples");
                }
                let data = self.kind.data_inputs(inputs.len());
                let axis = self.axis;
                s.equals(&outputs[0].rank, &inputs[2].rank)?;
                s.given_all(
                    data.iter().map(|&i| (&inputs[i].shape).bex()),
                    move |s, shapes| {
                        let rank = shapes[0].len() as i64;
                        let ax = if axis < 0 { axis + rank } else { axis } as usize;
                        let mut out = shapes[0].clone();
                        out[ax] = shapes.iter().map(|sh| sh[ax].clone()).sum();
                        s.equals(&outputs[0].shape, out)
                    },
                )?;
            }
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        if self.kind == Kind::Gemm {
            return self.wire_gemm(prefix, model, inputs);
        }
        let konst = |ix: usize| -> TractResult<Arc<Tensor>> {
            model
                .outlet_fact(inputs[ix])?
                .konst
                .clone()
                .with_context(|| {
                    format!("{}: input {ix} must be a constant", self.kind.onnx_name())
                })
        };
        let f32_of = |ix: usize| -> TractResult<f32> { konst(ix)?.cast_to_scalar::<f32>() };
        let i32_of = |ix: usize| -> TractResult<i32> { konst(ix)?.cast_to_scalar::<i32>() };
        let signed = |ix: usize| -> TractResult<bool> {
            let dt = model.outlet_fact(inputs[ix])?.datum_type.unquantized();
            match dt {
                DatumType::U8 => Ok(false),
                DatumType::I8 => Ok(true),
                other => bail!(
                    "{}: input {ix} is {other:?}, not u8/i8",
                    self.kind.onnx_name()
                ),
            }
        };
        let yz = self.kind.y_zp_input();
        let out_signed = signed(yz)?;
        let out_dt = model.outlet_fact(inputs[yz])?.datum_type;
        let range = OutRange::new(i32_of(yz)?, out_signed);
        let y_scale = f32_of(yz - 1)?;
        let data = self.kind.data_inputs(inputs.len());
        let mut inputs_signed = vec![];
        for &d in &data {
            inputs_signed.push(signed(d)?);
        }
        let table = |x_scale_ix: usize, f: &dyn Fn(f32) -> f32| -> TractResult<[u8; 256]> {
            let (xs, x0, sg) = (
                f32_of(x_scale_ix)?,
                i32_of(x_scale_ix + 1)?,
                signed(x_scale_ix - 1)?,
            );
            Ok(lookup_table(xs, x0, sg, y_scale, range, f))
        };
        let body = match self.kind {
            Kind::Gemm => unreachable!("QGemm is wired by wire_gemm"),
            Kind::Add | Kind::Mul => {
                let (sa, za, sb, zb) = (f32_of(1)?, i32_of(2)?, f32_of(4)?, i32_of(5)?);
                let mul = self.kind == Kind::Mul;
                let (ra, rb) = if mul {
                    (sa * sb / y_scale, 0.0)
                } else {
                    (sa / y_scale, sb / y_scale)
                };
                Body::Binary {
                    mul,
                    ra,
                    rb,
                    za,
                    zb,
                    zc: range.y0,
                }
            }
            Kind::Sigmoid => Body::Lut(vec![table(1, &mlas_logistic)?]),
            Kind::Softmax => {
                let shape = model
                    .outlet_fact(inputs[0])?
                    .shape
                    .as_concrete()
                    .map(|s| s.to_vec());
                let shape = shape.context("QLinearSoftmax needs a fixed input shape")?;
                let rank = shape.len() as i64;
                let axis = if self.axis < 0 {
                    self.axis + rank
                } else {
                    self.axis
                };
                if !(0..rank).contains(&axis) {
                    bail!("QLinearSoftmax: axis {} of a rank-{rank} input", self.axis);
                }
                let axis = axis as usize;
                let axes: TVec<usize> = if self.opset < 13 {
                    (axis..shape.len()).collect()
                } else {
                    tvec!(axis)
                };
                let d = axes.iter().map(|&a| shape[a]).product::<usize>().max(1);
                Body::Softmax(Arc::new(softmax::Quantized {
                    table: Box::new(softmax::table(f32_of(1)?, d)),
                    y_scale: (1.0 / y_scale).floor(),
                    y0: range.y0,
                    signed: signed(0)?,
                    axes,
                }))
            }
            Kind::LeakyRelu => {
                let alpha = self.alpha;
                Body::Lut(vec![table(1, &|v| if v >= 0.0 { v } else { alpha * v })?])
            }
            Kind::Concat => {
                let mut tables = vec![];
                for &d in &data {
                    tables.push(table(d + 1, &|v| v)?);
                }
                let rank = model.outlet_fact(inputs[2])?.rank() as i64;
                let axis = if self.axis < 0 {
                    self.axis + rank
                } else {
                    self.axis
                } as usize;
                Body::Concat { axis, tables }
            }
            Kind::GlobalAveragePool => {
                let shape = model
                    .outlet_fact(inputs[0])?
                    .shape
                    .as_concrete()
                    .map(|s| s.to_vec());
                let shape = shape.context("QLinearGlobalAveragePool needs a fixed input shape")?;
                let pixels: usize = if self.channels_last {
                    shape[1..shape.len() - 1].iter().product()
                } else {
                    shape[2..].iter().product()
                };
                Body::Gap {
                    x0: i32_of(2)?,
                    scale: f32_of(1)? / (y_scale * pixels as f32),
                    channels_last: self.channels_last,
                }
            }
        };
        let op = QLinearOp {
            kind: self.kind,
            fused: None,
            body,
            signed: inputs_signed,
            range,
            out_dt,
        };
        let wires: TVec<OutletId> = data.iter().map(|&i| inputs[i]).collect();
        model.wire_node(prefix, op, &wires)
    }
}

impl QLinear {
    fn gemm_rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        // tract-onnx drops inputs with an empty name, so the count says which optional inputs
        // are there: 6 (neither), 7 (bias C), 8 (output scale and zero point), 9 (both).
        if !(6..=9).contains(&inputs.len()) {
            bail!("QGemm takes 6 to 9 inputs, got {}", inputs.len());
        }
        if inputs.len() >= 8 {
            s.equals(&outputs[0].datum_type, &inputs[inputs.len() - 1].datum_type)?;
        } else {
            s.equals(&outputs[0].datum_type, f32::datum_type())?;
        }
        s.equals(&outputs[0].rank, 2)?;
        let (ta, tb) = (self.trans_a, self.trans_b);
        s.given_2(&inputs[0].shape, &inputs[3].shape, move |s, a, b| {
            let m = if ta { a[1].clone() } else { a[0].clone() };
            let n = if tb { b[0].clone() } else { b[1].clone() };
            s.equals(&outputs[0].shape, tvec!(m, n))
        })
    }

    fn wire_gemm(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let konst = |ix: usize, what: &str| -> TractResult<Arc<Tensor>> {
            model
                .outlet_fact(inputs[ix])?
                .konst
                .clone()
                .with_context(|| format!("QGemm: {what} must be a constant"))
        };
        let signed = |ix: usize| -> TractResult<bool> {
            match model.outlet_fact(inputs[ix])?.datum_type.unquantized() {
                DatumType::U8 => Ok(false),
                DatumType::I8 => Ok(true),
                other => bail!("QGemm: input {ix} is {other:?}, not u8/i8"),
            }
        };
        let b = konst(3, "B")?;
        ensure!(b.rank() == 2, "QGemm: B is not a matrix");
        let (k, n) = if self.trans_b {
            (b.shape()[1], b.shape()[0])
        } else {
            (b.shape()[0], b.shape()[1])
        };
        let vec_of = |t: &Arc<Tensor>, len: usize, what: &str| -> TractResult<Vec<f32>> {
            let v: Vec<f32> = t
                .cast_to::<f32>()?
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect();
            match v.len() {
                1 => Ok(vec![v[0]; len]),
                l if l == len => Ok(v),
                l => bail!("QGemm: {what} has {l} values for {len} columns"),
            }
        };
        let b_scale = vec_of(&konst(4, "b_scale")?, n, "b_scale")?;
        let b_zp: Vec<i32> = vec_of(&konst(5, "b_zero_point")?, n, "b_zero_point")?
            .iter()
            .map(|&z| z as i32)
            .collect();
        let a_scale = konst(1, "a_scale")?.cast_to_scalar::<f32>()?;
        let a_zp = konst(2, "a_zero_point")?.cast_to_scalar::<i32>()?;
        let b_signed = signed(3)?;
        let bb = b.as_bytes();
        // B as [N][K] with its zero point taken out, one contiguous dot product per output.
        // i16 holds every `b − b0` of u8/s8 values, and i16 × i16 products summed in pairs
        // into i32 are what x86's PMADDWD does: the dot product vectorises two products per
        // lane (exact: a pair of products stays far below 2^31).
        let mut cols = vec![0i16; n * k];
        for kk in 0..k {
            for nn in 0..n {
                let raw = if self.trans_b {
                    bb[nn * k + kk]
                } else {
                    bb[kk * n + nn]
                };
                cols[nn * k + kk] = (val(raw, b_signed) - b_zp[nn]) as i16;
            }
        }
        // tract-onnx drops inputs with an empty name: 7 or 9 inputs mean C is there, 8 or 9
        // the output scale and zero point.
        let (has_bias, has_y) = (inputs.len() % 2 == 1, inputs.len() >= 8);
        let bias: Vec<i32> = if has_bias {
            let c = konst(6, "C")?;
            let v: Vec<i32> = c
                .cast_to::<i32>()?
                .to_plain_array_view::<i32>()?
                .iter()
                .copied()
                .collect();
            match v.len() {
                1 => vec![v[0]; n],
                l if l == n => v,
                l => bail!("QGemm: C has {l} values for {n} columns"),
            }
        } else {
            vec![0; n]
        };
        let (ys_ix, yz_ix) = (inputs.len() - 2, inputs.len() - 1);
        let (out, out_dt, range) = if has_y {
            let y_scale = konst(ys_ix, "y_scale")?.cast_to_scalar::<f32>()?;
            let y_zp = konst(yz_ix, "y_zero_point")?.cast_to_scalar::<i32>()?;
            let y_signed = signed(yz_ix)?;
            let scale = b_scale
                .iter()
                .map(|&bs| self.gemm_alpha * a_scale * bs / y_scale)
                .collect();
            (
                GemmOut::Quantized(scale),
                model.outlet_fact(inputs[yz_ix])?.datum_type,
                OutRange::new(y_zp, y_signed),
            )
        } else {
            let scale = b_scale
                .iter()
                .map(|&bs| self.gemm_alpha * a_scale * bs)
                .collect();
            (
                GemmOut::Float(scale),
                DatumType::F32,
                OutRange::new(0, false),
            )
        };
        let body = Body::Gemm(Arc::new(Gemm {
            k,
            n,
            trans_a: self.trans_a,
            a_zp,
            cols,
            bias,
            out,
        }));
        let op = QLinearOp {
            fused: None,
            kind: Kind::Gemm,
            body,
            signed: vec![signed(0)?],
            range,
            out_dt,
        };
        model.wire_node(prefix, op, &[inputs[0]])
    }
}

/// QGemm with a constant B: `acc[m,n] = Σk (a − a0)(b − b0[n]) + C[n]`, then requantized
/// (or scaled to f32 when the node has no output scale).
#[derive(Debug, Clone, PartialEq)]
struct Gemm {
    k: usize,
    n: usize,
    trans_a: bool,
    a_zp: i32,
    cols: Vec<i16>,
    bias: Vec<i32>,
    out: GemmOut,
}

#[derive(Debug, Clone, PartialEq)]
enum GemmOut {
    /// Per column: `alpha · a_scale · b_scale[n] / y_scale`.
    Quantized(Vec<f32>),
    /// Per column: `alpha · a_scale · b_scale[n]`.
    Float(Vec<f32>),
}

impl Gemm {
    fn run(
        &self,
        a: &Tensor,
        a_signed: bool,
        range: OutRange,
        out: &mut Tensor,
    ) -> TractResult<()> {
        let m = a.len() / self.k;
        let ab = a.as_bytes();
        let mut row = vec![0i16; self.k];
        for mm in 0..m {
            for (kk, r) in row.iter_mut().enumerate() {
                let raw = if self.trans_a {
                    ab[kk * m + mm]
                } else {
                    ab[mm * self.k + kk]
                };
                *r = (val(raw, a_signed) - self.a_zp) as i16;
            }
            for nn in 0..self.n {
                let col = &self.cols[nn * self.k..(nn + 1) * self.k];
                let acc = dot(&row, col).wrapping_add(self.bias[nn]);
                match &self.out {
                    GemmOut::Quantized(scale) => {
                        out.as_bytes_mut()[mm * self.n + nn] =
                            requant::value(acc as f32 * scale[nn], range)
                    }
                    GemmOut::Float(scale) => {
                        out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?[mm * self.n + nn] =
                            acc as f32 * scale[nn]
                    }
                }
            }
        }
        Ok(())
    }
}

/// `table[byte] = clamp(round(f((x − x0)·xs) / ys) + y0)`, as onnxruntime's
/// `QlinearBuildLookupTable` + `MlasQuantizeLinear`.
fn lookup_table(
    xs: f32,
    x0: i32,
    x_signed: bool,
    ys: f32,
    range: OutRange,
    f: &dyn Fn(f32) -> f32,
) -> [u8; 256] {
    let mut t = [0u8; 256];
    for (b, slot) in t.iter_mut().enumerate() {
        let x = if x_signed {
            b as u8 as i8 as i32
        } else {
            b as i32
        };
        let v = f((x - x0) as f32 * xs) / ys;
        *slot = quantize(v, range);
    }
    t
}

/// onnxruntime's logistic function (MLAS `MlasLogisticKernelFma3`: Eigen's rational
/// approximation on [-18, 18] with fused multiply-adds), so that the tables agree bit for bit.
fn mlas_logistic(v: f32) -> f32 {
    // MLAS's constants, written as MLAS writes them (each rounds to the same f32).
    #[allow(clippy::excessive_precision)]
    const A: [f32; 5] = [
        4.37031012579801e-11,
        1.15627324459942e-07,
        6.08574864600143e-05,
        8.51377133304701e-03,
        2.48287947061529e-01,
    ];
    #[allow(clippy::excessive_precision)]
    const B: [f32; 6] = [
        6.10247389755681e-13,
        5.76102136993427e-09,
        6.29106785017040e-06,
        1.70198817374094e-03,
        1.16817656904453e-01,
        9.93151921023180e-01,
    ];
    let v = v.clamp(-18.0, 18.0);
    let v2 = v * v;
    let mut p = v2.mul_add(A[0], A[1]);
    for a in &A[2..] {
        p = p.mul_add(v2, *a);
    }
    let p = p * v;
    let mut q = v2.mul_add(B[0], B[1]);
    for b in &B[2..] {
        q = q.mul_add(v2, *b);
    }
    (p / q + 0.5).max(0.0)
}

/// `clamp(round_half_even(v) + y0)`.
fn quantize(v: f32, range: OutRange) -> u8 {
    let r = v.round_ties_even();
    let r = if r.is_nan() { 0.0 } else { r };
    (r as i64 + range.y0 as i64).clamp(range.lo as i64, range.hi as i64) as i32 as u8
}

#[derive(Debug, Clone, PartialEq)]
enum Body {
    /// Add: `ra = sA/sC`, `rb = sB/sC`. Mul: `ra = f32(sA·sB)/sC`, `rb` unused.
    Binary {
        mul: bool,
        ra: f32,
        rb: f32,
        za: i32,
        zb: i32,
        zc: i32,
    },
    Lut(Vec<[u8; 256]>),
    Concat {
        axis: usize,
        tables: Vec<[u8; 256]>,
    },
    Gap {
        x0: i32,
        scale: f32,
        channels_last: bool,
    },
    Gemm(Arc<Gemm>),
    Softmax(Arc<softmax::Quantized>),
}

/// The typed op: data tensors in, one u8/i8 tensor out; all quantization parameters folded
/// in at load.
#[derive(Debug, Clone, PartialEq)]
pub struct QLinearOp {
    kind: Kind,
    /// The table op folded into this one ([`fuse_self_product`]), for its name.
    fused: Option<Kind>,
    body: Body,
    signed: Vec<bool>,
    range: OutRange,
    out_dt: DatumType,
}
impl Eq for QLinearOp {}

#[inline(always)]
fn val(b: u8, signed: bool) -> i32 {
    if signed { b as i8 as i32 } else { b as i32 }
}

/// The arithmetic of one binary op, as onnxruntime's AVX2/FMA kernels do it (every step in
/// f32, fused multiply-adds where they fuse). `p` is the full-size operand, `q` the other.
#[derive(Debug, Clone, Copy)]
struct Binary {
    mul: bool,
    rp: f32,
    rq: f32,
    zp: i32,
    zq: i32,
    /// `f32(zC − fma(rP, zP, f32(rQ·zQ)))` for Add; `f32(sA·sB)/sC` sits in `rp` for Mul.
    fixed: f32,
    zc: f32,
    range: OutRange,
    sp: bool,
    sq: bool,
}

impl Binary {
    /// Both operands element by element: `rne(fma(p, rP, fma(q, rQ, fixed)))` (Add),
    /// `rne(f32(f32((p − zP)(q − zQ))·r) + zC)` (Mul).
    #[inline(always)]
    fn both(&self, p: u8, q: u8) -> u8 {
        let (p, q) = (val(p, self.sp), val(q, self.sq));
        let v = if self.mul {
            ((p - self.zp) * (q - self.zq)) as f32 * self.rp + self.zc
        } else {
            (p as f32).mul_add(self.rp, (q as f32).mul_add(self.rq, self.fixed))
        };
        saturate(v, self.range)
    }

    /// The value `fixed'` of a span where `q` is one value (a [1,C,1,1] or [1] operand):
    /// onnxruntime folds `q·rQ` into the constant first.
    #[inline(always)]
    fn span_constant(&self, q: u8) -> f32 {
        let q = val(q, self.sq);
        if self.mul {
            (q - self.zq) as f32
        } else {
            self.fixed + q as f32 * self.rq
        }
    }

    #[inline(always)]
    fn with_constant(&self, p: u8, c: f32) -> u8 {
        let p = val(p, self.sp);
        let v = if self.mul {
            // f32(prod) with prod an exact integer: the same as onnxruntime's integer product.
            ((p - self.zp) as f32 * c) * self.rp + self.zc
        } else {
            (p as f32).mul_add(self.rp, c)
        };
        saturate(v, self.range)
    }

    #[inline(always)]
    fn run_both(&self, p: &[u8], q: &[u8], out: &mut [u8]) {
        for ((o, &x), &y) in out.iter_mut().zip(p).zip(q) {
            *o = self.both(x, y);
        }
    }

    #[inline(always)]
    fn run_span(&self, p: &[u8], q: u8, out: &mut [u8]) {
        let c = self.span_constant(q);
        for (o, &x) in out.iter_mut().zip(p) {
            *o = self.with_constant(x, c);
        }
    }
}

/// `dst[i] = table[src[i]]`. Eight bytes are read and written at a time: the loop is bound by
/// its memory operations (the table lookups cannot vectorise on AVX2), and this takes one
/// load and one store per eight lookups instead of eight of each — about twice as fast as
/// byte by byte on EfficientNet-B0's SiLU tables.
fn lut(table: &[u8; 256], src: &[u8], dst: &mut [u8]) {
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    let mut s8 = src.chunks_exact(8);
    let mut d8 = dst.chunks_exact_mut(8);
    for (s, d) in (&mut s8).zip(&mut d8) {
        let v = u64::from_le_bytes(s.try_into().unwrap());
        let mut r = 0u64;
        for i in 0..8 {
            r |= u64::from(table[((v >> (8 * i)) & 0xff) as usize]) << (8 * i);
        }
        d.copy_from_slice(&r.to_le_bytes());
    }
    for (d, &x) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = table[x as usize];
    }
}

/// `Σ a[i]·b[i]` in i32 (wrapping, as onnxruntime's i32 accumulator).
fn dot(a: &[i16], b: &[i16]) -> i32 {
    #[inline(always)]
    fn any(a: &[i16], b: &[i16]) -> i32 {
        a.iter().zip(b).fold(0i32, |s, (&x, &y)| {
            s.wrapping_add((x as i32).wrapping_mul(y as i32))
        })
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(a: &[i16], b: &[i16]) -> i32 {
        any(a, b)
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(a, b) };
    }
    any(a, b)
}

/// `clamp(round_half_even(v))`, the zero point being inside `v` already.
#[inline(always)]
fn saturate(v: f32, range: OutRange) -> u8 {
    let (lo, hi) = (range.lo as f32, range.hi as f32);
    let v = if v < lo { lo } else { v };
    let v = if v > hi { hi } else { v };
    requant::round_small(v) as u8
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_both_fma(b: &Binary, p: &[u8], q: &[u8], out: &mut [u8]) {
    b.run_both(p, q, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_span_fma(b: &Binary, p: &[u8], q: u8, out: &mut [u8]) {
    b.run_span(p, q, out)
}

#[cfg(target_arch = "x86_64")]
fn has_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

impl Binary {
    fn both_slices(&self, p: &[u8], q: &[u8], out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if has_fma() {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { run_both_fma(self, p, q, out) };
        }
        self.run_both(p, q, out)
    }
    fn span_slices(&self, p: &[u8], q: u8, out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if has_fma() {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { run_span_fma(self, p, q, out) };
        }
        self.run_span(p, q, out)
    }
}

/// When `small` (rank-padded) is constant over runs of `span` consecutive output values and
/// its values cycle with the output index (`[1,C,1,1]`, `[N,C,1,1]`, `[1]` against
/// `[N,C,H,W]`), the length of those runs.
fn span_of(small: &[usize], out: &[usize]) -> Option<usize> {
    let first = small.iter().position(|&d| d != 1).unwrap_or(small.len());
    let last = small
        .iter()
        .rposition(|&d| d != 1)
        .map(|i| i + 1)
        .unwrap_or(first);
    if small[first..last] != out[first..last] {
        return None;
    }
    Some(out[last..].iter().product())
}

impl QLinearOp {
    /// The arithmetic of this binary op with operand A as P (`swap` false) or B as P.
    fn binary_arith(&self, swap: bool) -> Option<Binary> {
        let Body::Binary {
            mul,
            ra,
            rb,
            za,
            zb,
            zc,
        } = self.body
        else {
            return None;
        };
        let (zp, zq) = if swap { (zb, za) } else { (za, zb) };
        // Mul's one ratio is symmetric; Add's two follow their operands.
        let (rp, rq) = if swap && !mul { (rb, ra) } else { (ra, rb) };
        let (sp, sq) = if swap {
            (self.signed[1], self.signed[0])
        } else {
            (self.signed[0], self.signed[1])
        };
        let fixed = if mul {
            0.0
        } else {
            zc as f32 - rp.mul_add(zp as f32, rq * zq as f32)
        };
        Some(Binary {
            mul,
            rp,
            rq,
            zp,
            zq,
            fixed,
            zc: zc as f32,
            range: self.range,
            sp,
            sq,
        })
    }

    fn binary(&self, a: &Tensor, b: &Tensor, out: &mut Tensor) -> TractResult<()> {
        let shape = out.shape().to_vec();
        let rank = shape.len();
        let pad = |t: &Tensor| -> Vec<usize> {
            let mut s = vec![1; rank - t.rank()];
            s.extend_from_slice(t.shape());
            s
        };
        // onnxruntime takes the full-size operand as P (swapping A and B when A is the
        // broadcast one): that decides which product the fixed part absorbs.
        let a_full = a.shape() == shape.as_slice();
        let b_full = b.shape() == shape.as_slice();
        let swap = !a_full && b_full;
        let (p, q) = if swap { (b, a) } else { (a, b) };
        let op = self.binary_arith(swap).context("not a binary op")?;
        let o = out.as_bytes_mut();
        if a_full && b_full {
            op.both_slices(p.as_bytes(), q.as_bytes(), o);
            return Ok(());
        }
        let span = (p.shape() == shape.as_slice())
            .then(|| span_of(&pad(q), &shape))
            .flatten();
        {
            if let Some(span) = span {
                let qb = q.as_bytes();
                for (i, (chunk, pc)) in o
                    .chunks_mut(span)
                    .zip(p.as_bytes().chunks(span))
                    .enumerate()
                {
                    op.span_slices(pc, qb[i % qb.len()], chunk);
                }
                return Ok(());
            }
        }
        // Any other broadcast: element by element (onnxruntime's general path).
        let (pp, qp) = (pad(p), pad(q));
        let vp = ArrayViewD::from_shape(IxDyn(&pp), p.as_bytes())?;
        let vq = ArrayViewD::from_shape(IxDyn(&qp), q.as_bytes())?;
        let vp = vp
            .broadcast(IxDyn(&shape))
            .context("operands do not broadcast")?;
        let vq = vq
            .broadcast(IxDyn(&shape))
            .context("operands do not broadcast")?;
        let mut ov = tract_onnx::tract_core::ndarray::ArrayViewMutD::from_shape(IxDyn(&shape), o)?;
        Zip::from(&mut ov)
            .and(&vp)
            .and(&vq)
            .for_each(|o, &x, &y| *o = op.both(x, y));
        Ok(())
    }
}

impl QLinearOp {
    fn output_shape<D: DimLike>(&self, inputs: &[&[D]]) -> TractResult<TVec<D>> {
        Ok(match &self.body {
            Body::Binary { .. } => {
                tract_onnx::tract_core::broadcast::multi_broadcast(&[inputs[0], inputs[1]])?
            }
            Body::Lut(_) | Body::Softmax(_) => inputs[0].into(),
            Body::Gemm(g) => {
                let m = if g.trans_a {
                    inputs[0][1].clone()
                } else {
                    inputs[0][0].clone()
                };
                tvec!(m, D::from(g.n))
            }
            Body::Concat { axis, .. } => {
                let mut s: TVec<D> = inputs[0].into();
                s[*axis] = inputs.iter().map(|f| f[*axis].clone()).sum();
                s
            }
            Body::Gap { channels_last, .. } => {
                let mut s: TVec<D> = inputs[0].into();
                let r = s.len();
                let spatial = if *channels_last { 1..r - 1 } else { 2..r };
                for d in spatial {
                    s[d] = D::one();
                }
                s
            }
        })
    }
}

impl Op for QLinearOp {
    fn name(&self) -> StaticName {
        match self.fused {
            Some(inner) => format!("Bedside{}({})", self.kind.onnx_name(), inner.onnx_name()),
            None => format!("Bedside{}", self.kind.onnx_name()),
        }
        .into()
    }
    op_as_typed_op!();
}

impl EvalOp for QLinearOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shapes: TVec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        let shape = self.output_shape(&shapes)?;
        let mut out = unsafe { Tensor::uninitialized_dt(self.out_dt, &shape)? };
        match &self.body {
            Body::Binary { .. } => self.binary(&inputs[0], &inputs[1], &mut out)?,
            Body::Gemm(g) => g.run(&inputs[0], self.signed[0], self.range, &mut out)?,
            Body::Softmax(q) => {
                let (outer, d, inner) = softmax::split(&shape, &q.axes).context("softmax axes")?;
                q.run(inputs[0].as_bytes(), out.as_bytes_mut(), outer, d, inner);
            }
            Body::Lut(t) => lut(&t[0], inputs[0].as_bytes(), out.as_bytes_mut()),
            Body::Concat { axis, tables } => {
                let outer: usize = shape[..*axis].iter().product();
                let o = out.as_bytes_mut();
                let mut off = 0;
                for i in 0..outer {
                    for (t, x) in tables.iter().zip(&inputs) {
                        let inner: usize = x.shape()[*axis..].iter().product();
                        let src = &x.as_bytes()[i * inner..(i + 1) * inner];
                        lut(t, src, &mut o[off..off + inner]);
                        off += inner;
                    }
                }
            }
            Body::Gap {
                x0,
                scale,
                channels_last,
            } => {
                let x = &inputs[0];
                let s = x.shape();
                let sg = self.signed[0];
                let o = out.as_bytes_mut();
                let (n, c) = if *channels_last {
                    (s[0], s[s.len() - 1])
                } else {
                    (s[0], s[1])
                };
                let pixels = x.len() / (n * c).max(1);
                let bytes = x.as_bytes();
                for b in 0..n {
                    for ch in 0..c {
                        let sum: i32 = if *channels_last {
                            (0..pixels)
                                .map(|p| val(bytes[(b * pixels + p) * c + ch], sg))
                                .sum()
                        } else {
                            bytes[(b * c + ch) * pixels..(b * c + ch + 1) * pixels]
                                .iter()
                                .map(|&v| val(v, sg))
                                .sum()
                        };
                        let acc = sum - x0 * pixels as i32;
                        o[b * c + ch] = requant::value(acc as f32 * scale, self.range);
                    }
                }
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QLinearOp {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shapes: TVec<TVec<TDim>> = inputs.iter().map(|f| f.shape.to_tvec()).collect();
        let refs: TVec<&[TDim]> = shapes.iter().map(|s| s.as_slice()).collect();
        Ok(tvec!(self.out_dt.fact(self.output_shape(&refs)?)))
    }
}

/// The coverage line for a node that is one of these ops.
pub fn describe(node: &TypedNode) -> Option<NodeCoverage> {
    let op = node.op_as::<QLinearOp>()?;
    Some(NodeCoverage {
        name: node.name.clone(),
        op: op.kind.onnx_name().into(),
        placement: Placement::Bedside {
            op: op.name().to_string(),
            detail: String::new(),
        },
    })
}

/// A binary op (QLinearMul or QLinearAdd) whose operands are a tensor `x` and a table op of
/// that same `x` — EfficientNet's SiLU is `QLinearMul(x, QLinearSigmoid(x))` — is a function
/// of one byte of `x`. It becomes one 256-entry table built with the binary op's own
/// arithmetic, so the bytes are the same, in one pass over `x` instead of two and without the
/// intermediate tensor. Returns the new op and the outlet it reads (`x`), or `None` when
/// `node` is not such a pair (the table op also feeding another node, or a broadcast).
pub fn fuse_self_product(model: &TypedModel, node: &TypedNode) -> Option<(QLinearOp, OutletId)> {
    let op = node.op_as::<QLinearOp>()?;
    if node.inputs.len() != 2 {
        return None;
    }
    let out_shape = &model.outlet_fact(OutletId::new(node.id, 0)).ok()?.shape;
    for &input in &node.inputs {
        if &model.outlet_fact(input).ok()?.shape != out_shape {
            return None;
        }
    }
    for table_side in 0..2 {
        let (t_outlet, x) = (node.inputs[table_side], node.inputs[1 - table_side]);
        let t_node = model.node(t_outlet.node);
        let Some(t_op) = t_node.op_as::<QLinearOp>() else {
            continue;
        };
        let Body::Lut(tables) = &t_op.body else {
            continue;
        };
        if t_node.inputs.as_slice() != [x] || t_node.outputs[0].successors.len() != 1 {
            continue;
        }
        // Both operands are full size: onnxruntime keeps A as P.
        let arith = op.binary_arith(false)?;
        let mut table = [0u8; 256];
        for (v, t) in table.iter_mut().enumerate() {
            let (v, f) = (v as u8, tables[0][v]);
            *t = if table_side == 1 {
                arith.both(v, f)
            } else {
                arith.both(f, v)
            };
        }
        let fused = QLinearOp {
            kind: op.kind,
            fused: Some(t_op.kind),
            body: Body::Lut(vec![table]),
            signed: vec![t_op.signed[0]],
            range: op.range,
            out_dt: op.out_dt,
        };
        return Some((fused, x));
    }
    None
}
