"""One benchmark for the whole model zoo: every model under models/ with a model.toml, each of its forms
(dense fp32 parent, pruned fp32, shipped int8), in tract 0.23.9 and onnxruntime, 1 and 2 threads, one run.

  TRACT_BENCH=/path/to/tract-bench /work/venv/bin/python models/factory/bench_all.py [--runs 100] [--rounds 3]
      [--json out.json] [--models cxr-tiny-cls,us-fast-fluid] [--seed 0]

tract-bench is models/factory/tract-bench, built out of tree:
  CARGO_TARGET_DIR=/work/scratch/tract-bench-cls cargo build --release --manifest-path models/factory/tract-bench/Cargo.toml

Per model: forms from model.toml ([model.parent] file, [model.pruned] file, [model] file), input shape from
[input] shape, input = the first fixture case of tests/fixtures/<model>/parity.json (a real preprocessed image,
raw little-endian f32). A model whose manifest names a file that is not there is skipped (and said so).

Per cell (form x runtime x threads): the median of --runs timed runs after warm-up (tract-bench: 5 warm-up runs
in its own process, model loaded and optimised for the fixed shape; onnxruntime: 10 warm-up runs,
CPUExecutionProvider, intra_op_num_threads 1 or 2, inter_op 1, sequential). tract: single-threaded as bedside
runs it for "1t", TRACT_THREADS=2 (tract-linalg's multithread executor) for "2t"; TRACT_CPU_ISA=-amx-int8
(bedside's setting on x86-64, src/infer.rs) unless TRACT_CPU_ISA is set. All cells of all models are measured
--rounds times, each round in a fresh random order (seeded), so drift and other load hit every cell alike;
the reported value is the median of a cell's round medians (the JSON keeps every round).
MACs are counted from the ONNX graph with shape inference (Conv, ConvTranspose, MatMul, Gemm, QLinearConv,
QLinearMatMul, ConvInteger, MatMulInteger; one multiply-accumulate per weight use).
"""
import argparse
import glob
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import tomllib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
MODELS = os.path.join(ROOT, "models")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
FORM_KEYS = (("parent", "dense fp32"), ("pruned", "pruned fp32"), ("shipped", "int8"))


# ------------------------------------------------------------------------------------------------ MACs

def onnx_macs(path, input_shape=None):
    """Multiply-accumulates of one inference, from the ONNX graph with shape inference."""
    import onnx
    from onnx import numpy_helper, shape_inference
    m = onnx.load(path)
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    if input_shape is not None:
        real_inputs = [i for i in m.graph.input if i.name not in inits]
        dims = real_inputs[0].type.tensor_type.shape.dim
        for d, v in zip(dims, input_shape):
            d.ClearField("dim_param")
            d.dim_value = int(v)
    m = shape_inference.infer_shapes(m)
    shapes = dict(inits)
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(numpy_helper.to_array(a.t).shape)

    def shp(name):
        s = shapes.get(name)
        if s is None or any(v is None for v in s):
            raise ValueError(f"{os.path.basename(path)}: no static shape for {name!r}")
        return s

    def attr(n, name, default):
        for a in n.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    total = 0
    for n in m.graph.node:
        op = n.op_type
        if op in ("Conv", "QLinearConv", "ConvInteger"):
            w = shp(n.input[3] if op == "QLinearConv" else n.input[1])
            out = shp(n.output[0])
            total += int(np.prod(out)) * int(np.prod(w[1:]))           # N*Cout*H*W * Cin/g*kh*kw
        elif op == "ConvTranspose":
            w, x = shp(n.input[1]), shp(n.input[0])
            total += int(np.prod(x)) * int(np.prod(w[1:]))             # N*Cin*H*W * Cout/g*kh*kw
        elif op in ("MatMul", "QLinearMatMul", "MatMulInteger"):
            a = shp(n.input[0])
            total += int(np.prod(shp(n.output[0]))) * int(a[-1])
        elif op == "Gemm":
            a = shp(n.input[0])
            k = a[0] if attr(n, "transA", 0) else a[-1]
            total += int(np.prod(shp(n.output[0]))) * int(k)
    return total


# ------------------------------------------------------------------------------------------------ runners

def tract_run(bin_path, model, inp, shape, n, threads, tmp):
    env = {**os.environ, "TRACT_CPU_ISA": os.environ.get("TRACT_CPU_ISA", "-amx-int8")}
    env.pop("TRACT_THREADS", None)
    if threads > 1:
        env["TRACT_THREADS"] = str(threads)
    prefix = os.path.join(tmp, "out")
    p = subprocess.run([bin_path, model, inp, prefix, str(n), "--shape=" + "x".join(map(str, shape))],
                       capture_output=True, text=True, env=env)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT")]
    if p.returncode != 0 or not line or "\tOK\t" not in line[0]:
        raise RuntimeError(f"tract-bench failed on {model}: {p.stdout[-2000:]}{p.stderr[-2000:]}")
    kv = dict(x.split("=", 1) for x in line[0].split("\t")[3:])
    return float(kv["median_ms"]), np.fromfile(prefix + ".out0.f32", dtype="<f4"), kv.get("ops", "")


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_run(path, x, n, threads):
    s = ort_session(path, threads)
    feed = {s.get_inputs()[0].name: x}
    for _ in range(10):
        s.run(None, feed)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        s.run(None, feed)
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


