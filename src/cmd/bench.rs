//! `bedside bench`: model timings in tract, with bedside's int8 ops.
//!
//! Two forms: a model folder (its shipped int8 file against its fp32 parent, as before), or
//! any ONNX file (`--onnx`, optionally `--vs` a second file) — how a user times a model that
//! has no manifest yet, and what `benches/int8/run.sh` calls. Runs are interleaved so that a
//! change in machine load hits every form alike; medians and quartiles are printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use tract_onnx::prelude::*;

use bedside::infer::{Engine, Lowering, Variant};
use bedside::prepare::Preparer;

/// Sorted timings of one form.
struct Timings(Vec<f64>);

impl Timings {
    fn q(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

pub fn model(model: &Path, runs: usize, image: Option<&Path>) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(runs >= 5, "--runs must be at least 5");
    let mut int8 = Engine::load_variant(model, Variant::Shipped)?;
    let mut fp32 = Engine::load_variant(model, Variant::Parent)?;
    let manifest = int8.manifest().clone();
    let (h, w) = manifest.input_hw();
    let input: Vec<f32> = match image {
        Some(path) => {
            let img = bedside::dicom::read_file(path)?;
            Preparer::new(manifest.preprocess.clone(), h, w)
                .prepare(&img)?
                .to_vec()
        }
        None => vec![0.0; h * w],
    };
    for _ in 0..5 {
        int8.run(&input)?;
        fp32.run(&input)?;
    }
    let (mut t_int8, mut t_fp32) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let (mut out_int8, mut out_fp32) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        out_int8 = int8.run(&input)?;
        t_int8.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        out_fp32 = fp32.run(&input)?;
        t_fp32.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let max_abs = out_int8
        .iter()
        .zip(&out_fp32)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "model {} {}: tract with bedside's int8 ops, one thread, input {:?}, {runs} timed runs each after 5 warm-up, interleaved",
        manifest.model.id, manifest.model.version, manifest.input.shape
    );
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10}",
        "", "median ms", "p10 ms", "p90 ms", "min ms"
    );
    let parent_file = manifest
        .model
        .parent
        .as_ref()
        .map(|p| p.file.display().to_string())
        .unwrap_or_default();
    let (t_fp32, t_int8) = (Timings(t_fp32), Timings(t_int8));
    for (name, t) in [("fp32", &t_fp32), ("int8", &t_int8)] {
        println!(
            "{name:<6} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            t.q(0.5),
            t.q(0.1),
            t.q(0.9),
            t.q(0.0)
        );
    }
    println!(
        "int8 ({}) vs fp32 ({parent_file}): {:.2}x the speed of fp32 (median)",
        manifest.model.file.display(),
        t_fp32.q(0.5) / t_int8.q(0.5)
    );
    println!("max |int8 - fp32| on the outputs for this input: {max_abs:.4}");
    print!("{}", int8.coverage());
    Ok(ExitCode::SUCCESS)
}

/// What `bench --onnx` was asked for.
pub struct OnnxBench {
    pub files: Vec<PathBuf>,
    pub shape: Option<Vec<usize>>,
    pub runs: usize,
    /// Threads one int8 convolution may use (tract's own ops stay single-threaded).
    pub threads: usize,
    pub tract_only: bool,
    pub json: bool,
    pub profile: bool,
}

/// One ONNX file made ready to time.
struct Form {
    file: PathBuf,
    state: TypedSimpleState,
    input: Tensor,
    coverage: bedside::int8::Coverage,
    times: Vec<f64>,
}

impl Form {
    fn load(file: &Path, shape: Option<&[usize]>, lowering: Lowering) -> anyhow::Result<Form> {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let shape = match shape {
            Some(s) => s.to_vec(),
            None => input_shape(&bytes).with_context(|| {
                format!("{}: give the input shape with --shape", file.display())
            })?,
        };
        let (plan, coverage) = bedside::infer::plan_onnx_with(&bytes, &shape, lowering)
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
        // A fixed, varied input: every value in [-1, 1], no two neighbours alike.
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        Ok(Form {
            file: file.to_path_buf(),
            state: plan.spawn()?,
            input: Tensor::from_shape(&shape, &data)?,
            coverage,
            times: vec![],
        })
    }

