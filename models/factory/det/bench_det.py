"""tract 0.23.9 vs onnxruntime: parity on the fixtures (raw outputs and decoded boxes) and single-thread timings
of the three forms, one run on one machine.

  TRACT_BENCH=/path/to/tract-bench python bench_det.py [n_runs]     (default 100 runs per measurement)

tract-bench is models/factory/tract-bench (built out of tree, --shape=1x1x256x256). tract runs with
TRACT_CPU_ISA=-amx-int8 (bedside's setting on x86-64, src/infer.rs) unless TRACT_CPU_ISA is already set.
Writes $CACHE_DET/tract.json (parity, timings, op histograms, int8 per-op profile).
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import decode_det as Dd  # noqa: E402
import preprocess_det as P  # noqa: E402
import zoo  # noqa: E402  (quantize_det put models/factory on the path)
from quantize_det import FIX_DIR, FORMS, IOU_THRESHOLD, MAX_DETECTIONS, METRICS, TRACT_JSON, session  # noqa: E402

BIN = os.environ.get("TRACT_BENCH", "/work/scratch/tract-bench-det/release/tract-bench")
ISA = os.environ.get("TRACT_CPU_ISA", "-amx-int8")
SHAPE = f"--shape=1x1x{P.SIZE}x{P.SIZE}"


def tract(model, inp, prefix, n, extra=()):
    env = {**os.environ, "TRACT_CPU_ISA": ISA}
    env.pop("TRACT_THREADS", None)
    p = subprocess.run([BIN, model, inp, prefix, str(n), SHAPE, *extra], capture_output=True, text=True, env=env)
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT")]
    if p.returncode != 0 or not line or "\tOK\t" not in line[0]:
        raise RuntimeError(p.stdout + p.stderr)
    kv = dict(x.split("=", 1) for x in line[0].split("\t")[3:])
    prof = [l.split("\t")[1:] for l in p.stdout.splitlines() if l.startswith("PROFILE")]
    return np.fromfile(prefix + ".out0.f32", dtype="<f4"), float(kv["median_ms"]), kv["ops"], prof


def main(n):
    doc = json.load(open(os.path.join(FIX_DIR, "parity.json")))
    thr = json.load(open(METRICS))["thresholds"]
    mthr = min(thr.values())
    shape = doc["output_shape"]
    res = {"n_runs": n, "tract_cpu_isa": ISA, "parity": {}, "timing_ms": {}, "ops": {}}
    res["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    res["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    with tempfile.TemporaryDirectory() as tmp:
        for form, path in FORMS:
            diffs, min_iou, same = [], 1.0, True
            for i, c in enumerate(doc["cases"]):
                out, _, ops, _ = tract(path, os.path.join(FIX_DIR, c["input"]), os.path.join(tmp, f"{form}{i}"), 1)
                ref = np.array(c[form], dtype=np.float32)
                diffs.append(float(np.abs(out - ref).max()))
                dt = Dd.decode(out.reshape(shape), mthr, IOU_THRESHOLD, MAX_DETECTIONS)
                dr = c["detections"][form]
                if len(dt) != len(dr) or any(Dd.LABELS[a[1]] != b["label"] for a, b in zip(dt, dr)):
                    same = False
                for a, b in zip(dt, dr):
                    min_iou = min(min_iou, Dd.iou(a[2], b["box"]))
            res["parity"][form] = {"max_abs": max(diffs), "per_case": diffs, "min_box_iou": min_iou,
                                   "same_detections": same}
            res["ops"][form] = ops
            print(f"parity {form}: max|tract-ort| {max(diffs):.3g} (per case {['%.2g' % d for d in diffs]}), "
                  f"decoded boxes: same list {same}, min IoU {min_iou:.6f}", flush=True)
        inp = os.path.join(FIX_DIR, doc["cases"][0]["input"])
        x = np.fromfile(inp, dtype="<f4").reshape(doc["input_shape"])
        for form, path in FORMS:
            _, ms, _, _ = tract(path, inp, os.path.join(tmp, "t"), n)
            res["timing_ms"][f"tract_{form}_1t"] = ms
            res["timing_ms"][f"ort_{form}_1t"] = zoo.ort_ms(session(path, 1), x, n)
            print(f"1 thread {form}: tract {ms:.3f} ms, onnxruntime {res['timing_ms'][f'ort_{form}_1t']:.3f} ms",
                  flush=True)
        for form, path in FORMS:
            _, _, _, prof = tract(path, inp, os.path.join(tmp, "p"), 20, ["--profile"])
            res.setdefault("profile", {})[form] = prof
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    with open(TRACT_JSON, "w") as f:
        json.dump(res, f, indent=1)
    t = res["timing_ms"]
    print("| form | tract 1 thread | onnxruntime 1 thread |")
    print("|---|---|---|")
    for form, _ in FORMS:
        print(f"| {form} | {t[f'tract_{form}_1t']:.3f} | {t[f'ort_{form}_1t']:.3f} |")
    print(json.dumps({k: v for k, v in res.items() if k not in ("profile",)}, indent=1))
    print("int8 profile:", res["profile"]["int8"])


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
