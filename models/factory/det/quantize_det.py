"""Static int8 quantization of model.pruned.onnx -> model.onnx, held-out evaluation (mAP@0.5) of the three forms,
label thresholds, parity fixtures and model.toml.

  python quantize_det.py [quantize] [evaluate] [fixtures] [manifest]     (default: all four)

int8 format (as models/factory/us/quantize_us.py): onnxruntime QOperator restricted to Conv+Relu -> QLinearConv
with the ReLU folded into its output range, u8 activations / s8 weights, per-tensor scales, MinMax calibration;
the 1x1 detection head stays fp32 (EXCLUDE_HEAD=0 quantizes it too). Standard ai.onnx ops only.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import zoo  # noqa: E402  (models/factory/zoo.py)
from zoo import session, sha256  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data_det as data  # noqa: E402
import decode_det as Dd  # noqa: E402
import preprocess_det as P  # noqa: E402

ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
OUT_DIR = os.path.join(ROOT, "models", "cxr-tiny-det")
FIX_DIR = os.path.join(ROOT, "tests", "fixtures", "cxr-tiny-det")
FP32 = os.path.join(OUT_DIR, "model.fp32.onnx")
PRUNED = os.path.join(OUT_DIR, "model.pruned.onnx")
INT8 = os.path.join(OUT_DIR, "model.onnx")
FORMS = (("fp32", FP32), ("pruned", PRUNED), ("int8", INT8))
METRICS = os.path.join(data.CACHE, "metrics.json")
TRACT_JSON = os.path.join(data.CACHE, "tract.json")
EXCLUDE_HEAD = os.environ.get("EXCLUDE_HEAD", "1") == "1"
IOU_THRESHOLD = 0.45
MAX_DETECTIONS = 20




run = zoo.run



def quantize():
    xc = data.load("calib")[0]
    zoo.quantize_int8(PRUNED, INT8, xc, data.CACHE, exclude_head=EXCLUDE_HEAD,
                      doc=(f"cxr-tiny-det int8 (QOperator QLinearConv u8/s8 per-tensor, ReLU folded"
                           f"{', fp32 1x1 head' if EXCLUDE_HEAD else ''}), calibrated on {len(xc)} synthetic images"))
    return len(xc)


# ------------------------------------------------------------------------------------------------ evaluation

def match_counts(dets, gts, cls, thr, iou_thr=0.5):
    """Object-level TP / FP / FN of class `cls` at score >= thr (greedy by score, IoU >= 0.5), and image-level
    presence (any detection of the class at >= thr) against 'has an object of the class'."""
    tp = fp = fn = 0
    img_pred, img_true = [], []
    for d, (gb, gl) in zip(dets, gts):
        g = gb[gl == cls]
        used = set()
        boxes = [b for s, c, b, _ in d if c == cls and s >= thr]
        for b in boxes:
            best, bj = 0.0, -1
            for j, gg in enumerate(g):
                if j in used:
                    continue
                o = Dd.iou(b, gg)
                if o > best:
                    best, bj = o, j
            if best >= iou_thr:
                used.add(bj)
                tp += 1
            else:
                fp += 1
        fn += len(g) - len(used)
        img_pred.append(len(boxes) > 0)
        img_true.append(len(g) > 0)
    ip, it = np.array(img_pred), np.array(img_true)
    return tp, fp, fn, float(ip[it].mean()), float((~ip[~it]).mean())


def choose_thresholds(dets, gts):
    """Per label: the score threshold (grid 0.05..0.95, step 0.01) maximising the object-level F1 at IoU 0.5 on
    validation (int8 model); ties -> middle of the best plateau."""
    out = {}
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    for c, name in enumerate(Dd.LABELS):
        f1 = []
        for t in grid:
            tp, fp, fn, _, _ = match_counts(dets, gts, c, t)
            f1.append(2 * tp / max(2 * tp + fp + fn, 1))
        f1 = np.array(f1)
        best = np.where(f1 >= f1.max() - 1e-12)[0]
        out[name] = (float(grid[best[len(best) // 2]]), float(f1.max()))
    return out


def evaluate(n_calib):
    xv, bv, lv, _ = data.load("val")
    xt, bt, lt, bgt = data.load("test")
    gv, gt = list(zip(bv, lv)), list(zip(bt, lt))
    outs, res = {}, {"n_calib": n_calib, "n_val": len(xv), "n_test": len(xt),
                     "test_objects": np.bincount(np.concatenate(lt), minlength=2).tolist(),
                     "test_empty_images": int(sum(len(l) == 0 for l in lt)), "forms": {}}
    dets = {}
    for name, path in FORMS:
        s = session(path)
        outs[name] = (run(s, xv), run(s, xt))
        dv = [Dd.decode(o, Dd.EVAL_MIN_SCORE, IOU_THRESHOLD, MAX_DETECTIONS) for o in outs[name][0]]
        ap_t, dt = Dd.evaluate(outs[name][1], gt, Dd.EVAL_MIN_SCORE, IOU_THRESHOLD, MAX_DETECTIONS)
        ap_v = {c: Dd.average_precision(dv, gv, k) for k, c in enumerate(Dd.LABELS)}
        ap_v["mAP"] = float(np.mean(list(ap_v.values())))
        dets[name] = (dv, dt)
        res["forms"][name] = {"test_ap50": ap_t, "val_ap50": ap_v}
    th = choose_thresholds(dets["int8"][0], gv)
    res["thresholds"] = {k: v[0] for k, v in th.items()}
    res["val_f1_at_threshold_int8"] = {k: v[1] for k, v in th.items()}
    for name, _ in FORMS:
        op = {}
        for c, lab in enumerate(Dd.LABELS):
            tp, fp, fn, sens, spec = match_counts(dets[name][1], gt, c, res["thresholds"][lab])
            op[lab] = {"tp": tp, "fp": fp, "fn": fn, "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
                       "image_sensitivity": sens, "image_specificity": spec}
        res["forms"][name]["test_operating_point"] = op
    # nodule recall at threshold by size (int8, test), diameter in mm = box width (256 px) * 1.6
    rec = {}
    thr = res["thresholds"]["nodule"]
    for lo, hi in ((5, 10), (10, 20), (20, 31)):
        hit = tot = 0
        for d, (gb, gl) in zip(dets["int8"][1], gt):
            for g in gb[gl == 0]:
                dmm = (g[2] - g[0]) * 1.6
                if lo <= dmm < hi:
                    tot += 1
                    hit += any(c == 0 and s >= thr and Dd.iou(b, g) >= 0.5 for s, c, b, _ in d)
        rec[f"{lo}-{hi}mm"] = [hit, tot]
    res["int8_nodule_recall_by_diameter"] = rec
    d = outs["int8"][1] - outs["pruned"][1]
    res["int8_vs_pruned_test_max_abs"] = float(np.abs(d).max())
    print(json.dumps(res, indent=1))
    with open(METRICS, "w") as f:
        json.dump(res, f, indent=1)
    return res


# ------------------------------------------------------------------------------------------------ fixtures

def min_threshold(res):
    return min(res["thresholds"].values())


def fixtures(res):
    """6 held-out test inputs: empty (one of them with ECG electrodes when available), nodule only, foreign body
    only (a coin and a bar), both. Picked so that every form's detections at the label thresholds match the truth,
    and no decoded score is within 0.02 of the lowest label threshold (robust to tract/onnxruntime rounding)."""
    import synth_det
    os.makedirs(FIX_DIR, exist_ok=True)
    xt, bt, lt, _ = data.load("test")
    base = data.SPLITS["test"][0]
    sess = {name: session(path) for name, path in FORMS}
    thr, mthr = res["thresholds"], min_threshold(res)
    want = ["empty", "empty_ecg", "nodule", "coin", "bar", "both"]
    got = {}
    for i in range(len(xt)):
        if len(got) == len(want):
            break
        _, _, _, _, _, _, kinds, n_ecg = synth_det.generate_meta(base + i)
        kind = ("empty_ecg" if n_ecg else "empty") if not kinds else (
            "both" if "nodule" in kinds and ("coin" in kinds or "bar" in kinds) else
            "nodule" if set(kinds) == {"nodule"} else "coin" if set(kinds) == {"coin"} else
            "bar" if set(kinds) == {"bar"} else None)
        if kind is None or kind in got:
            continue
        x = xt[i:i + 1]
        ok = True
        outs = {}
        for form, _ in FORMS:
            o = sess[form].run(None, {"input": x})[0]
            outs[form] = o
            score = Dd.cells(o)[0]
            if np.any(np.abs(score - mthr) < 0.02):
                ok = False
            dets = [d for d in Dd.decode(o, mthr, IOU_THRESHOLD, MAX_DETECTIONS) if d[0] >= thr[Dd.LABELS[d[1]]]]
            tp, fp, fn = 0, 0, 0
            for c in range(len(Dd.LABELS)):
                a, b, cc, _, _ = match_counts([dets], [(bt[i], lt[i])], c, 0.0)
                tp, fp, fn = tp + a, fp + b, fn + cc
            if fp or fn:
                ok = False
        if ok:
            got[kind] = (i, outs, kinds, n_ecg)
    cases = []
    for n, kind in enumerate(k for k in want if k in got):
        i, outs, kinds, n_ecg = got[kind]
        name = f"case{n}.f32"
        xt[i:i + 1].astype("<f4").tofile(os.path.join(FIX_DIR, name))
        c = {"input": name, "kind": kind, "test_index": int(i), "seed": base + i, "ecg_electrodes": int(n_ecg)}
        for form in ("int8", "pruned", "fp32"):
            c[form] = zoo.rounded7(outs[form])
        # decoded from the rounded values exactly as written (what a reader of this file gets)
        c["detections"] = {form: Dd.as_json(Dd.decode(np.array(c[form], np.float32).reshape(outs[form].shape),
                                                      mthr, IOU_THRESHOLD, MAX_DETECTIONS))
                           for form in ("int8", "pruned", "fp32")}
        c["truth"] = [{"label": Dd.LABELS[l], "box": [round(float(v), 4) for v in b]} for b, l in zip(bt[i], lt[i])]
        cases.append(c)
        print("fixture", name, kind, "truth", c["truth"], "int8", c["detections"]["int8"])
    missing = [k for k in want if k not in got]
    if missing:
        print("WARNING: no clean fixture for", missing)
    # independent check of the NMS with torchvision when importable
    try:
        for c in cases:
            for form in ("int8", "pruned", "fp32"):
                o = np.array(c[form], np.float32).reshape(1, 7, P.GRID, P.GRID)
                a = Dd.as_json(Dd.decode(o, mthr, IOU_THRESHOLD, MAX_DETECTIONS))
                b = Dd.as_json(Dd.decode_torchvision(o, mthr, IOU_THRESHOLD, MAX_DETECTIONS))
                assert a == b, (c["input"], form, a, b)
        print("torchvision.ops.batched_nms agrees on every fixture")
    except ImportError:
        print("torchvision not importable: NMS cross-check skipped")
    doc = {"model": "cxr-tiny-det", "input_shape": [1, 1, P.SIZE, P.SIZE], "output_shape": [1, 7, P.GRID, P.GRID],
           "note": "inputs are after preprocessing step 5 (raw little-endian float32); outputs are the raw `det` "
                   f"tensor from onnxruntime {ort.__version__} CPUExecutionProvider, 1 thread, flattened row-major, "
                   "rounded to 7 significant digits; int8 = model.onnx, pruned = model.pruned.onnx, fp32 = "
                   "model.fp32.onnx. detections = decode_det.py on those rounded outputs: cells with score >= "
                   f"{mthr} (the lowest label threshold), per-class greedy NMS IoU > {IOU_THRESHOLD} suppressed, "
                   f"max_detections {MAX_DETECTIONS}, score-descending (ties: lower cell index); boxes x1,y1,x2,y2 in "
                   "input (256x256) pixels; each label's own threshold then decides presence "
                   f"({', '.join(f'{k} {v}' for k, v in thr.items())}). truth = generator boxes in input pixels.",
           "cases": cases}
    zoo.save_fixtures(FIX_DIR, doc)


# ------------------------------------------------------------------------------------------------ manifest

def tolerances():
    """[parity]: ~3x what tract vs onnxruntime measured on the fixtures (bench_det.py), floors 1e-5."""
    if os.path.exists(TRACT_JSON):
        p = json.load(open(TRACT_JSON))["parity"]
        return zoo.tolerance(p["int8"]["max_abs"]), zoo.tolerance(max(p["fp32"]["max_abs"], p["pruned"]["max_abs"]))
    return 1e-3, 1e-4


def manifest(res, path=None):
    """model.toml (or `path`) from the evaluation `res` and the tract measurement (tolerances())."""
    path = path or os.path.join(OUT_DIR, "model.toml")
    max_abs, fp32_max_abs = tolerances()
    m = zoo.manifest_spec(
        "cxr-tiny-det", "0.1.0", "detection",
        f"int8 static, QOperator QLinearConv u8/s8 per-tensor (ReLU folded){', 1x1 head conv fp32' if EXCLUDE_HEAD else ''}, MinMax calibration on {res['n_calib']} synthetic images",
        "Nodule / metallic foreign body detector for frontal chest X-rays, trained on synthetic phantoms; runtime reference, not a medical device",
        INT8, FP32, PRUNED, kept_from=os.path.join(OUT_DIR, "model.toml"))
    m.update(input_shape=[1, 1, P.SIZE, P.SIZE], window="dicom", mean=P.MEAN, std=P.STD,
             output_name="det", activation="sigmoid",
             detection={"stride": P.STRIDE, "iou_threshold": IOU_THRESHOLD, "max_detections": MAX_DETECTIONS},
             parity={"note": "tract vs onnxruntime on tests/fixtures/cxr-tiny-det, ~3x the measured max |diff| "
                             "(README.md; bench_det.py)",
                     "max_abs": max_abs, "fp32_max_abs": fp32_max_abs, "min_box_iou": 0.9},
             labels=[zoo.label(k, threshold=v) for k, v in res["thresholds"].items()])
    zoo.write_manifest(path, m, FORMS)


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    what = sys.argv[1:] or ["quantize", "evaluate", "fixtures", "manifest"]
    n = quantize() if "quantize" in what else len(data.load("calib")[0])
    res = evaluate(n) if "evaluate" in what else json.load(open(METRICS))
    if "fixtures" in what:
        fixtures(res)
    if "manifest" in what:
        manifest(res)
