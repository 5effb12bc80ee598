//! bedside's integer ops for tract: quantized convolutions (implicit GEMM over tract-linalg's
//! int8 micro-kernels, and a direct depthwise kernel) and onnxruntime's QLinear element-wise
//! ops, so that an int8 model is faster than its fp32 parent instead of only smaller.
//!
//! Two hooks, both public tract APIs (no fork):
//! - [`onnx`]: tract-onnx's parser with onnxruntime's `com.microsoft` QLinear ops registered
//!   ([`qlinear`]), so a full QOperator export loads and stays integer between convolutions;
//! - [`lower`]: after decluttering, every quantized `Conv` whose shape and types bedside's
//!   kernels cover is replaced by [`conv::QConvGemm`] or [`depthwise::QConvDepthwise`]. A conv
//!   they do not cover stays on tract's own path, and [`Coverage`] says which and why —
//!   `bedside check` prints it, the engine logs it once at load.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tract_onnx::prelude::*;
//! let model = bedside::int8::onnx()
//!     .model_for_path("models/cxr-tiny-cls/model.onnx")?
//!     .with_input_fact(0, f32::fact([1, 1, 128, 128]).into())?
//!     .into_typed()?;
//! let (model, coverage) = bedside::int8::lower(model)?;
//! println!("{coverage}");
//! let plan = model.into_optimized()?.into_runnable()?;
//! # Ok(()) }
//! ```

pub mod conv;
pub mod depthwise;
pub mod geometry;
pub mod pairs;
pub mod parity;
pub mod qlinear;
pub mod quantize;
pub mod requant;
pub mod softmax;
pub mod upsample;

use std::fmt;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

pub use conv::{force_kernel, kernel_names};
use geometry::Geometry;
use requant::OutRange;

#[derive(Debug, thiserror::Error)]
pub enum Int8Error {
    /// The op's shape, types or attributes are outside what bedside's kernels do.
    #[error("{0}")]
    Unsupported(String),
    #[error("tract: {0}")]
    Tract(String),
}

/// The per-output-channel requantization of a conv: bias, scale, output range.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantParams {
    pub bias: Vec<i32>,
    /// `x_scale * w_scale[o] / y_scale`, in f32 and in that order (as onnxruntime).
    pub scale: Vec<f32>,
    pub range: OutRange,
}

/// A quantized convolution as bedside's kernels take it: shape, raw weights (OIHW, bytes of
/// u8 or i8), zero points and requantization.
pub struct ConvParts<'a> {
    pub geo: Geometry,
    pub weights: &'a [u8],
    pub w_signed: bool,
    pub x_signed: bool,
    /// The input zero point.
    pub x0: i32,
    /// The weight zero point, one value or one per output channel.
    pub k0: &'a [i32],
    pub q: QuantParams,
    pub out_dt: DatumType,
}

/// Where one quantized node of a model runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On a bedside op; `detail` names the kernel and the shape.
    Bedside { op: String, detail: String },
    /// Left on tract's own path, and why.
    Tract { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCoverage {
    pub name: String,
    /// The source op, e.g. `QLinearConv`.
    pub op: String,
    pub placement: Placement,
}

/// Which quantized nodes of a model run on bedside's ops and which on tract's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    pub nodes: Vec<NodeCoverage>,
}

impl Coverage {
    pub fn on_bedside(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n.placement, Placement::Bedside { .. }))
            .count()
    }
    pub fn on_tract(&self) -> impl Iterator<Item = &NodeCoverage> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.placement, Placement::Tract { .. }))
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tract = self.on_tract().count();
        writeln!(
            f,
            "nodes on bedside's ops: {}; quantized nodes on tract's own path: {}",
            self.on_bedside(),
            tract
        )?;
        for n in &self.nodes {
            match &n.placement {
                Placement::Bedside { op, detail } => {
                    writeln!(f, "  bedside  {:<28} {op} {detail}", n.name)?
                }
                Placement::Tract { reason } => {
                    writeln!(f, "  tract    {:<28} {} ({reason})", n.name, n.op)?
                }
            }
        }
        Ok(())
    }
}

static THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// How many threads one int8 convolution may use (default 1). The daemon keeps 1 and uses
/// the cores for parallel frames instead; `bedside bench --threads` raises it to measure
/// what a second core gives one model.
pub fn set_threads(n: usize) {
    THREADS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

pub fn threads() -> usize {
    THREADS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Process-wide tract settings, applied once before the first model is loaded.
///
/// tract 0.23.9's Intel AMX int8 matmul kernel (`avx512amx_mmm_i32_16x16`) segfaults now and
/// then when two threads first run int8 models at the same time (seen here: 5 % of processes
/// that load two int8 models concurrently, on a Xeon with AMX; none in 450 runs without AMX).
/// It is not even faster here: on the reference model int8 runs 0.91–0.98× the speed of fp32
/// on AMX and 1.30–1.36× on VNNI (`bedside bench`, see the model card). So bedside keeps to
/// the AVX-512 VNNI kernels until that is fixed upstream; an operator can
/// still override it with the `TRACT_CPU_ISA` environment variable, which tract reads first.
/// The boards bedside ships on are ARM, where this kernel does not exist.
fn configure_tract() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Naming another architecture's feature is an error to tract: x86-64 only.
        #[cfg(target_arch = "x86_64")]
        if let Err(e) =
            tract_onnx::prelude::tract_data::knobs::set_config_global("TRACT_CPU_ISA", "-amx-int8")
        {
            tracing::warn!("cannot keep tract off its AMX int8 kernel: {e}");
        }
    });
}

/// Whether quantized convolutions go to bedside's kernels or stay on tract's own path (the
/// latter for comparisons: `bedside bench --tract-only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lowering {
    Bedside,
    TractOnly,
}

/// Parses, types, declutters, lowers and optimises an ONNX model for fixed inputs
/// (datum type and shape of each): how bedside prepares every model it runs.
pub fn plan(
    bytes: &[u8],
    inputs: &[(DatumType, Vec<usize>)],
    lowering: Lowering,
) -> TractResult<(std::sync::Arc<TypedRunnableModel>, Coverage)> {
    configure_tract();
    let mut model = onnx().model_for_read(&mut std::io::Cursor::new(bytes))?;
    for (ix, (dt, shape)) in inputs.iter().enumerate() {
        model = model.with_input_fact(ix, dt.fact(shape).into())?;
    }
    let mut model = model.into_typed()?;
    // Lowering comes before tract's decluttering, which would otherwise turn 1×1 convs into
    // einsums (and strided ones into a subsampling + einsum) that bedside's op never sees.
    // Folding constants first gives the convs the constant weights and parameters it reads.
    tract_onnx::tract_core::optim::Optimizer::prop_consts().optimize(&mut model)?;
    let (model, mut coverage) = match lowering {
        Lowering::Bedside => lower(model)?,
        Lowering::TractOnly => (model, Coverage::default()),
    };
    let mut model = model.into_optimized()?;
    if lowering == Lowering::Bedside {
        lower_optimized(&mut model, &mut coverage)?;
    }
    Ok((model.into_runnable()?, coverage))
}

/// The second, smaller pass, on the optimised model: tract's float → int8 quantizations
/// that its optimiser left standing become [`quantize::Quantize`] (same bytes, vectorised),
/// and its nearest upsampling of u8/i8 images [`upsample::Upsample`] (same bytes, by rows).
fn lower_optimized(model: &mut TypedModel, coverage: &mut Coverage) -> TractResult<()> {
    for id in model.eval_order()? {
        let node = model.node(id);
        let (op, new): (&str, Box<dyn TypedOp>) =
            if let Some(new) = quantize::Quantize::replacing(model, node) {
                ("QuantizeLinear", Box::new(new))
            } else if let Some(new) = upsample::Upsample::replacing(model, node) {
                ("Resize", Box::new(new))
            } else {
                continue;
            };
        coverage.nodes.push(NodeCoverage {
            name: node.name.clone(),
            op: op.into(),
            placement: Placement::Bedside {
                op: new.name().to_string(),
                detail: new.info()?.join(" "),
            },
        });
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, new)?;
        patch.apply(model)?;
    }
    Ok(())
}

/// tract-onnx's parser, with onnxruntime's QLinear ops (com.microsoft) registered.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    qlinear::register(&mut onnx.op_register);
    onnx
}