    fn run(&mut self) -> anyhow::Result<f64> {
        let input = tvec!(self.input.clone().into_tvalue());
        let t = Instant::now();
        self.state.run(input)?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }
}

/// The first input's shape as the file declares it, when every dimension is a number.
fn input_shape(bytes: &[u8]) -> anyhow::Result<Vec<usize>> {
    let model = bedside::int8::onnx().model_for_read(&mut std::io::Cursor::new(bytes))?;
    let fact = model.input_fact(0)?;
    let shape = fact
        .shape
        .as_concrete_finite()?
        .context("the file's input shape is not fully fixed")?;
    Ok(shape.to_vec())
}

pub fn onnx(req: OnnxBench) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(req.runs >= 3, "--runs must be at least 3");
    bedside::int8::set_threads(req.threads);
    let lowering = if req.tract_only {
        Lowering::TractOnly
    } else {
        Lowering::Bedside
    };
    let mut forms = vec![];
    for f in &req.files {
        match Form::load(f, req.shape.as_deref(), lowering) {
            Ok(form) => forms.push(form),
            Err(e) if req.json => {
                println!(
                    "{}",
                    serde_json::json!({"file": f, "error": format!("{e:#}")})
                );
                return Ok(ExitCode::FAILURE);
            }
            Err(e) => return Err(e),
        }
    }
    let warmup = req.runs.clamp(2, 5);
    for _ in 0..warmup {
        for f in &mut forms {
            f.run()?;
        }
    }
    for _ in 0..req.runs {
        for f in &mut forms {
            let t = f.run()?;
            f.times.push(t);
        }
    }
    let engine = if req.tract_only { "tract" } else { "bedside" };
    for f in &forms {
        let t = Timings(f.times.clone());
        if req.json {
            println!(
                "{}",
                serde_json::json!({
                    "file": f.file,
                    "engine": engine,
                    "threads": req.threads,
                    "runs": req.runs,
                    "median_ms": t.q(0.5),
                    "p25_ms": t.q(0.25),
                    "p75_ms": t.q(0.75),
                    "min_ms": t.q(0.0),
                    "nodes_bedside": f.coverage.on_bedside(),
                    "nodes_tract_quant": f.coverage.on_tract().count(),
                })
            );
        } else {
            println!(
                "{}: {engine}, {} thread(s), input {:?}: median {:.3} ms (quartiles {:.3}–{:.3}, min {:.3}) over {} runs",
                f.file.display(),
                req.threads,
                f.input.shape(),
                t.q(0.5),
                t.q(0.25),
                t.q(0.75),
                t.q(0.0),
                req.runs
            );
            if !req.tract_only {
                print!("{}", f.coverage);
            }
        }
    }
    if forms.len() == 2 && !req.json {
        let (a, b) = (
            Timings(forms[0].times.clone()),
            Timings(forms[1].times.clone()),
        );
        println!(
            "{} runs at {:.2}x the speed of {} (medians, interleaved)",
            forms[0].file.display(),
            b.q(0.5) / a.q(0.5),
            forms[1].file.display()
        );
    }
    if req.profile {
        for f in &mut forms {
            profile(f, req.runs.min(20), req.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Time per op kind, through tract's per-node evaluation hook.
fn profile(f: &mut Form, runs: usize, json: bool) -> anyhow::Result<()> {
    let mut acc: BTreeMap<String, f64> = BTreeMap::new();
    for _ in 0..runs {
        f.state.run_plan_with_eval(
            tvec!(f.input.clone().into_tvalue()),
            |ctx, st, node, inp| {
                let t = Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, st, node, inp);
                *acc.entry(node.op.name().to_string()).or_default() +=
                    t.elapsed().as_secs_f64() * 1e3 / runs as f64;
                r
            },
        )?;
    }
    let total: f64 = acc.values().sum();
    let mut v: Vec<_> = acc.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    if json {
        let ops: Vec<_> = v
            .iter()
            .map(|(k, t)| serde_json::json!({"op": k, "ms": t}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"file": f.file, "profile": ops, "total_ms": total})
        );
    } else {
        println!(
            "profile of {} ({runs} runs, ms per run by op kind):",
            f.file.display()
        );
        for (k, t) in &v {
            println!("  {k:<32} {t:>9.3} ms {:>5.1} %", 100.0 * t / total);
        }
    }
    Ok(())
}
