"""tract 0.23.9 vs onnxruntime: parity on the fixtures and timings of the three forms, one run on one machine.

  TRACT_BENCH=/path/to/tract-bench python bench_us.py [n_runs]     (default 100 runs per measurement)

tract-bench is models/factory/tract-bench (built out of tree, takes --shape=NxCxHxW). tract runs with
TRACT_CPU_ISA=-amx-int8 (bedside's setting on x86-64, see src/infer.rs) unless TRACT_CPU_ISA is already set;
TRACT_THREADS=2 selects tract-linalg's multithread executor for the 2-thread column.
Writes $CACHE_US/tract.json (parity, timings, op histograms, int8 per-op profile) and prints a markdown table.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import preprocess_us as P
from quantize_us import FIX_DIR, FORMS, TRACT_JSON, session
import zoo  # noqa: E402  (quantize_us put models/factory on the path)

BIN = os.environ.get("TRACT_BENCH", "/work/scratch/tract-bench-us/release/tract-bench")
ISA = os.environ.get("TRACT_CPU_ISA", "-amx-int8")
SHAPE = f"--shape=1x1x{P.SIZE}x{P.SIZE}"


def tract(model, inp, prefix, n, threads=1, extra=()):
    env = {**os.environ, "TRACT_CPU_ISA": ISA}
    env.pop("TRACT_THREADS", None)
    if threads > 1:
        env["TRACT_THREADS"] = str(threads)
    p = subprocess.run([BIN, model, inp, prefix, str(n), SHAPE, *extra], capture_output=True, text=True, env=env)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT")]
    if p.returncode != 0 or not line or "\tOK\t" not in line[0]:
        raise RuntimeError(p.stdout + p.stderr)
    kv = dict(x.split("=", 1) for x in line[0].split("\t")[3:])
    prof = [l.split("\t")[1:] for l in p.stdout.splitlines() if l.startswith("PROFILE")]
    return np.fromfile(prefix + ".out0.f32", dtype="<f4"), float(kv["median_ms"]), kv["ops"], prof


def main(n):
    doc = json.load(open(os.path.join(FIX_DIR, "parity.json")))
    res = {"n_runs": n, "tract_cpu_isa": ISA, "parity": {}, "timing_ms": {}, "ops": {}}
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    res["cpu"] = cpu
    res["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    with tempfile.TemporaryDirectory() as tmp:
        for form, path in FORMS:
            diffs, agree = [], []
            for i, c in enumerate(doc["cases"]):
                out, _, ops, _ = tract(path, os.path.join(FIX_DIR, c["input"]), os.path.join(tmp, f"{form}{i}"), 1)
                ref = np.array(c[form], dtype=np.float32)
                diffs.append(float(np.abs(out - ref).max()))
                agree.append(float(((out > 0) == (ref > 0)).mean()))
            res["parity"][form] = {"max_abs": max(diffs), "per_case": diffs, "mask_agreement": min(agree)}
            res["ops"][form] = ops
            print(f"parity {form}: max|tract-ort| {max(diffs):.3g} (per case {['%.2g' % d for d in diffs]}), "
                  f"min mask agreement {min(agree):.5f}", flush=True)
        inp = os.path.join(FIX_DIR, doc["cases"][0]["input"])
        x = np.fromfile(inp, dtype="<f4").reshape(doc["input_shape"])
        # interleave: for each thread count, every form in tract and onnxruntime
        for threads in (1, 2):
            for form, path in FORMS:
                _, ms, _, _ = tract(path, inp, os.path.join(tmp, "t"), n, threads)
                res["timing_ms"][f"tract_{form}_{threads}t"] = ms
                res["timing_ms"][f"ort_{form}_{threads}t"] = zoo.ort_ms(session(path, threads), x, n)
                print(f"{threads} thread(s) {form}: tract {ms:.3f} ms, onnxruntime "
                      f"{res['timing_ms'][f'ort_{form}_{threads}t']:.3f} ms", flush=True)
        for form, path in FORMS:
            _, _, _, prof = tract(path, inp, os.path.join(tmp, "p"), 20, 1, ["--profile"])
            res.setdefault("profile", {})[form] = prof
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    t = res["timing_ms"]
    res["speedup_int8_vs_fp32_tract_1t"] = t["tract_fp32_1t"] / t["tract_int8_1t"]
    res["speedup_int8_vs_fp32_tract_2t"] = t["tract_fp32_2t"] / t["tract_int8_2t"]
    res["tract_int8_over_ort_int8_1t"] = t["tract_int8_1t"] / t["ort_int8_1t"]
    res["tract_int8_over_ort_int8_2t"] = t["tract_int8_2t"] / t["ort_int8_2t"]
    with open(TRACT_JSON, "w") as f:
        json.dump(res, f, indent=1)
    print("| form | tract 1 thread | tract 2 threads | onnxruntime 1 thread | onnxruntime 2 threads |")
    print("|---|---|---|---|---|")
    for form, _ in FORMS:
        print(f"| {form} | {t[f'tract_{form}_1t']:.3f} | {t[f'tract_{form}_2t']:.3f} | {t[f'ort_{form}_1t']:.3f} | "
              f"{t[f'ort_{form}_2t']:.3f} |")
    print(json.dumps({k: v for k, v in res.items() if k not in ("profile", "ops")}, indent=1))
    print("int8 profile:", res["profile"]["int8"])


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
