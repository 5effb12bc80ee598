"""tract 0.23.9 vs onnxruntime on the parity fixtures + single-thread timings (tract and onnxruntime).

Needs the tract-bench binary (models/factory/tract-bench, built out of tree):
  TRACT_BENCH=/path/to/tract-bench python tract_check.py [n_runs]
Prints max|tract - onnxruntime| over the 6 fixtures' logits for int8 and fp32, and median ms of n_runs.
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from fixtures_samples import FIX_DIR
from quantize_manifest import FP32, INT8, ort_ms, session

BIN = os.environ.get("TRACT_BENCH", "/work/scratch/tract-rs/target/release/tract-bench")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 100


def tract(model, inp, prefix, n):
    p = subprocess.run([BIN, model, inp, prefix, str(n)], capture_output=True, text=True, env={**os.environ, "TRACT_THREADS": ""})
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT")]
    if p.returncode != 0 or not line or "\tOK\t" not in line[0]:
        raise RuntimeError(p.stdout + p.stderr)
    kv = dict(x.split("=", 1) for x in line[0].split("\t")[3:])
    return np.fromfile(prefix + ".out0.f32", dtype="<f4"), float(kv["median_ms"]), kv["ops"]


def main():
    doc = json.load(open(os.path.join(FIX_DIR, "parity.json")))
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, model in (("int8", INT8), ("fp32", FP32)):
            diffs = []
            for i, c in enumerate(doc["cases"]):
                out, _, ops = tract(model, os.path.join(FIX_DIR, c["input"]), os.path.join(tmp, f"{key}{i}"), 1)
                d = float(np.abs(out - np.array(c[f"ort_{key}"], dtype=np.float32)).max())
                diffs.append(d)
                print(f"{key} {c['input']} {c['label']:12s} tract {np.round(out, 4)} ort {np.round(c[f'ort_{key}'], 4)} |d| {d:.2e}")
            _, ms, ops = tract(model, os.path.join(FIX_DIR, doc["cases"][0]["input"]), os.path.join(tmp, "t"), N)
            x = np.fromfile(os.path.join(FIX_DIR, doc["cases"][0]["input"]), dtype="<f4").reshape(doc["input_shape"])
            res[key] = {"tract_vs_ort_max_abs": max(diffs), "tract_median_ms": ms, "tract_ops": ops,
                        "ort_median_ms": ort_ms(session(model), x, N), "n_runs": N}
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    res["cpu"] = cpu
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    main()