# ------------------------------------------------------------------------------------------------ discovery

def discover(only):
    models, skipped = [], []
    for toml_path in sorted(glob.glob(os.path.join(MODELS, "*", "model.toml"))):
        d = os.path.dirname(toml_path)
        name = os.path.basename(d)
        if only and name not in only:
            continue
        man = tomllib.load(open(toml_path, "rb"))
        mm = man.get("model", {})
        files = {"parent": mm.get("parent", {}).get("file"), "pruned": mm.get("pruned", {}).get("file"),
                 "shipped": mm.get("file")}
        shape = man.get("input", {}).get("shape")
        missing = [f"{k}: {'not in model.toml' if f is None else f + ' missing'}" for k, f in files.items()
                   if f is None or not os.path.exists(os.path.join(d, f))]
        if missing:
            skipped.append((name, "; ".join(missing)))
            continue
        if not shape:
            skipped.append((name, "no [input] shape in model.toml"))
            continue
        fix = os.path.join(FIXTURES, name)
        inp = None
        if os.path.exists(os.path.join(fix, "parity.json")):
            cases = json.load(open(os.path.join(fix, "parity.json"))).get("cases", [])
            if cases:
                inp = os.path.join(fix, cases[0]["input"])
        if inp is None:
            cands = sorted(glob.glob(os.path.join(fix, "case*.f32")))
            inp = cands[0] if cands else None
        if inp is None or not os.path.exists(inp):
            skipped.append((name, f"no fixture case*.f32 in {os.path.relpath(fix, ROOT)}"))
            continue
        if os.path.getsize(inp) != 4 * int(np.prod(shape)):
            skipped.append((name, f"{os.path.relpath(inp, ROOT)} is not {shape} float32"))
            continue
        sha = {}
        import hashlib
        for k, f in files.items():
            want = mm.get("sha256") if k == "shipped" else mm.get(k, {}).get("sha256")
            got = hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            sha[k] = {"file": f, "sha256": got, "matches_manifest": want == got}
        models.append({"name": name, "dir": d, "shape": [int(v) for v in shape], "input": inp, "files": sha})
    return models, skipped