/// Replaces every quantized conv of a typed model (constants folded, not yet decluttered:
/// see [`plan`]) that bedside's kernels cover.
pub fn lower(mut model: TypedModel) -> TractResult<(TypedModel, Coverage)> {
    let mut coverage = Coverage::default();
    for id in model.eval_order()? {
        let node = model.node(id);
        if let Some((new, x)) = qlinear::fuse_self_product(&model, node) {
            let c = NodeCoverage {
                name: node.name.clone(),
                op: qlinear::describe(node).map(|d| d.op).unwrap_or_default(),
                placement: Placement::Bedside {
                    op: new.name().to_string(),
                    detail: "with its table input: one table".into(),
                },
            };
            let patch = TypedModelPatch::replace_single_op(&model, node, &[x], new)?;
            patch.apply(&mut model)?;
            coverage.nodes.push(c);
            continue;
        }
        if let Some(q) = qlinear::describe(node) {
            coverage.nodes.push(q);
            continue;
        }
        if let Some(new) = float_softmax(&model, node) {
            let c = NodeCoverage {
                name: node.name.clone(),
                op: "Softmax".into(),
                placement: Placement::Bedside {
                    op: new.name().to_string(),
                    detail: new.info()?.join(" "),
                },
            };
            let patch = TypedModelPatch::replace_single_op(&model, node, &node.inputs, new)?;
            patch.apply(&mut model)?;
            coverage.nodes.push(c);
            continue;
        }
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        if conv.q_params.is_none() {
            continue;
        }
        let name = node.name.clone();
        let op = "QLinearConv".to_string();
        let lowered: Result<(Box<dyn TypedOp>, &str, String), Int8Error> =
            convert(&model, node, conv).and_then(|l| {
                let info = |i: TractResult<Vec<String>>| {
                    i.map(|v| v.join(" "))
                        .map_err(|e| Int8Error::Tract(format!("{e:#}")))
                };
                Ok(match l {
                    Lowered::Gemm(new) => {
                        let detail = format!("{} [implicit GEMM]", info(new.info())?);
                        (Box::new(new) as Box<dyn TypedOp>, "BedsideQConv", detail)
                    }
                    Lowered::Depthwise(new) => {
                        let detail = info(new.info())?;
                        (
                            Box::new(new) as Box<dyn TypedOp>,
                            "BedsideQDepthwise",
                            detail,
                        )
                    }
                })
            });
        match lowered {
            Ok((new, kind, detail)) => {
                let patch =
                    TypedModelPatch::replace_single_op(&model, node, &[node.inputs[0]], new)?;
                patch.apply(&mut model)?;
                coverage.nodes.push(NodeCoverage {
                    name,
                    op,
                    placement: Placement::Bedside {
                        op: kind.into(),
                        detail,
                    },
                });
            }
            Err(e) => coverage.nodes.push(NodeCoverage {
                name,
                op,
                placement: Placement::Tract {
                    reason: e.to_string(),
                },
            }),
        }
    }
    Ok((model, coverage))
}

/// tract's f32 Softmax over axes that are not the innermost ones, as bedside's
/// ([`softmax::FloatSoftmax`]); `None` for any other node (a softmax over the last axis
/// keeps tract's row kernel).
fn float_softmax(model: &TypedModel, node: &TypedNode) -> Option<softmax::FloatSoftmax> {
    use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};
    let op = node.op_as::<Softmax>()?;
    let fact = model.outlet_fact(node.inputs[0]).ok()?;
    if op.kind != SoftmaxKind::Softmax
        || op.quant_output_dt.is_some()
        || fact.datum_type != DatumType::F32
    {
        return None;
    }
    let shape = fact.shape.as_concrete()?;
    let (_, _, inner) = softmax::split(shape, &op.axes)?;
    (inner > 1).then(|| softmax::FloatSoftmax {
        axes: op.axes.clone(),
    })
}

enum Lowered {
    Gemm(conv::QConvGemm),
    Depthwise(depthwise::QConvDepthwise),
}

fn unsupported(s: impl Into<String>) -> Int8Error {
    Int8Error::Unsupported(s.into())
}

/// A constant input of a node, cast to `T`, as a flat vector.
fn konst<T: Datum + Copy>(
    model: &TypedModel,
    node: &TypedNode,
    ix: usize,
    what: &str,
) -> Result<Vec<T>, Int8Error> {
    let fact = model
        .outlet_fact(node.inputs[ix])
        .map_err(|e| Int8Error::Tract(format!("{e:#}")))?;
    let t = fact
        .konst
        .as_ref()
        .ok_or_else(|| unsupported(format!("{what} is not a constant")))?;
    let t = t
        .cast_to::<T>()
        .map_err(|e| Int8Error::Tract(format!("{e:#}")))?;
    let v = t
        .to_plain_array_view::<T>()
        .map_err(|e| Int8Error::Tract(format!("{e:#}")))?;
    Ok(v.iter().copied().collect())
}

fn int8_type(dt: DatumType, what: &str) -> Result<bool, Int8Error> {
    match dt.unquantized() {
        DatumType::U8 => Ok(false),
        DatumType::I8 => Ok(true),
        other => Err(unsupported(format!("{what} is {other:?}, not u8/i8"))),
    }
}

fn per_channel<T: Copy>(v: Vec<T>, co: usize, what: &str) -> Result<Vec<T>, Int8Error> {
    match v.len() {
        1 => Ok(vec![v[0]; co]),
        n if n == co => Ok(v),
        n => Err(unsupported(format!(
            "{what} has {n} values for {co} output channels"
        ))),
    }
}

fn scalar<T: Copy>(v: Vec<T>, what: &str) -> Result<T, Int8Error> {
    match v.as_slice() {
        [x] => Ok(*x),
        _ => Err(unsupported(format!("{what} is not a scalar"))),
    }
}

