"""Reference values for `bedside eval` (tests/fixtures/metrics/reference.json), made by scikit-learn and pycocotools.

For fixed inputs (every random case draws from its own numpy Generator seeded by a fixed integer, so re-running
rewrites the same bytes) the script computes what bedside's metrics must equal:

  binary      one-vs-rest classification at a threshold (predicted positive iff score >= threshold): confusion
              counts, sensitivity, specificity, PPV, NPV, F1, accuracy, ROC AUC, Youden threshold/J, ROC points
  multiclass  argmax confusion matrix (rows = true, cols = predicted), accuracy, balanced accuracy, macro F1,
              per-class one-vs-rest AUC
  segmentation  per-image Dice / IoU of binary masks, plus one dataset entry (nanmean over images)
  detection   COCO bbox mAP via pycocotools COCOeval (stats[0], stats[1], all 12 stats, per-label AP)

JSON null means "undefined" (a zero denominator; sklearn's zero_division=np.nan, or pycocotools' -1). Inputs are
written exactly as they were used (scores rounded to 6 decimals and box corners to multiples of 0.25 BEFORE the
metrics were computed, so every input parses to the same f64 in any JSON reader); computed floats are rounded to
12 significant digits, so compare with a tolerance of about 1e-9. `meta.iou_thrs` / `meta.rec_thrs` hold
pycocotools' threshold arrays at full precision (they are numpy linspace values, not the shortest decimals:
rec_thrs[35] is 0.35000000000000003); a re-implementation must use exactly these f64 values.

Run (versions pinned in requirements-metrics.txt; produced with Python 3.11.7, numpy 2.4.6, scikit-learn 1.9.1,
pycocotools 2.0.11, x86_64 Linux):

  python3 -m venv /work/venv-metrics
  /work/venv-metrics/bin/pip install -r models/factory/requirements-metrics.txt
  /work/venv-metrics/bin/python models/factory/metric_refs.py        # from the repository root

Behaviour of the reference libraries that a re-implementation must mirror (verified against these versions; the
key ones are asserted in self_checks()):
  * sklearn f1_score is 2tp/(2tp+fp+fn): 0 (not null) when nothing is predicted positive but positives exist.
  * sklearn macro F1 with zero_division=np.nan skips NaN classes (mean over the defined ones); null if all NaN.
  * sklearn balanced_accuracy_score averages recall over the classes present in y_true only.
  * sklearn jaccard_score does not accept zero_division=np.nan (1.9.1 raises); it is called with zero_division=0
    and the only 0/0 case (truth and pred both empty) is turned into null here.
  * roc_curve(drop_intermediate=False) has one point per distinct score plus the leading (0,0) at threshold +inf;
    with one class only, the undefined axis is NaN (-> null) and AUC/Youden are null.
  * pycocotools caps detections at maxDets PER IMAGE PER CATEGORY (evaluateImg runs per (image, category)), after
    a stable sort by descending score; ties keep the order of the predictions list within an image. In
    accumulate, a category's detections are concatenated image by image in ascending image id and stably sorted
    by descending score: the global order is (score desc, image id asc, position in the predictions list asc).
  * matching: each detection (in that order) takes the unmatched GT with the highest IoU >= threshold, ties of
    IoU going to the LATER GT in the list (`if ious < iou: continue` then `iou = ious; m = gind`).
  * bbox IoU (maskApi.c bbIou) has no +1: inter = (min(x+w) - max(x)) * (min(y+h) - max(y)) over xywh boxes,
    union = w_d*h_d + w_g*h_g - inter; IoU >= thr is a match (the 'iou_at_thresholds' case has IoUs of exactly
    0.5, 0.55, 0.7, 0.75, 0.9 and 0.95 in binary).
  * precision is tp / (tp + fp + 2.220446049250313e-16) (np.spacing(1)), made monotone from the right, sampled at
    rec_thrs with searchsorted(rc, rec_thrs, side='left') (first rc >= thr); past the last recall: 0.
  * a category without GT gets precision -1 (-> null AP) and is left out of the mean; a category with GT but no
    detection gets 0.
  * pycocotools' loadRes fails on an empty result list (IndexError on anns[0]); the result COCO object for no
    predictions is built by hand here with an empty annotations list.
  * annotation ids must be >= 1 (0 means "unmatched" in evaluateImg); GT ids here are 1..N, loadRes gives 1..M.
"""

