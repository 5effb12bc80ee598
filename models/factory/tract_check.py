"""tract 0.23.9 vs onnxruntime on the parity fixtures, every form, plus tract's optimised op histogram and the
int8 per-op profile. Writes $CACHE/tract.json (quantize_manifest.py takes the [parity] tolerances from it when it
was measured on the same files).

  TRACT_BENCH=/path/to/tract-bench python tract_check.py

tract-bench is models/factory/tract-bench, built out of tree:
  CARGO_TARGET_DIR=/work/scratch/tract-bench-cls cargo build --release --manifest-path models/factory/tract-bench/Cargo.toml
tract runs single-threaded with TRACT_CPU_ISA=-amx-int8 (bedside's setting on x86-64, src/infer.rs) unless
TRACT_CPU_ISA is set. Timings of all forms, tract and onnxruntime, 1 and 2 threads: bench_all.py.
"""
import json
import os
import subprocess
import tempfile

import numpy as np

from fixtures_samples import FIX_DIR
from quantize_manifest import FORMS, TRACT_JSON, sha256

BIN = os.environ.get("TRACT_BENCH", "/work/scratch/tract-bench-cls/release/tract-bench")
ISA = os.environ.get("TRACT_CPU_ISA", "-amx-int8")


def tract(model, inp, prefix, n, extra=()):
    env = {**os.environ, "TRACT_CPU_ISA": ISA}
    env.pop("TRACT_THREADS", None)
    p = subprocess.run([BIN, model, inp, prefix, str(n), "--shape=1x1x224x224", *extra], capture_output=True,
                       text=True, env=env)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT")]
    if p.returncode != 0 or not line or "\tOK\t" not in line[0]:
        raise RuntimeError(p.stdout + p.stderr)
    kv = dict(x.split("=", 1) for x in line[0].split("\t")[3:])
    prof = [l.split("\t")[1:] for l in p.stdout.splitlines() if l.startswith("PROFILE")]
    return np.fromfile(prefix + ".out0.f32", dtype="<f4"), float(kv["median_ms"]), kv["ops"], prof


def main():
    doc = json.load(open(os.path.join(FIX_DIR, "parity.json")))
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    res = {"cpu": cpu, "tract_cpu_isa": ISA, "parity": {}, "ops": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for form, path in FORMS:
            diffs, agree = [], True
            for i, c in enumerate(doc["cases"]):
                out, _, ops, _ = tract(path, os.path.join(FIX_DIR, c["input"]), os.path.join(tmp, f"{form}{i}"), 1)
                ref = np.array(c[form], dtype=np.float32)
                diffs.append(float(np.abs(out - ref).max()))
                agree &= int(out.argmax()) == int(ref.argmax())
                print(f"{form:6s} {c['input']} {c['label']:12s} tract {np.round(out, 4)} ort {np.round(ref, 4)} "
                      f"|d| {diffs[-1]:.2e}")
            res["parity"][form] = {"max_abs": max(diffs), "per_case": diffs, "argmax_agree": agree,
                                   "sha256": sha256(path)}
            res["ops"][form] = ops
            print(f"parity {form}: max|tract - ort| {max(diffs):.3g}, argmax agree {agree}; ops {ops}", flush=True)
        inp = os.path.join(FIX_DIR, doc["cases"][0]["input"])
        for form, path in FORMS:
            _, _, _, prof = tract(path, inp, os.path.join(tmp, "p"), 20, ["--profile"])
            res.setdefault("profile", {})[form] = prof
    with open(TRACT_JSON, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k != "profile"}, indent=1))
    print("int8 profile:", res["profile"]["int8"])
    print("wrote", TRACT_JSON)


if __name__ == "__main__":
    main()