fn convert(model: &TypedModel, node: &TypedNode, conv: &Conv) -> Result<Lowered, Int8Error> {
    if node.inputs.len() != 9 {
        return Err(unsupported(format!(
            "{} inputs, expected 9",
            node.inputs.len()
        )));
    }
    let spec = &conv.pool_spec;
    if conv.kernel_fmt != KernelFormat::OIHW {
        return Err(unsupported(format!("kernel format {:?}", conv.kernel_fmt)));
    }
    if spec.kernel_shape.len() != 2 {
        return Err(unsupported(format!(
            "{}-D convolution",
            spec.kernel_shape.len()
        )));
    }
    let x_fact = model
        .outlet_fact(node.inputs[0])
        .map_err(|e| Int8Error::Tract(format!("{e:#}")))?;
    let shape = x_fact
        .shape
        .as_concrete()
        .ok_or_else(|| unsupported("input shape is not fixed"))?
        .to_vec();
    let (batch, ci, h, w) = match (spec.data_format, shape.as_slice()) {
        (DataFormat::NCHW, &[n, c, h, w]) => (n, c, h, w),
        (DataFormat::CHW, &[c, h, w]) => (1, c, h, w),
        (f, s) => {
            return Err(unsupported(format!(
                "data format {f:?} with input shape {s:?}"
            )));
        }
    };
    let x_signed = int8_type(x_fact.datum_type, "input")?;
    let out_dt = node.outputs[0].fact.datum_type;
    let y_signed = int8_type(out_dt, "output")?;
    let w_fact = model
        .outlet_fact(node.inputs[1])
        .map_err(|e| Int8Error::Tract(format!("{e:#}")))?;
    let w_signed = int8_type(w_fact.datum_type, "weights")?;
    let weights = w_fact
        .konst
        .as_ref()
        .ok_or_else(|| unsupported("weights are not a constant"))?;
    let (co, groups) = (spec.output_channels, conv.group);
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    if weights.shape() != [co, ci / groups, kh, kw] || ci % groups != 0 || co % groups != 0 {
        return Err(unsupported(format!(
            "weights {:?} for {ci}→{co} in {groups} groups",
            weights.shape()
        )));
    }
    let padding = spec.computed_padding(&[h, w]);
    let (strides, dilations) = (spec.strides(), spec.dilations());
    let geo = Geometry {
        batch,
        ci,
        h,
        w,
        co,
        groups,
        kh,
        kw,
        sh: strides[0],
        sw: strides[1],
        dh: dilations[0],
        dw: dilations[1],
        pt: padding[0].pad_before,
        pl: padding[1].pad_before,
        oh: padding[0].convoluted,
        ow: padding[1].convoluted,
    };
    if geo.oh == 0 || geo.ow == 0 {
        return Err(unsupported("empty output"));
    }
    let expected = geo.output_shape();
    if node.outputs[0].fact.shape.as_concrete()
        != Some(&expected[4 - node.outputs[0].fact.rank()..])
    {
        return Err(unsupported(format!(
            "output shape {:?} is not the computed {expected:?}",
            node.outputs[0].fact.shape
        )));
    }
    let bias = per_channel(konst::<i32>(model, node, 2, "bias")?, co, "bias")?;
    let x0 = scalar(
        konst::<i32>(model, node, 3, "input zero point")?,
        "input zero point",
    )?;
    let x_scale = scalar(konst::<f32>(model, node, 4, "input scale")?, "input scale")?;
    let k0 = per_channel(
        konst::<i32>(model, node, 5, "weight zero point")?,
        co,
        "weight zero point",
    )?;
    let k_scale = per_channel(
        konst::<f32>(model, node, 6, "weight scale")?,
        co,
        "weight scale",
    )?;
    let y0 = scalar(
        konst::<i32>(model, node, 7, "output zero point")?,
        "output zero point",
    )?;
    let y_scale = scalar(
        konst::<f32>(model, node, 8, "output scale")?,
        "output scale",
    )?;
    let scale = k_scale.iter().map(|&ws| x_scale * ws / y_scale).collect();
    let q = QuantParams {
        bias,
        scale,
        range: OutRange::new(y0, y_signed),
    };
    let depthwise = geo.cig() == 1 && groups > 1;
    let parts = ConvParts {
        geo,
        weights: weights.as_bytes(),
        w_signed,
        x_signed,
        x0,
        k0: &k0,
        q,
        out_dt,
    };
    if depthwise {
        return Ok(Lowered::Depthwise(depthwise::QConvDepthwise::new(parts)));
    }
    Ok(Lowered::Gemm(conv::QConvGemm::new(parts)?))
}
