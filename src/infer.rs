//! Running a model: one tract plan per model, optimised once for its fixed input shape, with
//! the input tensor allocated once and reused for every image.

use std::path::{Path, PathBuf};

use tract_onnx::prelude::*;

use crate::int8::Coverage;
pub use crate::int8::Lowering;
use crate::model::manifest::Task;
use crate::model::{Manifest, ModelError, ModelRef, sha256_hex};

#[derive(Debug, thiserror::Error)]
#[error("inference failed in model {model}: {reason}")]
pub struct InferError {
    pub model: String,
    pub reason: String,
}

/// How bedside prepares an ONNX model for a fixed f32 input shape: parsed with bedside's
/// QLinear ops registered, decluttered, quantized convolutions lowered to bedside's int8
/// kernels ([`crate::int8::lower`]), then optimised by tract as usual.
pub fn plan_onnx(
    bytes: &[u8],
    shape: &[usize],
) -> TractResult<(std::sync::Arc<TypedRunnableModel>, Coverage)> {
    plan_onnx_with(bytes, shape, Lowering::Bedside)
}

pub fn plan_onnx_with(
    bytes: &[u8],
    shape: &[usize],
    lowering: Lowering,
) -> TractResult<(std::sync::Arc<TypedRunnableModel>, Coverage)> {
    crate::int8::plan(bytes, &[(DatumType::F32, shape.to_vec())], lowering)
}

/// Which of the manifest's files to load: the shipped (int8) model, or its fp32 parent for
/// comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Shipped,
    /// The fp32 dense parent (`[model.parent]`).
    Parent,
    /// The pruned fp32 model (`[model.pruned]`).
    Pruned,
}

impl Variant {
    fn section(self) -> &'static str {
        match self {
            Variant::Shipped => "model",
            Variant::Parent => "parent",
            Variant::Pruned => "pruned",
        }
    }
}

/// A model ready to run: manifest, verified identity and tract plan.
pub struct Engine {
    manifest: Manifest,
    model_ref: ModelRef,
    path: PathBuf,
    state: TypedSimpleState,
    /// The input tensor, reused from run to run: tract takes its inputs by value, but an
    /// `Arc` it has dropped by the end of a run can be written again without allocating.
    input: std::sync::Arc<Tensor>,
    /// Which quantized nodes run on bedside's int8 ops and which on tract's.
    coverage: std::sync::Arc<Coverage>,
    /// The first output's shape, from the dry run at load.
    output_shape: Vec<usize>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model_ref)
            .field("path", &self.path)
            .finish()
    }
}

