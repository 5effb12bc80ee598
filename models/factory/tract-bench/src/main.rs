//! Usage: tract-bench <model.onnx> <input.f32> <out_prefix> [n_runs] [--ops] [--profile] [--profile-nodes]
//!                    [--shape=1x1x224x224]
//! Input: raw f32 LE of the given shape (default 1x1x224x224, the cxr-tiny-cls input).
//! Loads with tract-onnx, optimizes, runs, times median of n_runs, writes outputs as raw f32 + .shape files.
//! --profile prints time per op kind (top 12), --profile-nodes per node; TRACT_THREADS=n selects the
//! multithread executor; TRACT_CPU_ISA (read by tract itself) e.g. "-amx-int8" as bedside sets it.
use std::collections::BTreeMap;
use std::time::Instant;
use tract_onnx::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (model_path, input_path, out_prefix) = (&args[1], &args[2], &args[3]);
    let n_runs: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(50);
    let show_ops = args.iter().any(|a| a == "--ops");
    let shape: Vec<usize> = args.iter().find_map(|a| a.strip_prefix("--shape="))
        .map(|s| s.split('x').map(|d| d.parse().expect("--shape=NxCxHxW")).collect())
        .unwrap_or_else(|| vec![1, 1, 224, 224]);
    // TRACT_THREADS=n -> tract_linalg multithread executor with n threads (default: single-threaded)
    if let Some(n) = std::env::var("TRACT_THREADS").ok().and_then(|s| s.parse::<usize>().ok()) {
        tract_onnx::prelude::tract_linalg::multithread::set_default_executor(
            tract_onnx::prelude::tract_linalg::multithread::Executor::multithread(n));
    }
    if let Err(e) = run(model_path, input_path, out_prefix, n_runs, show_ops, &shape) {
        println!("RESULT\t{}\tFAIL\t{}", model_path, format!("{:?}", e).replace('\n', " | "));
        std::process::exit(1);
    }
}

fn run(model_path: &str, input_path: &str, out_prefix: &str, n_runs: usize, show_ops: bool, shape: &[usize]) -> TractResult<()> {
    let t0 = Instant::now();
    let model = tract_onnx::onnx().model_for_path(model_path).map_err(|e| e.context("stage=model_for_path"))?;
    let model = model.with_input_fact(0, f32::fact(shape).into()).map_err(|e| e.context("stage=with_input_fact"))?;
    let t1 = Instant::now();
    let model = model.into_optimized().map_err(|e| e.context("stage=into_optimized"))?;
    let t2 = Instant::now();
    // op histogram of the optimized model, with input datum types to see whether matmuls are int8
    let mut hist: BTreeMap<String, usize> = BTreeMap::new();
    for node in model.nodes() {
        let in_dt: Vec<String> = node.inputs.iter().map(|o| format!("{:?}", model.outlet_fact(*o).map(|f| f.datum_type).ok())).collect();
        let out_dt: Vec<String> = node.outputs.iter().map(|o| format!("{:?}", o.fact.datum_type)).collect();
        let key = format!("{}[{}->{}]", node.op.name(), in_dt.join(","), out_dt.join(","))
            .replace("Some(", "").replace(")", "");
        *hist.entry(key).or_default() += 1;
        if show_ops {
            println!("OP\t{}\t{}\t{:?}", node.name, node.op.name(), node.op.info().unwrap_or_default());
        }
    }
    let runnable = model.into_runnable().map_err(|e| e.context("stage=into_runnable"))?;
    let t3 = Instant::now();

    let bytes = std::fs::read(input_path)?;
    let data: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let input: Tensor = tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), data)?.into();

    let mut state = runnable.spawn()?;
    let mut outputs = state.run(tvec!(input.clone().into()))?;
    for _ in 0..5 { outputs = state.run(tvec!(input.clone().into()))?; }
    let mut times = Vec::with_capacity(n_runs);
    for _ in 0..n_runs {
        let inp = tvec!(input.clone().into());
        let s = Instant::now();
        outputs = state.run(inp)?;
        times.push(s.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if std::env::args().any(|a| a.starts_with("--profile")) {
        // per-op-kind wall time over 20 runs, via run_plan_with_eval wrapping tract_core::plan::eval
        let per_node = std::env::args().any(|a| a == "--profile-nodes");
        let mut acc: BTreeMap<String, f64> = BTreeMap::new();
        for _ in 0..20 {
            state.run_plan_with_eval(tvec!(input.clone().into()), |ctx, st, node, inp| {
                let s = Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, st, node, inp);
                let key = if per_node { format!("{:04} {} {}", node.id, node.op.name(), node.name) } else { node.op.name().to_string() };
                *acc.entry(key).or_default() += s.elapsed().as_secs_f64() * 1e3 / 20.0;
                r
            })?;
        }
        let mut v: Vec<_> = acc.into_iter().collect();
        v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        let total: f64 = v.iter().map(|x| x.1).sum();
        for (k, t) in v.iter().take(if per_node { 1000 } else { 12 }) { println!("PROFILE\t{k}\t{t:.3}ms"); }
        println!("PROFILE\tTOTAL\t{total:.3}ms");
    }
    let median = times[times.len() / 2];
    for (i, o) in outputs.iter().enumerate() {
        let o = o.cast_to::<f32>()?;
        let sl = o.to_plain_array_view::<f32>()?; // 0.23: Tensor::as_slice is gone
        let mut buf = Vec::with_capacity(sl.len() * 4);
        for v in sl.iter() { buf.extend_from_slice(&v.to_le_bytes()); }
        std::fs::write(format!("{out_prefix}.out{i}.f32"), buf)?;
        std::fs::write(format!("{out_prefix}.out{i}.shape"), format!("{:?}", o.shape()))?;
    }
    let ops: Vec<String> = hist.iter().map(|(k, v)| format!("{k}x{v}")).collect();
    println!("RESULT\t{}\tOK\tload_ms={:.1}\toptimize_ms={:.1}\tplan_ms={:.1}\tmedian_ms={:.3}\tmin_ms={:.3}\tops={}",
        model_path, (t1 - t0).as_secs_f64() * 1e3, (t2 - t1).as_secs_f64() * 1e3, (t3 - t2).as_secs_f64() * 1e3,
        median, times[0], ops.join(" "));
    Ok(())
}