# ------------------------------------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tract-bench", default=os.environ.get("TRACT_BENCH"), help="tract-bench binary (or $TRACT_BENCH)")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per cell and round (default 100)")
    ap.add_argument("--rounds", type=int, default=3, help="passes over all cells, each in a new random order")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--models", help="comma-separated model names (default: every models/*/model.toml)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the cell order")
    a = ap.parse_args()
    if not a.tract_bench or not os.access(a.tract_bench, os.X_OK):
        sys.exit("need the tract-bench binary: --tract-bench PATH or TRACT_BENCH=PATH (see the docstring)")
    threads = [int(t) for t in a.threads.split(",")]
    models, skipped = discover(set(a.models.split(",")) if a.models else None)
    for name, why in skipped:
        print(f"skipping {name}: {why}", file=sys.stderr)
    if not models:
        sys.exit("no model to benchmark")
    import onnxruntime as ort

    res = {"runs_per_cell_round": a.runs, "rounds": a.rounds, "threads": threads, "seed": a.seed,
           "tract_bench": os.path.abspath(a.tract_bench),
           "tract_cpu_isa": os.environ.get("TRACT_CPU_ISA", "-amx-int8"), "onnxruntime": ort.__version__,
           "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
                       platform.processor()),
           "nproc": os.cpu_count(), "loadavg_start": open("/proc/loadavg").read().split()[:3],
           "skipped": [{"model": n, "why": w} for n, w in skipped], "models": {}}
    cells = []
    for m in models:
        x = np.fromfile(m["input"], dtype="<f4").reshape(m["shape"])
        entry = {"shape": m["shape"], "input": os.path.relpath(m["input"], ROOT), "forms": {}}
        for key, label in FORM_KEYS:
            f = m["files"][key]
            path = os.path.join(m["dir"], f["file"])
            form = {**f, "label": label, "bytes": os.path.getsize(path), "macs": onnx_macs(path, m["shape"]),
                    "ms": {}, "rounds_ms": {}}
            s = ort_session(path, 1)
            ref = s.run(None, {s.get_inputs()[0].name: x})[0].ravel()
            form["_ref"] = ref
            entry["forms"][key] = form
            for rt in ("tract", "ort"):
                for t in threads:
                    cells.append((m["name"], key, rt, t, path, m["input"], m["shape"], x))
        res["models"][m["name"]] = entry
    rng = random.Random(a.seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            order = cells[:]
            rng.shuffle(order)
            for name, key, rt, t, path, inp, shape, x in order:
                form = res["models"][name]["forms"][key]
                cell = f"{rt}_{t}t"
                if cell in form.get("errors", {}):
                    continue
                try:
                    if rt == "tract":
                        ms, out, ops = tract_run(a.tract_bench, path, inp, shape, a.runs, t, tmp)
                        d = float(np.abs(out - form["_ref"]).max()) if out.size == form["_ref"].size else float("nan")
                        prev = form.setdefault("tract_vs_ort_max_abs", {}).get(cell, 0.0)
                        form["tract_vs_ort_max_abs"][cell] = max(d, prev)
                        form["tract_ops"] = ops
                    else:
                        ms = ort_run(path, x, a.runs, t)
                except Exception as e:  # one failing cell (e.g. an op tract cannot load) must not end the run
                    form.setdefault("errors", {})[cell] = str(e)[-1000:]
                    print(f"{name} {key} {cell} failed: {str(e)[-300:]}", file=sys.stderr)
                    continue
                form["rounds_ms"].setdefault(cell, []).append(ms)
            print(f"round {r + 1}/{a.rounds} done ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    res["wall_s"] = round(time.time() - t0, 1)

    rows = ["| model | form | MB | MMAC | tract 1t | tract 2t | ORT 1t | ORT 2t | tract/ORT 1t |",
            "|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for name, entry in res["models"].items():
        for key, label in FORM_KEYS:
            f = entry["forms"][key]
            f.pop("_ref", None)
            f["ms"] = {c: float(np.median(v)) for c, v in f["rounds_ms"].items()}
            ms = f["ms"]
            cell = lambda c: f"{ms[c]:.3f}" if c in ms else ("fail" if c in f.get("errors", {}) else "–")
            r1 = ms["tract_1t"] / ms["ort_1t"] if "tract_1t" in ms and "ort_1t" in ms else float("nan")
            f["tract_over_ort_1t"] = r1
            rows.append(f"| {name} | {label} | {f['bytes'] / 1e6:.3f} | {f['macs'] / 1e6:.1f} | {cell('tract_1t')} | "
                        f"{cell('tract_2t')} | {cell('ort_1t')} | {cell('ort_2t')} | {r1:.2f} |")
        fo = entry["forms"]
        nan = float("nan")
        rat = {}
        for t in threads:
            c = f"tract_{t}t"
            rat[f"tract_int8_speedup_vs_dense_fp32_{t}t"] = fo["parent"]["ms"].get(c, nan) / fo["shipped"]["ms"].get(c, nan)
            rat[f"tract_int8_over_ort_int8_{t}t"] = fo["shipped"]["ms"].get(c, nan) / fo["shipped"]["ms"].get(f"ort_{t}t", nan)
        rat["macs_reduction_pruned_vs_dense"] = 1 - fo["pruned"]["macs"] / fo["parent"]["macs"]
        entry["ratios"] = rat
        s1 = rat.get("tract_int8_speedup_vs_dense_fp32_1t", nan)
        o1 = rat.get("tract_int8_over_ort_int8_1t", nan)
        extra = ", ".join(f"{t}t {rat[f'tract_int8_speedup_vs_dense_fp32_{t}t']:.2f}x" for t in threads if t != 1)
        if not (np.isfinite(s1) and np.isfinite(o1)):
            ratios.append(f"- {name}: ratios n/a (a cell failed, see the JSON's errors)")
            continue
        ratios.append(f"- {name}: pruned int8 vs dense fp32 in tract, 1 thread: **{s1:.2f}x** faster "
                      f"({'meets' if s1 >= 2.5 else 'misses'} the >= 2.5x goal){'; ' + extra if extra else ''}. "
                      f"tract int8 / ORT int8, 1 thread: **{o1:.2f}** ({'meets' if o1 <= 1.0 else 'misses'} the "
                      f"<= 1.0 goal). MACs pruned vs dense: -{100 * rat['macs_reduction_pruned_vs_dense']:.1f} %.")
    print("\n".join(rows))
    print()
    print("\n".join(ratios))
    print()
    print(f"median ms of {a.runs} runs per cell, median over {a.rounds} rounds in random order; {res['cpu']}, "
          f"{res['nproc']} CPUs, load {' '.join(res['loadavg_start'])} -> {' '.join(res['loadavg_end'])}; "
          f"tract TRACT_CPU_ISA={res['tract_cpu_isa']}; onnxruntime {res['onnxruntime']}")
    for name, why in skipped:
        print(f"skipped {name}: {why}")
    for name, entry in res["models"].items():
        for key, f in entry["forms"].items():
            if not f["matches_manifest"]:
                print(f"warning: {name} {f['file']} does not match the sha256 in model.toml")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
        print("wrote", a.json)


if __name__ == "__main__":
    main()