impl Engine {
    /// Loads the shipped model of the folder `dir` (which holds `model.toml`).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Self::load_variant(dir, Variant::Shipped)
    }

    /// Another runner of the same optimised plan (for a second inference thread): shares
    /// the weights, has its own working memory.
    pub fn fork(&self) -> Self {
        Engine {
            manifest: self.manifest.clone(),
            model_ref: self.model_ref.clone(),
            path: self.path.clone(),
            state: self.state.clone(),
            input: std::sync::Arc::new(self.input.as_ref().clone()),
            coverage: self.coverage.clone(),
            output_shape: self.output_shape.clone(),
        }
    }

    pub fn load_variant(dir: &Path, variant: Variant) -> Result<Self, ModelError> {
        let manifest = Manifest::load(dir)?;
        let (file, expected) = match (variant, &manifest.model.parent) {
            (Variant::Shipped, _) => (&manifest.model.file, &manifest.model.sha256),
            (Variant::Parent, Some(p)) => (&p.file, &p.sha256),
            (Variant::Pruned, _) if manifest.model.pruned.is_some() => {
                let p = manifest.model.pruned.as_ref().expect("checked");
                (&p.file, &p.sha256)
            }
            (Variant::Parent | Variant::Pruned, _) => {
                return Err(ModelError::Manifest {
                    path: dir.join("model.toml"),
                    reason: format!("no [model.{}] to load", variant.section()),
                });
            }
        };
        let path = dir.join(file);
        // Hash exactly the bytes that tract will parse: no window between check and use.
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let actual = sha256_hex(&bytes);
        if &actual != expected {
            return Err(ModelError::HashMismatch {
                path,
                expected: expected.clone(),
                actual,
            });
        }
        let model_ref = ModelRef {
            id: manifest.model.id.clone(),
            version: manifest.model.version.clone(),
            sha256: actual,
        };
        let tract_err = |e: TractError| ModelError::Tract {
            path: path.clone(),
            reason: format!("{e:#}"),
        };
        let shape: Vec<usize> = manifest.input.shape.clone();
        let (plan, coverage) = plan_onnx(&bytes, &shape).map_err(tract_err)?;
        for n in coverage.on_tract() {
            tracing::info!(model = %model_ref.id, node = %n.name, op = %n.op, "runs on tract's own int8 path: {}", match &n.placement {
                crate::int8::Placement::Tract { reason } => reason.as_str(),
                crate::int8::Placement::Bedside { .. } => "",
            });
        }
        let state = plan.spawn().map_err(tract_err)?;
        let input = std::sync::Arc::new(Tensor::zero::<f32>(&shape).map_err(tract_err)?);
        let mut engine = Engine {
            manifest,
            model_ref,
            path: path.clone(),
            state,
            input,
            coverage: std::sync::Arc::new(coverage),
            output_shape: Vec::new(),
        };
        // A dry run proves the plan runs and that its output matches the labels.
        let zeros = vec![0.0; shape.iter().product()];
        let (got, out_shape) = engine
            .run_raw(&zeros, |shape, out| (out.len(), shape.to_vec()))
            .map_err(|e| ModelError::Tract {
                path: path.clone(),
                reason: e.reason,
            })?;
        engine.output_shape = out_shape;
        let want = engine.manifest.labels.len();
        let fits = match engine.manifest.model.task {
            Task::Classification => got == want,
            // [1, labels, h, w]: a whole map per label.
            Task::Segmentation => got >= want && got % want == 0,
            // [1, 5 + labels, h / stride, w / stride]: the grid the manifest describes.
            Task::Detection => {
                engine
                    .manifest
                    .detection
                    .as_ref()
                    .and_then(|d| d.expected_len(engine.manifest.input_hw(), want))
                    == Some(got)
            }
        };
        if !fits {
            return Err(ModelError::OutputShape { path, got, want });
        }
        Ok(engine)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn model_ref(&self) -> &ModelRef {
        &self.model_ref
    }

    /// Which quantized nodes run on bedside's int8 ops and which stayed on tract's path.
    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    /// Height and width of the first output's last two dimensions (a segmentation model's
    /// mask); `(1, n)` for an output of one dimension.
    pub fn output_hw(&self) -> (usize, usize) {
        match self.output_shape.as_slice() {
            [.., h, w] => (*h, *w),
            [n] => (1, *n),
            [] => (1, 1),
        }
    }

    /// Runs the model on a complete input tensor (NCHW, the manifest's shape) and returns
    /// the raw outputs (logits). tract takes ownership of its inputs, so the input is copied
    /// once into the tensor it consumes.
    pub fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, InferError> {
        self.run_with(input, |out| out.to_vec())
    }

    /// Runs the model and hands its first output to `read` without copying it.
    pub fn run_with<R>(
        &mut self,
        input: &[f32],
        read: impl FnOnce(&[f32]) -> R,
    ) -> Result<R, InferError> {
        self.run_raw(input, |_, out| read(out))
    }

    /// Runs the model and hands its first output's shape and values to `read`.
    fn run_raw<R>(
        &mut self,
        input: &[f32],
        read: impl FnOnce(&[usize], &[f32]) -> R,
    ) -> Result<R, InferError> {
        let err = |e: TractError| InferError {
            model: self.model_ref.id.clone(),
            reason: format!("{e:#}"),
        };
        let shape = &self.manifest.input.shape;
        let want: usize = shape.iter().product();
        if input.len() != want {
            return Err(InferError {
                model: self.model_ref.id.clone(),
                reason: format!("input has {} values, the model takes {want}", input.len()),
            });
        }
        match std::sync::Arc::get_mut(&mut self.input) {
            Some(t) => t
                .try_as_plain_ram_mut()
                .map_err(err)?
                .as_slice_mut::<f32>()
                .map_err(err)?
                .copy_from_slice(input),
            // tract kept a reference from the last run: a fresh tensor this time.
            None => {
                self.input = std::sync::Arc::new(Tensor::from_shape(shape, input).map_err(err)?)
            }
        }
        let outputs = self
            .state
            .run(tvec!(TValue::from_const(self.input.clone())))
            .map_err(err)?;
        let out = outputs[0].cast_to::<f32>().map_err(err)?;
        let view = out.try_as_plain_ram().map_err(err)?;
        Ok(read(out.shape(), view.as_slice::<f32>().map_err(err)?))
    }
}