import contextlib
import importlib.metadata
import io
import json
import math
import os
import sys
import warnings

import numpy as np
import sklearn
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, jaccard_score,
                             precision_score, recall_score, roc_auc_score, roc_curve)
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "metrics",
                   "reference.json")

warnings.filterwarnings("ignore")  # UndefinedMetricWarning & co: the NaNs are what we want


def r12(x):
    """Round a computed float to 12 significant digits; NaN -> None; +-inf -> None."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return None
    if x == 0.0:
        return 0.0
    return float(f"{x:.12g}")


# ---------------------------------------------------------------------------------------------------- binary
def binary_expected(y_true, scores, threshold):
    y_true = np.asarray(y_true, dtype=int)
    scores = np.asarray(scores, dtype=float)
    y_pred = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    e = {
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
        "sensitivity": r12(recall_score(y_true, y_pred, zero_division=np.nan)),
        "specificity": r12(recall_score(y_true, y_pred, pos_label=0, zero_division=np.nan)),
        "ppv": r12(precision_score(y_true, y_pred, zero_division=np.nan)),
        "npv": r12(precision_score(y_true, y_pred, pos_label=0, zero_division=np.nan)),
        "f1": r12(f1_score(y_true, y_pred, zero_division=np.nan)),
        "accuracy": r12(accuracy_score(y_true, y_pred)),
    }
    # 95 % Wilson score intervals of sensitivity and specificity (statsmodels); null without cases
    from statsmodels.stats.proportion import proportion_confint
    for key, hits, n in (("sensitivity_ci", tp, tp + fn), ("specificity_ci", tn, tn + fp)):
        e[key] = [r12(v) for v in proportion_confint(int(hits), int(n), alpha=0.05, method="wilson")] if n else None
    try:
        e["auc"] = r12(roc_auc_score(y_true, scores))
    except ValueError:
        e["auc"] = None
    fpr, tpr, thr = roc_curve(y_true, scores, drop_intermediate=False)
    two_classes = len(np.unique(y_true)) == 2
    if two_classes:
        j = tpr - fpr
        i = int(np.argmax(j))  # first index of the max = highest threshold among ties
        e["youden_threshold"] = r12(thr[i])  # inf -> None
        e["youden_j"] = r12(j[i])
    else:
        e["youden_threshold"] = None
        e["youden_j"] = None
    e["roc"] = [[r12(a), r12(b)] for a, b in zip(fpr, tpr)]
    e["roc_thresholds"] = [r12(t) for t in thr]
    return e


def binary_cases():
    cases = []

    def add(name, desc, y_true, scores, threshold):
        y_true = [int(v) for v in y_true]
        scores = [round(float(s), 6) for s in scores]
        cases.append({"name": name, "description": desc, "y_true": y_true, "scores": scores,
                      "threshold": threshold, "expected": binary_expected(y_true, scores, threshold)})

    rng = np.random.default_rng(101)
    y = rng.integers(0, 2, 200)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.18), 0, 1)
    add("random_200", "200 samples, informative scores, threshold 0.5", y, s, 0.5)

    rng = np.random.default_rng(102)
    y = rng.integers(0, 2, 120)
    s = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 1)
    add("ties_1_decimal", "scores rounded to 1 decimal (heavy ties, tied ROC points), threshold 0.5 hits ties",
        y, s, 0.5)

    rng = np.random.default_rng(103)
    y = np.array([0] * 10 + [1] * 10)
    s = np.concatenate([rng.uniform(0.0, 0.4, 10), rng.uniform(0.6, 1.0, 10)])
    add("perfect", "perfect separation: auc 1, youden J 1 at the lowest positive score", y, s, 0.5)
    add("inverted", "positives scored lower than every negative: auc 0, youden J 0 at threshold inf (null)",
        1 - y, s, 0.5)

    rng = np.random.default_rng(104)
    add("all_negative", "y_true all 0: sensitivity/ppv/f1 undefined or 0, auc/youden null, roc tpr null",
        [0] * 15, rng.uniform(0, 1, 15), 0.5)
    rng = np.random.default_rng(105)
    add("all_positive", "y_true all 1: specificity null, auc/youden null, roc fpr null",
        [1] * 15, rng.uniform(0, 1, 15), 0.5)

    rng = np.random.default_rng(106)
    y = rng.integers(0, 2, 30)
    s = rng.uniform(0, 0.9, 30)
    add("threshold_above_all", "threshold 0.95 above every score: no predicted positive, ppv null, f1 0",
        y, s, 0.95)

    y = [0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1]
    s = [0.1, 0.3, 0.3, 0.3, 0.7, 0.3, 0.2, 0.9, 0.30001, 0.29999, 0.5, 0.3]
    add("threshold_equal_scores", "threshold 0.3 equals 5 scores (>= makes them positive); 0.29999/0.30001 nearby",
        y, s, 0.3)

    add("tiny_n2", "n=2, one of each class, threshold 0.5", [0, 1], [0.4, 0.6], 0.5)
    add("tiny_n2_swapped", "n=2, one of each class, wrong order: everything wrong at 0.5, auc 0", [1, 0], [0.4, 0.6],
        0.5)
    return cases


# ------------------------------------------------------------------------------------------------ multiclass
def multiclass_expected(n, y_true, scores):
    y_true = np.asarray(y_true, dtype=int)
    scores = np.asarray(scores, dtype=float)
    y_pred = np.argmax(scores, axis=1)  # first index on ties
    labels = list(range(n))
    per_class_f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    macro = f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=np.nan)
    aucs = []
    for k in range(n):
        try:
            aucs.append(r12(roc_auc_score((y_true == k).astype(int), scores[:, k])))
        except ValueError:
            aucs.append(None)
    return {
        "y_pred": [int(v) for v in y_pred],
        "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "accuracy": r12(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": r12(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": r12(macro),
        "per_class_f1": [r12(v) for v in per_class_f1],
        "auc": aucs,
    }


def multiclass_cases():
    cases = []

    def add(name, desc, n, y_true, scores):
        y_true = [int(v) for v in y_true]
        scores = [[round(float(v), 6) for v in row] for row in scores]
        cases.append({"name": name, "description": desc, "labels": n, "y_true": y_true, "scores": scores,
                      "expected": multiclass_expected(n, y_true, scores)})

    rng = np.random.default_rng(201)
    y = rng.integers(0, 3, 150)
    logits = rng.normal(0, 1, (150, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    add("random_3class_150", "3 classes, 150 samples, softmax scores", 3, y, p)

    rng = np.random.default_rng(202)
    y = rng.choice([0, 1, 3], 60)
    logits = rng.normal(0, 1, (60, 4)) + 1.2 * np.eye(4)[y]
    logits[:, 2] += 0.3  # class 2 gets predicted sometimes although it never occurs
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    add("class_absent_from_truth", "4 classes, class 2 never true but predicted: its F1 0, its AUC null, "
        "balanced accuracy over classes 0,1,3", 4, y, p)

    rng = np.random.default_rng(203)
    y = rng.choice([0, 1, 2], 40)
    logits = rng.normal(0, 1, (40, 4)) + 1.5 * np.eye(4)[y]
    logits[:, 3] -= 10  # class 3 neither true nor predicted: its F1 NaN -> skipped by the macro average
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    add("class_absent_everywhere", "4 classes, class 3 never true nor predicted: per-class F1 null, macro F1 "
        "over the 3 others", 4, y, p)

    rng = np.random.default_rng(204)
    y = rng.integers(0, 3, 45)
    p = np.round(rng.dirichlet([1, 1, 1], 45) * 5) / 5  # multiples of 0.2: lots of ties
    p[0] = [0.4, 0.4, 0.2]
    p[1] = [0.2, 0.4, 0.4]
    p[2] = [0.0, 0.0, 0.0]
    p[3] = [0.3, 0.3, 0.3]
    add("ties_in_vectors", "score vectors with ties (argmax takes the first max index) and tied AUC scores",
        3, y, p)
    return cases


# ---------------------------------------------------------------------------------------------- segmentation
def hd95(truth, pred):
    """95th-percentile symmetric Hausdorff distance in pixels, MONAI's definition
    (monai.metrics.compute_hausdorff_distance(percentile=95)): the edges of each mask are the mask minus its
    binary erosion (scipy's, cross structure, outside = background); from each edge pixel of one mask the
    Euclidean distance to the nearest edge pixel of the other (distance_transform_edt of the other's non-edges);
    numpy's linear 95th percentile of each direction; the larger of the two. Null when either mask is empty."""
    from scipy.ndimage import binary_erosion, distance_transform_edt
    t, p = np.asarray(truth, bool), np.asarray(pred, bool)
    if not t.any() or not p.any():
        return None
    et, ep = t ^ binary_erosion(t), p ^ binary_erosion(p)
    d_pt = distance_transform_edt(~et)[ep]
    d_tp = distance_transform_edt(~ep)[et]
    return r12(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def seg_expected(truth, pred, shape=None):
    t = np.asarray(truth, dtype=int)
    p = np.asarray(pred, dtype=int)
    dice = f1_score(t, p, zero_division=np.nan)
    both_empty = t.sum() == 0 and p.sum() == 0
    # sklearn 1.9 jaccard_score rejects zero_division=np.nan; its only 0/0 case is both empty
    iou = None if both_empty else r12(jaccard_score(t, p, zero_division=0))
    out = {"dice": r12(dice), "iou": iou, "truth_pixels": int(t.sum()), "pred_pixels": int(p.sum()),
           "intersection": int((t & p).sum())}
    if shape is not None:
        out["hd95"] = hd95(t.reshape(shape), p.reshape(shape))
    return out


def disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(int)


def segmentation_cases():
    cases = []

    def add(name, desc, truth, pred):
        h, w = truth.shape
        cases.append({"name": name, "description": desc, "height": h, "width": w,
                      "truth": truth.ravel().tolist(), "pred": pred.ravel().tolist(),
                      "expected": seg_expected(truth.ravel(), pred.ravel(), truth.shape)})

    h, w = 24, 32  # non-square so row-major vs column-major mistakes show
    add("discs_offset", "two discs r=6 offset by (2,3): partial overlap", disc(h, w, 12, 14, 6), disc(h, w, 14, 17, 6))
    rng = np.random.default_rng(301)
    blob = (disc(h, w, 10, 12, 7) | disc(h, w, 15, 20, 5)).astype(int)
    noisy = blob.copy()
    flip = rng.random((h, w)) < 0.08
    noisy[flip] = 1 - noisy[flip]
    add("blob_noisy", "two-disc blob vs the same with 8% of pixels flipped", blob, noisy)
    add("identical", "pred == truth: dice 1, iou 1", blob, blob.copy())
    add("disjoint", "non-overlapping discs: dice 0, iou 0", disc(h, w, 6, 6, 4), disc(h, w, 17, 25, 4))
    z = np.zeros((16, 16), dtype=int)
    add("both_empty", "both empty: dice null, iou null", z, z.copy())
    add("truth_empty_pred_nonempty", "truth empty, pred non-empty: dice 0, iou 0", z, disc(16, 16, 8, 8, 3))
    add("truth_nonempty_pred_empty", "truth non-empty, pred empty: dice 0, iou 0", disc(16, 16, 8, 8, 3), z.copy())
    a = np.zeros((16, 16), dtype=int)
    a[5, 9] = 1
    b = np.zeros((16, 16), dtype=int)
    b[5, 10] = 1
    add("single_pixel_same", "one pixel each, same pixel: dice 1", a, a.copy())
    add("single_pixel_adjacent", "one pixel each, neighbouring pixels: dice 0", a, b)
    c = np.zeros((16, 16), dtype=int)
    c[5, 9:11] = 1
    add("single_pixel_in_pair", "truth 1 pixel, pred 2 pixels containing it: dice 2/3, iou 1/2", a, c)

    dataset_names = ["discs_offset", "identical", "disjoint", "both_empty", "truth_empty_pred_nonempty",
                     "single_pixel_in_pair", "both_empty"]
    by_name = {c["name"]: c for c in cases}
    images = [by_name[n] for n in dataset_names]
    dices = np.array([np.nan if i["expected"]["dice"] is None else i["expected"]["dice"] for i in images])
    ious = np.array([np.nan if i["expected"]["iou"] is None else i["expected"]["iou"] for i in images])
    both = sum(1 for i in images if i["expected"]["truth_pixels"] == 0 and i["expected"]["pred_pixels"] == 0)
    dataset = {
        "name": "dataset_mixed",
        "description": "7 images (both_empty twice): nanmean skips the null dice/iou of both-empty images",
        "images": dataset_names,
        "expected": {
            "mean_dice": None if np.all(np.isnan(dices)) else r12(np.nanmean(dices)),
            "mean_iou": None if np.all(np.isnan(ious)) else r12(np.nanmean(ious)),
            "both_empty": both,
        },
    }
    all_empty = {
        "name": "dataset_all_empty",
        "description": "only both-empty images: mean_dice/mean_iou null",
        "images": ["both_empty", "both_empty"],
        "expected": {"mean_dice": None, "mean_iou": None, "both_empty": 2},
    }
    return cases, [dataset, all_empty]


# ------------------------------------------------------------------------------------------------- detection
IMG_W, IMG_H = 256, 256


def to_xywh(box):
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def coco_eval(labels, n_images, gts, preds):
    images = [{"id": i, "width": IMG_W, "height": IMG_H, "file_name": f"{i}.png"} for i in range(n_images)]
    cats = [{"id": k + 1, "name": name} for k, name in enumerate(labels)]
    anns = []
    for j, g in enumerate(gts):
        b = to_xywh(g["box"])
        anns.append({"id": j + 1, "image_id": g["image"], "category_id": g["label"] + 1, "bbox": b,
                     "area": b[2] * b[3], "iscrowd": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "categories": cats, "annotations": anns}
        gt.createIndex()
        res = [{"image_id": p["image"], "category_id": p["label"] + 1, "bbox": to_xywh(p["box"]),
                "score": p["score"]} for p in preds]
        if res:
            dt = gt.loadRes(res)  # sets area = w*h, iscrowd 0, id 1..M
        else:  # loadRes raises IndexError on an empty list
            dt = COCO()
            dt.dataset = {"images": list(images), "categories": list(cats), "annotations": []}
            dt.createIndex()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        E = COCOeval(gt, dt, iouType="bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    prec = E.eval["precision"]  # [T, R, K, A, M]
    assert prec.shape == (10, 101, len(labels), 4, 3)
    assert E.params.areaRngLbl[0] == "all" and E.params.maxDets[2] == 100
    ap, ap50 = [], []
    for k in range(len(labels)):
        pk = prec[:, :, k, 0, 2]
        v = pk[pk > -1]
        ap.append(r12(v.mean()) if v.size else None)
        v50 = pk[0][pk[0] > -1]
        ap50.append(r12(v50.mean()) if v50.size else None)
    stats = [None if s == -1 else r12(s) for s in E.stats]
    # mAP over labels with GT = stats[0] (each such label has all T x R entries valid)
    defined = [a for a in ap if a is not None]
    if defined:
        assert abs(np.mean(defined) - E.stats[0]) < 1e-12
    return {"map50_95": stats[0], "map50": stats[1], "stats": stats, "ap50_95": ap, "ap50": ap50}, out.getvalue()


def q(v):
    """Snap a coordinate to a multiple of 0.25 (exact in binary), clipped to the image."""
    return float(min(max(round(v * 4) / 4, 0.0), 256.0))


def detection_cases():
    cases = []
    printed = {}

    def add(name, desc, labels, n_images, gts, preds):
        exp, txt = coco_eval(labels, n_images, gts, preds)
        printed[name] = txt
        cases.append({"name": name, "description": desc, "labels": labels, "images": n_images,
                      "image_size": [IMG_W, IMG_H], "ground_truth": gts, "predictions": preds, "expected": exp})

    def rand_box(rng):
        w, h = rng.uniform(12, 90, 2)
        x, y = rng.uniform(0, IMG_W - w), rng.uniform(0, IMG_H - h)
        return [q(x), q(y), q(x + w), q(y + h)]

    def jitter(rng, box, s):
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        d = rng.normal(0, s, 4) * [w, h, w, h]
        return [q(x1 + d[0]), q(y1 + d[1]), q(x2 + d[2]), q(y2 + d[3])]

    def score(rng, lo, hi):
        return round(float(rng.uniform(lo, hi)), 6)

    # random scene
    rng = np.random.default_rng(401)
    labels = ["nodule", "effusion"]
    gts, preds = [], []
    for i in range(20):
        for _ in range(int(rng.integers(0, 4))):
            gts.append({"image": i, "label": int(rng.integers(0, 2)), "box": rand_box(rng)})
    for g in gts:
        if rng.random() < 0.15:
            continue  # miss
        preds.append({"image": g["image"], "label": g["label"], "box": jitter(rng, g["box"], 0.08),
                      "score": score(rng, 0.3, 1.0)})
        if rng.random() < 0.15:  # duplicate detection: FP once the GT is taken
            preds.append({"image": g["image"], "label": g["label"], "box": jitter(rng, g["box"], 0.1),
                          "score": score(rng, 0.1, 0.8)})
    for _ in range(12):  # false positives anywhere, including images without GT
        preds.append({"image": int(rng.integers(0, 20)), "label": int(rng.integers(0, 2)), "box": rand_box(rng),
                      "score": score(rng, 0.05, 0.9)})
    rng.shuffle(preds)
    random_scene = (labels, 20, gts, preds)
    add("random_scene", "20 images, 2 labels, 0-3 GT each; jittered detections, duplicates, misses, random FPs",
        *random_scene)

    add("no_predictions", "random_scene's GT with no prediction at all: AP 0 for both labels, mAP 0",
        labels, 20, gts, [])

    # label without GT but with predictions
    labels3 = ["nodule", "effusion", "pneumothorax"]
    extra = [{"image": i, "label": 2, "box": rand_box(rng), "score": score(rng, 0.2, 0.99)} for i in (1, 4, 4, 9)]
    add("label_without_gt", "random_scene plus label 2 with 4 predictions and no GT anywhere: its AP null, mAP "
        "over labels 0 and 1 only (equals random_scene's)", labels3, 20, gts, preds + extra)

    perfect = [{"image": g["image"], "label": g["label"], "box": list(g["box"]), "score": 0.9} for g in gts]
    add("perfect", "one exact-box prediction per GT (all scores tied at 0.9): AP 1 (pycocotools: 1/(1+eps))",
        labels, 20, gts, perfect)

    # ties in scores: TP and FP with the same score in different orders
    rng = np.random.default_rng(402)
    tg, tp_ = [], []
    for i in range(6):
        b = rand_box(rng)
        tg.append({"image": i, "label": 0, "box": b})
    for i in range(6):
        fpbox = rand_box(rng)
        hit = {"image": i, "label": 0, "box": jitter(rng, tg[i]["box"], 0.03), "score": 0.5}
        miss = {"image": i, "label": 0, "box": fpbox, "score": 0.5}
        if i % 2 == 0:
            tp_ += [miss, hit]  # same image, same score: list order decides which comes first
        else:
            tp_ += [hit, miss]
    tp_.append({"image": 5, "label": 0, "box": rand_box(rng), "score": 0.7})
    tp_.insert(0, {"image": 3, "label": 0, "box": rand_box(rng), "score": 0.5})
    add("score_ties", "1 label, 6 images; every image has a TP and an FP both at score 0.5 (list order alternates "
        "FP-first/TP-first), one more FP at 0.5 listed first (image 3) and one at 0.7", ["nodule"], 6, tg, tp_)

    # image with no GT but FPs (kept separate so its effect is visible)
    rng = np.random.default_rng(403)
    fg = [{"image": 0, "label": 0, "box": [20.0, 20.0, 80.0, 90.0]},
          {"image": 1, "label": 0, "box": [100.0, 40.0, 160.0, 120.0]}]
    fpreds = [{"image": 0, "label": 0, "box": [22.0, 18.0, 81.0, 88.0], "score": 0.6},
              {"image": 1, "label": 0, "box": [101.0, 42.0, 158.5, 119.0], "score": 0.4},
              {"image": 2, "label": 0, "box": [10.0, 10.0, 60.0, 60.0], "score": 0.8},
              {"image": 2, "label": 0, "box": [120.0, 130.0, 170.0, 200.0], "score": 0.5}]
    add("fp_on_empty_image", "image 2 has no GT and two FPs (scores 0.8, 0.5) ranked above/among the TPs",
        ["nodule"], 3, fg, fpreds)

    # more than 100 predictions on one image
    rng = np.random.default_rng(404)
    mg = [{"image": 0, "label": 0, "box": rand_box(rng)} for _ in range(3)]
    mg += [{"image": 1, "label": 0, "box": rand_box(rng)}]
    mp = []
    for j in range(110):  # 110 FPs with high-ish scores: only the top 100 survive the cap
        mp.append({"image": 0, "label": 0, "box": rand_box(rng), "score": round(0.3 + 0.006 * j, 6)})
    mp.append({"image": 0, "label": 0, "box": jitter(rng, mg[0]["box"], 0.02), "score": 0.95})  # survives
    mp.append({"image": 0, "label": 0, "box": jitter(rng, mg[1]["box"], 0.02), "score": 0.29})  # cut (rank 112)
    mp.append({"image": 0, "label": 0, "box": jitter(rng, mg[2]["box"], 0.02), "score": 0.31})  # cut (rank 109)
    mp.append({"image": 1, "label": 0, "box": jitter(rng, mg[3]["box"], 0.02), "score": 0.2})   # other image: kept
    rng.shuffle(mp)
    add("over_100_per_image", "image 0: 113 predictions of label 0; the TPs at 0.29 and 0.31 fall below the "
        "top-100 cut and count as misses", ["nodule"], 2, mg, mp)

    # cap is per image per category
    rng = np.random.default_rng(405)
    cg = [{"image": 0, "label": 0, "box": rand_box(rng)}, {"image": 0, "label": 1, "box": rand_box(rng)}]
    cp = []
    for j in range(70):
        cp.append({"image": 0, "label": 0, "box": rand_box(rng), "score": round(0.5 + 0.005 * j, 6)})
        cp.append({"image": 0, "label": 1, "box": rand_box(rng), "score": round(0.5 + 0.005 * j, 6)})
    cp.append({"image": 0, "label": 0, "box": jitter(rng, cg[0]["box"], 0.02), "score": 0.1})
    cp.append({"image": 0, "label": 1, "box": jitter(rng, cg[1]["box"], 0.02), "score": 0.1})
    add("cap_per_category", "image 0: 71 predictions per label (142 in all); the cap of 100 is per image AND "
        "category, so both TPs at score 0.1 (rank 71) still count", ["nodule", "effusion"], 1, cg, cp)

    # IoU exactly at thresholds (>=); boxes are exact in binary
    g = [0.0, 0.0, 100.0, 100.0]
    ig, ipred = [], []
    # IoU = kept height / 100 with a box inside the GT: h=50 -> 0.5, 55 -> 0.55, 70 -> 0.7, 75 -> 0.75, 90, 95
    for i, hgt in enumerate([50.0, 55.0, 70.0, 75.0, 90.0, 95.0, 49.75]):
        ig.append({"image": i, "label": 0, "box": list(g)})
        ipred.append({"image": i, "label": 0, "box": [0.0, 0.0, 100.0, hgt], "score": round(0.9 - 0.1 * i, 6)})
    add("iou_at_thresholds", "7 images, GT 100x100, prediction 100xh inside it: IoU = h/100 exactly at 0.5, 0.55, "
        "0.7, 0.75, 0.9, 0.95 (and 0.4975); a match needs IoU >= iouThr (iouThrs are linspace values)",
        ["nodule"], 7, ig, ipred)

    # two GTs with equal IoU for one detection: the later GT in the list wins
    eg = [{"image": 0, "label": 0, "box": [0.0, 0.0, 40.0, 40.0]},
          {"image": 0, "label": 0, "box": [20.0, 0.0, 60.0, 40.0]},
          {"image": 0, "label": 0, "box": [200.0, 200.0, 240.0, 240.0]}]
    ep = [{"image": 0, "label": 0, "box": [10.0, 0.0, 50.0, 40.0], "score": 0.9},  # IoU 1/2 (.6 vs .6) with both
          {"image": 0, "label": 0, "box": [0.0, 0.0, 36.0, 40.0], "score": 0.8}]   # IoU .9 with GT0, lower w GT1
    add("equal_iou_gts", "detection 1 (0.9) has IoU 0.6 with both GT0 and GT1 and takes the LATER one (GT1), so "
        "detection 2 (0.8, IoU 0.9 with GT0 only) matches GT0: 2 TPs; an earlier-GT rule would make detection 2 "
        "a FP", ["nodule"], 1, eg, ep)
    return cases, printed


def self_checks(bin_cases, det_cases):
    from pycocotools import mask as maskUtils
    # bbox IoU has no +1: [0,0,10,10] vs [5,0,15,10] -> 50/150
    v = maskUtils.iou([[0, 0, 10, 10]], [[5, 0, 10, 10]], [0])[0][0]
    assert abs(v - 1 / 3) < 1e-15, v
    v = maskUtils.iou([[0, 0, 100, 50]], [[0, 0, 100, 100]], [0])[0][0]
    assert v == 0.5
    # pycocotools' thresholds are these closed forms
    p = COCOeval(iouType="bbox").params
    assert all(p.recThrs[i] == i * 0.01 for i in range(101))
    step = (0.95 - 0.5) / 9
    assert all(p.iouThrs[i] == (0.5 + i * step if i < 9 else 0.95) for i in range(10))
    by = {c["name"]: c for c in det_cases}
    assert by["label_without_gt"]["expected"]["ap50_95"][2] is None
    assert by["label_without_gt"]["expected"]["map50_95"] == by["random_scene"]["expected"]["map50_95"]
    assert by["no_predictions"]["expected"]["map50_95"] == 0.0
    assert by["perfect"]["expected"]["map50_95"] == 1.0
    bc = {c["name"]: c for c in bin_cases}
    e = bc["threshold_above_all"]["expected"]
    assert e["ppv"] is None and e["f1"] == 0.0
    assert bc["perfect"]["expected"]["auc"] == 1.0 and bc["inverted"]["expected"]["auc"] == 0.0
    assert bc["all_negative"]["expected"]["auc"] is None


def main():
    bin_cases = binary_cases()
    mc_cases = multiclass_cases()
    seg_cases, seg_datasets = segmentation_cases()
    det_cases, printed = detection_cases()
    self_checks(bin_cases, det_cases)
    p = COCOeval(iouType="bbox").params
    doc = {
        "meta": {
            "generator": "models/factory/metric_refs.py",
            "versions": {"python": sys.version.split()[0], "numpy": np.__version__,
                         "scikit-learn": sklearn.__version__, "pycocotools": importlib.metadata.version("pycocotools")},
            "float_rounding": "computed values rounded to 12 significant digits; inputs exact",
            "null": "undefined (zero denominator / one class only / no GT for the label)",
            "iou_thrs": [float(v) for v in p.iouThrs],
            "rec_thrs": [float(v) for v in p.recThrs],
            "max_dets": [int(v) for v in p.maxDets],
            "area_rng": [[float(a), float(b)] for a, b in p.areaRng],
            "area_rng_lbl": list(p.areaRngLbl),
        },
        "binary": bin_cases,
        "multiclass": mc_cases,
        "segmentation": seg_cases,
        "segmentation_datasets": seg_datasets,
        "detection": det_cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    with open(OUT, "w") as f:
        f.write(text + "\n")
    print(f"wrote {os.path.normpath(OUT)} ({len(text) + 1} bytes): {len(bin_cases)} binary, {len(mc_cases)} "
          f"multiclass, {len(seg_cases)} segmentation (+{len(seg_datasets)} datasets), {len(det_cases)} detection")
    if "-v" in sys.argv:
        for name, txt in printed.items():
            print(f"--- pycocotools output for {name}\n{txt}")


if __name__ == "__main__":
    main()
