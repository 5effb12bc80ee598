//! Op parity: each of bedside's int8 ops against onnxruntime, one single-node ONNX model per
//! case (`tests/fixtures/ops/<case>/`: `model.onnx`, `case.toml`, raw `input*.bin`, and
//! `output.bin` as onnxruntime computed it; made by `models/factory/ops_fixtures.py`).
//!
//! The same check runs in `cargo test` and, through `bedside parity-ops`, on aarch64 under
//! qemu for a CPU with dotprod and one without, so both ARM int8 kernels are exercised.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tract_onnx::prelude::*;

use super::{Lowering, Placement};

/// How far bedside's bytes may be from onnxruntime's, per op, in steps of the output type
/// (units in the last place for f32 outputs).
///
/// Every integer op is exact: bedside computes in onnxruntime's own float formulation
/// (x86-64 AVX2 kernels, fused multiply-adds included; `tests/fixtures/ops/README.md` lists
/// each formula and which alternatives the probe cases rule out).
///
/// The f32 `Softmax` is not: onnxruntime's exponential is MLAS's own polynomial in
/// assembly, bedside's a portable Cephes one ([`super::softmax::exp`]), and each sums in its
/// own order. On the fixtures both are within 12 ulp of the exact (f64) softmax and within
/// 6 ulp of each other; 8 allows for that and nothing more.
pub fn tolerance(op: &str) -> u8 {
    match op {
        "Softmax" => 8,
        _ => 0,
    }
}

#[derive(Debug, Deserialize)]
struct TensorSpec {
    dtype: String,
    shape: Vec<usize>,
}

#[derive(Debug, Deserialize)]
struct CaseFile {
    op: String,
    description: String,
    inputs: Vec<TensorSpec>,
    output: TensorSpec,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub case: String,
    pub op: String,
    pub description: String,
    /// Largest difference from onnxruntime, in output steps (units in the last place for
    /// f32 outputs), capped at 255.
    pub max_diff: u8,
    /// How many output values differ at all.
    pub differing: usize,
    pub values: usize,
    /// Whether every quantized node ran on a bedside op (false: tract's own path).
    pub on_bedside: bool,
    /// The kernel(s) used, as the coverage reports them.
    pub detail: String,
}

impl CaseReport {
    pub fn ok(&self) -> bool {
        self.max_diff <= tolerance(&self.op) && self.on_bedside
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:<28} {:<14} max diff {} (allowed {}), {} of {} values differ{} — {}",
            if self.ok() { "ok  " } else { "FAIL" },
            self.case,
            self.op,
            self.max_diff,
            tolerance(&self.op),
            self.differing,
            self.values,
            if self.on_bedside {
                ""
            } else {
                ", NOT on bedside's ops"
            },
            self.description,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Case { path: PathBuf, reason: String },
}

fn dtype(s: &str) -> Option<DatumType> {
    match s {
        "u8" => Some(DatumType::U8),
        "i8" => Some(DatumType::I8),
        "f32" => Some(DatumType::F32),
        _ => None,
    }
}

/// Runs one case folder.
pub fn check_case(dir: &Path) -> Result<CaseReport, ParityError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| ParityError::Io { path, source })
    };
    let bad = |reason: String| ParityError::Case {
        path: dir.to_path_buf(),
        reason,
    };
    let case: CaseFile = toml::from_str(&String::from_utf8_lossy(&read("case.toml")?))
        .map_err(|e| bad(format!("case.toml: {e}")))?;
    let mut facts = vec![];
    let mut inputs = tvec![];
    for (i, spec) in case.inputs.iter().enumerate() {
        let dt = dtype(&spec.dtype).ok_or_else(|| bad(format!("dtype {}", spec.dtype)))?;
        let bytes = read(&format!("input{i}.bin"))?;
        let t = unsafe { Tensor::from_raw_dt(dt, &spec.shape, &bytes) }
            .map_err(|e| bad(format!("input{i}.bin: {e:#}")))?;
        facts.push((dt, spec.shape.clone()));
        inputs.push(t.into_tvalue());
    }
    let (plan, coverage) = super::plan(&read("model.onnx")?, &facts, Lowering::Bedside)
        .map_err(|e| bad(format!("{e:#}")))?;
    let out = plan
        .spawn()
        .and_then(|mut s| s.run(inputs))
        .map_err(|e| bad(format!("run: {e:#}")))?;
    let got = &out[0];
    let want = read("output.bin")?;
    if got.shape() != case.output.shape.as_slice() || got.as_bytes().len() != want.len() {
        return Err(bad(format!(
            "output shape {:?}, expected {:?}",
            got.shape(),
            case.output.shape
        )));
    }
    // u8/i8 outputs differ in steps of the type; f32 outputs (QGemm without an output
    // scale, Softmax) count in units in the last place. Values below f32's normal range
    // count as zero: onnxruntime's softmax flushes some of them (e^-87.8 is 0 there, a
    // denormal here), and a difference below 1.2e-38 is not one a model can see.
    let (mut max_diff, mut differing) = (0u64, 0);
    if case.output.dtype == "f32" {
        for (a, b) in got.as_bytes().chunks_exact(4).zip(want.chunks_exact(4)) {
            let ulp = |x: &[u8]| {
                let v = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                let i = if v.abs() < f32::MIN_POSITIVE {
                    0
                } else {
                    v.to_bits() as i32
                };
                if i < 0 {
                    i64::from(i32::MIN) - i64::from(i)
                } else {
                    i64::from(i)
                }
            };
            let d = ulp(a).abs_diff(ulp(b));
            max_diff = max_diff.max(d);
            differing += (d > 0) as usize;
        }
    } else {
        let signed = case.output.dtype == "i8";
        let as_int = |b: u8| if signed { b as i8 as i32 } else { b as i32 };
        for (&a, &b) in got.as_bytes().iter().zip(&want) {
            let d = u64::from((as_int(a) - as_int(b)).unsigned_abs());
            max_diff = max_diff.max(d);
            differing += (d > 0) as usize;
        }
    }
    let on_bedside = !coverage.nodes.is_empty() && coverage.on_tract().next().is_none();
    let detail = coverage
        .nodes
        .iter()
        .map(|n| match &n.placement {
            Placement::Bedside { op, detail } => format!("{op} {detail}"),
            Placement::Tract { reason } => format!("tract: {reason}"),
        })
        .collect::<Vec<_>>()
        .join("; ");
    Ok(CaseReport {
        case: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        op: case.op,
        description: case.description,
        max_diff: max_diff.min(255) as u8,
        differing,
        values: got.len(),
        on_bedside,
        detail,
    })
}

/// Runs every case folder under `dir`, in name order.
pub fn check_dir(dir: &Path) -> Result<Vec<CaseReport>, ParityError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ParityError::Io {
        path: dir.into(),
        source,
    })?;
    let mut cases: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.toml").exists())
        .collect();
    cases.sort();
    cases.iter().map(|c| check_case(c)).collect()
}

/// Runs every case folder once per int8 kernel this CPU runs ([`super::kernel_names`]),
/// so that each kernel — AVX2 and AVX on x86, SMLAL and SDOT on aarch64 — is checked, not
/// only the one the speed measurement picks. Returns the reports per kernel name.
pub fn check_dir_every_kernel(dir: &Path) -> Result<Vec<(String, Vec<CaseReport>)>, ParityError> {
    let names = super::kernel_names();
    let mut out = vec![];
    for name in names {
        super::force_kernel(Some(&name));
        let reports = check_dir(dir);
        super::force_kernel(None);
        out.push((name, reports?));
    }
    Ok(out)
}
