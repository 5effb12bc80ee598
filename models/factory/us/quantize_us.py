"""Static int8 quantization of model.pruned.onnx -> model.onnx, held-out evaluation of the three forms,
min_fraction choice, parity fixtures and model.toml.

  python quantize_us.py            # quantize, evaluate, fixtures, manifest (tolerances from $CACHE_US/tract.json
                                   # when bench_us.py has measured them, else the defaults below)

int8 format: onnxruntime QOperator restricted to Conv+Relu -> QLinearConv with the ReLU folded into its output
range, u8 activations / s8 weights, per-tensor scales, MinMax calibration. tract keeps the tensors u8 from the
input QuantizeLinear through all six feature convolutions; the 16-channel 1x1 head stays fp32 (after one
DequantizeLinear of a 14x14 map): in tract it was faster than the u8 head, whose requantized output also
coarsened the logits (EXCLUDE_HEAD=0 quantizes it too; see the model card for what else was tried).
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import zoo  # noqa: E402  (models/factory/zoo.py)
from zoo import session, sha256  # noqa: E402

import data_us as data
import preprocess_us as P

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
OUT_DIR = os.path.join(ROOT, "models", "us-fast-fluid")
FIX_DIR = os.path.join(ROOT, "tests", "fixtures", "us-fast-fluid")
FP32 = os.path.join(OUT_DIR, "model.fp32.onnx")
PRUNED = os.path.join(OUT_DIR, "model.pruned.onnx")
INT8 = os.path.join(OUT_DIR, "model.onnx")
FORMS = (("fp32", FP32), ("pruned", PRUNED), ("int8", INT8))
METRICS = os.path.join(data.CACHE, "metrics.json")
TRACT_JSON = os.path.join(data.CACHE, "tract.json")
THRESHOLD = 0.5       # per-pixel probability (logit > 0)
EXCLUDE_HEAD = os.environ.get("EXCLUDE_HEAD", "1") == "1"




def run(sess, x):
    return zoo.run(sess, x)[:, 0]



def quantize():
    xc, _, _, _ = data.load("calib")
    zoo.quantize_int8(PRUNED, INT8, xc, data.CACHE, exclude_head=EXCLUDE_HEAD,
                      doc=(f"us-fast-fluid int8 (QOperator QLinearConv u8/s8 per-tensor, ReLU folded"
                           f"{', fp32 1x1 head' if EXCLUDE_HEAD else ''}), calibrated on {len(xc)} synthetic images"))
    return len(xc)


# ------------------------------------------------------------------------------------------------ metrics

def auc_score(score, y):
    from train_us import auc_score as a
    return a(score, y)


def metrics(logits, t, y, min_fraction):
    pred = logits > 0.0
    gt = t.astype(np.float32) >= 0.5
    pos = y == 1

    def pooled(sel):
        p, g = pred[sel], gt[sel]
        inter, ps, gs = (p & g).sum(), p.sum(), g.sum()
        return float(2 * inter / max(ps + gs, 1)), float(inter / max((p | g).sum(), 1))

    dpos, ipos = pooled(pos)
    dall, iall = pooled(np.ones_like(pos))
    per = []
    for i in np.where(pos)[0]:
        p, g = pred[i], gt[i]
        s = p.sum() + g.sum()
        per.append(1.0 if s == 0 else 2 * (p & g).sum() / s)
    frac = pred.reshape(len(pred), -1).mean(1)
    present = frac >= min_fraction
    return {"dice_pos": dpos, "iou_pos": ipos, "dice_all": dall, "iou_all": iall,
            "dice_pos_mean_per_image": float(np.mean(per)),
            "sensitivity": float(present[pos].mean()), "specificity": float((~present[~pos]).mean()),
            "auc": float(auc_score(frac, y)),
            "fp_pixels_on_negatives": float(pred[~pos].mean())}


def choose_min_fraction(logits, y):
    """Fluid-pixel count k (of OUT*OUT) maximising Youden's J on validation; ties -> middle of the best
    plateau. Written as (k - 0.5) / (OUT*OUT) so that `fraction >= min_fraction` means `count >= k`."""
    n = P.OUT * P.OUT
    cnt = (logits > 0).reshape(len(logits), -1).sum(1)
    ks = np.arange(1, 80)
    j = np.array([(cnt[y == 1] >= k).mean() + (cnt[y == 0] < k).mean() for k in ks])
    best = np.where(j >= j.max() - 1e-12)[0]
    k = int(ks[best[len(best) // 2]])
    return k, round((k - 0.5) / n, 6), float(j.max() - 1)


def evaluate(n_calib):
    xv, tv, yv, _ = data.load("val")
    xt, tt, yt, mt = data.load("test")
    logits = {}
    for name, path in FORMS:
        s = session(path)
        logits[name] = (run(s, xv), run(s, xt))
    k, minf, j = choose_min_fraction(logits["int8"][0], yv)
    res = {"n_calib": n_calib, "n_val": int(len(yv)), "n_test": int(len(yt)), "n_test_pos": int(yt.sum()),
           "min_fraction": minf, "min_fraction_pixels": k, "val_youden_j_int8": j,
           "test_pos_with_empty_gt": int(((tt >= 0.5).reshape(len(tt), -1).sum(1)[yt == 1] == 0).sum()),
           "forms": {}}
    for name, _ in FORMS:
        res["forms"][name] = metrics(logits[name][1], tt, yt, minf)
        res["forms"][name]["val"] = metrics(logits[name][0], tv, yv, minf)
    # by fluid size (test positives): sensitivity per thickness band, int8
    cnt = (logits["int8"][1] > 0).reshape(len(yt), -1).mean(1) >= minf
    bands = [(0, 5), (5, 10), (10, 30)]
    res["int8_sensitivity_by_max_thickness_mm"] = {
        f"{a}-{b}": float(cnt[(yt == 1) & (mt[:, 0] >= a) & (mt[:, 0] < b)].mean()) for a, b in bands}
    res["int8_specificity_gallbladder_next_to_kidney"] = float((~cnt[(yt == 0) & (mt[:, 3] == 1)]).mean())
    d = logits["int8"][1] - logits["pruned"][1]
    res["int8_vs_pruned_test_max_abs_logit"] = float(np.abs(d).max())
    res["int8_vs_pruned_mask_agreement"] = float(((logits["int8"][1] > 0) == (logits["pruned"][1] > 0)).mean())
    res["pruned_vs_fp32_mask_agreement"] = float(((logits["pruned"][1] > 0) == (logits["fp32"][1] > 0)).mean())
    print(json.dumps(res, indent=1))
    with open(METRICS, "w") as f:
        json.dump(res, f, indent=1)
    return res


# ------------------------------------------------------------------------------------------------ fixtures

def fixtures():
    """6 held-out test inputs: 3 positives (small, medium, large fluid), 3 negatives (one with a gallbladder next
    to the kidney when available); outputs of the three forms from onnxruntime (1 thread)."""
    os.makedirs(FIX_DIR, exist_ok=True)
    xt, tt, yt, mt = data.load("test")
    sess = {name: session(path) for name, path in FORMS}
    pos = [i for i in np.where(yt == 1)[0]]
    picks = []
    for lo, hi in ((2.5, 6), (6, 12), (12, 30)):
        picks.append(next(i for i in pos if lo <= mt[i, 0] < hi and (tt[i] >= 0.5).sum() > 0))
    negs = np.where(yt == 0)[0]
    gbn = [i for i in negs if mt[i, 3] == 1]
    picks += ([gbn[0]] if gbn else []) + [i for i in negs if i not in gbn[:1]][:3 - min(1, len(gbn))]
    cases = []
    for n, i in enumerate(picks):
        x = xt[i:i + 1]
        name = f"case{n}.f32"
        x.astype("<f4").tofile(os.path.join(FIX_DIR, name))
        c = {"input": name, "positive": bool(yt[i] == 1), "test_index": int(i),
             "fluid_max_thickness_mm": round(float(mt[i, 0]), 2)}
        for form, _ in (("int8", 0), ("pruned", 0), ("fp32", 0)):
            c[form] = zoo.rounded7(sess[form].run(None, {"input": x})[0])
        cases.append(c)
    doc = {"model": "us-fast-fluid", "input_shape": [1, 1, P.SIZE, P.SIZE], "output_shape": [1, 1, P.OUT, P.OUT],
           "note": "inputs are after preprocessing step 5 (raw little-endian float32); outputs are logits from "
                   f"onnxruntime {ort.__version__} CPUExecutionProvider, 1 thread, flattened row-major, rounded to "
                   "7 significant digits; int8 = model.onnx, pruned = model.pruned.onnx, fp32 = model.fp32.onnx",
           "cases": cases}
    zoo.save_fixtures(FIX_DIR, doc)


# ------------------------------------------------------------------------------------------------ manifest

def tolerances():
    """[parity] values: ~3x what tract vs onnxruntime measured on the fixtures (bench_us.py), floor 1e-5; the mask
    agreement floor 0.001 under the lowest measured."""
    if os.path.exists(TRACT_JSON):
        p = json.load(open(TRACT_JSON))["parity"]
        return (zoo.tolerance(p["int8"]["max_abs"]), zoo.tolerance(max(p["fp32"]["max_abs"], p["pruned"]["max_abs"])),
                min(0.999, float(np.floor(min(p[f]["mask_agreement"] for f in p) * 1000) / 1000) - 0.001))
    return 1e-3, 1e-4, 0.999


def manifest(res, path=None):
    """model.toml (or `path`) from the evaluation `res` and the tract measurement (tolerances())."""
    path = path or os.path.join(OUT_DIR, "model.toml")
    max_abs, fp32_max_abs, agree = tolerances()
    m = zoo.manifest_spec(
        "us-fast-fluid", "0.1.0", "segmentation",
        f"int8 static, QOperator QLinearConv u8/s8 per-tensor (ReLU folded){', 1x1 head conv fp32' if EXCLUDE_HEAD else ''}, MinMax calibration on {res['n_calib']} synthetic images",
        "Free fluid in Morison's pouch (FAST RUQ view) segmentation, trained on synthetic ultrasound phantoms; runtime reference, not a medical device",
        INT8, FP32, PRUNED, kept_from=os.path.join(OUT_DIR, "model.toml"))
    m.update(input_shape=[1, 1, P.SIZE, P.SIZE], frames="all", window=(128.0, 256.0), mean=P.MEAN, std=P.STD,
             output_name="mask", activation="sigmoid",
             parity={"note": "tract vs onnxruntime on tests/fixtures/us-fast-fluid, ~3x the measured max |diff| "
                             "(README.md; bench_us.py)",
                     "max_abs": max_abs, "fp32_max_abs": fp32_max_abs, "min_mask_agreement": agree},
             labels=[zoo.label("free_fluid", threshold=THRESHOLD, min_fraction=res["min_fraction"])])
    zoo.write_manifest(path, m, FORMS)


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    what = sys.argv[1:] or ["quantize", "evaluate", "fixtures", "manifest"]
    n = quantize() if "quantize" in what else len(data.load("calib")[0])
    res = evaluate(n) if "evaluate" in what else json.load(open(METRICS))
    if "fixtures" in what:
        fixtures()
    if "manifest" in what:
        manifest(res)
