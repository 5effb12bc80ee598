"""Labelled evaluation sets for `bedside eval` (one per shipped model) and their Python reference metrics.

Run from this folder with the factory venv (torch, onnxruntime, pillow, nibabel, scikit-learn, pycocotools):

  cd models/factory
  ~/.cache/bedside-bench-venv/bin/python eval_sets.py generate     # writes the images / labels (deterministic)
  ~/.cache/bedside-bench-venv/bin/python eval_sets.py reference    # onnxruntime int8 + fp32 -> reference.json
  ~/.cache/bedside-bench-venv/bin/python eval_sets.py all          # both

Everything is drawn from the HELD-OUT `test` split seeds of each factory (data.py / det/data_det.py /
us/data_us.py: 200_000 + i, with the split's own label assignment), never from train / val / calib.
`generate` rewrites images/ and masks/ of each set from scratch (same bytes every time: PNG has no timestamp,
the NIfTI files are gzipped with mtime 0); `reference` only reads the sets and writes reference.json.

Files, under tests/fixtures/eval/:

  cxr-tiny-cls/images/cls-NNN.png     8-bit grey 224x224: the phantom's stored 12-bit image through its own VOI
                                      LINEAR window (preprocess.display), resized to 224x224 with the factory's
                                      antialiased bilinear (preprocess.resize), rounded to 0..255. That is the
                                      factory's preprocessing steps 1-4 exactly, so bedside's resize is the identity
                                      and the only loss is the 8-bit rounding (see FIDELITY below).
               labels.csv             header `file,label`; file relative to the folder (images/cls-000.png);
                                      label in normal / pneumothorax / other (16 each; seed 200000+i, label i % 3)
  cxr-tiny-det/images/det-NNN.png     8-bit grey 256x256: det phantom display image (preprocess_det.display),
                                      resized 512 -> 256 with preprocess_det.resize (= the model input), rounded
               annotations.json       COCO: images [{id, file_name, width, height}], annotations [{id, image_id,
                                      category_id, bbox [x, y, w, h] in PNG pixels, area = w*h, iscrowd 0}],
                                      categories [{id 1, nodule}, {id 2, foreign_body}]; boxes = synth_det's
                                      512-pixel boxes * 256/512; images with no object have no annotation
  us-fast-fluid/images/us-NNN.png     the frame exactly as data_us feeds it: synth_us.sample's raster, which IS the
                                      sector crop (jittered bounding box, 220-330 rows), after data_us's JPEG round
                                      trip policy (rng([seed, 7]): half the frames, quality 60-95), 8-bit grey
               masks/us-NNN.png       same size, 0 background / 255 free fluid (synth_us ground truth)
                                      (seed 200000+i, fluid iff i odd, as data_us's test split)
  us-fast-fluid-nifti/images/*.png    6 of those frames again (us-000 .. us-005: 3 without, 3 with fluid)
               masks/<name>.nii.gz    NIfTI-1, uint8, shape (width, height, 1), data[x, y, 0] == mask_png[y, x]
                                      (i = column, j = row), values 0 / 1 (1 = free fluid), identity affine
  <set>/reference.json                metrics from the same PNGs with the factory's own Python preprocessing +
                                      onnxruntime (zoo.session: CPU, 1 thread, sequential) on model.onnx (int8)
                                      and model.fp32.onnx, plus per-image outputs for debugging a mismatch

Metrics (`reference`):
  cls  softmax probabilities; per label one-vs-rest with the manifest threshold (positive iff p >= threshold):
       tp fp tn fn, sensitivity, specificity, AUC (sklearn roc_auc_score); accuracy of the argmax.
  det  det/decode_det.decode with the manifest's [detection] (NMS 0.45, 20 boxes) and the decoder's floor
       min_score = the lowest label threshold (0.25, what bedside's decoder keeps too), all kept boxes whatever
       their own label's threshold, scaled from the 256-pixel model input to the PNG (x * W/256, y * H/256);
       pycocotools COCOeval bbox: mAP@0.5 and mAP@0.5:0.95 (+ per category AP@0.5); also the same with the
       factory's mAP floor decode_det.EVAL_MIN_SCORE (0.01) for information.
  us   per image Dice of the mask prediction at the MASK's resolution: the 56x56 logits upsampled with
       F.interpolate(bilinear, align_corners=False, no antialias), predicted iff logit >= ln(t / (1 - t));
       Dice = 2|A & B| / (|A| + |B|), excluded when both are empty; mean over the defined ones. Image level (as
       bedside's finding.rs): fraction of 56x56 pixels with logit >= cut; fluid found iff fraction >= min_fraction
       and fraction > 0; truth = the mask has a fluid pixel -> sensitivity / specificity.

FIDELITY (measured on the 48 cls / 32 det test images before choosing the PNG sizes; max |d prob| vs the
factory's float pipeline straight from the 12-bit image): cls PNG 224 (factory resize, chosen) int8 0.029 /
fp32 0.005, 0 threshold flips, 0.9 MB; 512 full-size 0.071 / 0.002 but 5.4 MB; 256 area-averaged 0.061 / 0.154
with a threshold flip (fp32); 256 Lanczos 0.059 / 0.039; 320 area 0.077 / 0.118 (flip). A second resampler of
any size changes what the model sees more than the 8-bit rounding does. det PNG 256 (factory resize, chosen)
keeps every fp32 box (IoU >= 0.9); 256 area-averaged loses 14 of 34, 320 Lanczos 5 of 34.
"""
import csv
import gzip
import io
import json
import math
import os
import shutil
import sys
import tomllib
from contextlib import redirect_stdout

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
for d in (HERE, os.path.join(HERE, "det"), os.path.join(HERE, "us")):
    if d not in sys.path:
        sys.path.insert(0, d)
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "eval")
REPO = ROOT
MODELS = os.path.join(ROOT, "models")

TEST_SEED = 200_000          # the `test` split base of data.py, det/data_det.py and us/data_us.py
N_CLS, N_DET, N_US = 48, 32, 32
NIFTI_FRAMES = 6             # us-000 .. us-005
CLS_SIZE = 224               # cxr-tiny-cls input
DET_SIZE = 256               # cxr-tiny-det input
FORMS = [("int8", "model.onnx"), ("fp32", "model.fp32.onnx")]



BEDSIDE = os.environ.get("BEDSIDE", os.path.join(REPO, "target", "debug", "bedside"))


def _bedside(model, files, factory_xs):
    """The model inputs as bedside itself prepares them (`bedside prepare --dump`): the reference runs
    onnxruntime on exactly what `bedside eval` feeds tract, so the comparison is of runtimes, not of two
    preprocessing implementations (an int8 model turns a 1-ulp input difference into a whole quantization
    step). Returns the tensors and max |bedside - factory Python preprocessing| as a check of the contract."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([BEDSIDE, "prepare", "--model", os.path.join(REPO, "models", model), "--dump", tmp, *files],
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(tmp, "index.json")) as f:
            index = json.load(f)["tensors"]
        assert [t["image"] for t in index] == list(files), "bedside prepared other files"
        xs = [np.fromfile(os.path.join(tmp, t["tensor"]), dtype="<f4").reshape(t["shape"]) for t in index]
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(xs, factory_xs))
    return xs, _r(diff, 9)


PREPARED = ("bedside prepare --dump (the daemon's own preparation); prepare_max_abs_vs_factory: max |that - the "
            "factory's Python preprocessing of the same PNG|")

def _q8(y):
    return np.clip(np.rint(np.asarray(y, np.float64) * 255.0), 0, 255).astype(np.uint8)


def _write_png(path, a):
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8), mode="L").save(path, format="PNG", optimize=True)


def _read_png(path):
    from PIL import Image
    im = Image.open(path)
    assert im.mode == "L", (path, im.mode)
    return np.asarray(im)


def _fresh(set_dir, *subs):
    os.makedirs(set_dir, exist_ok=True)
    for s in subs:
        p = os.path.join(set_dir, s)
        if os.path.isdir(p):
            shutil.rmtree(p)
        os.makedirs(p)


def _manifest(model):
    with open(os.path.join(MODELS, model, "model.toml"), "rb") as f:
        return tomllib.load(f)


def _sessions(model):
    """int8 and fp32 as shipped, and "int8_exact": the int8 model with its s8 weights re-encoded as u8
    (per_channel_study.u8_weights), which onnxruntime runs through its u8 x u8 kernel. On x86 without VNNI
    (this machine) onnxruntime's u8 x s8 convolution saturates (VPMADDUBSW, docs/int8.md), so "int8" is not
    the integer result bedside (and onnxruntime on VNNI or ARM) computes; "int8_exact" is."""
    import tempfile
    import zoo
    from per_channel_study import u8_weights
    sessions = {form: zoo.session(os.path.join(MODELS, model, f)) for form, f in FORMS}
    exact = os.path.join(tempfile.mkdtemp(), "model.u8-weights.onnx")
    sessions["int8_exact"] = zoo.session(u8_weights(os.path.join(MODELS, model, "model.onnx"), exact))
    return sessions


def _run(sess, x):
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]


def _r(v, nd=6):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), nd)


# --------------------------------------------------------------------------------------------- generate

def gen_cls():
    import synth
    import preprocess as P
    d = os.path.join(OUT, "cxr-tiny-cls")
    _fresh(d, "images")
    rows = []
    for i in range(N_CLS):
        seed, label = TEST_SEED + i, i % 3   # data.py: label = index % 3
        stored, c, w = synth.generate(seed, label)
        png = _q8(P.resize(P.display(stored, 1.0, 0.0, c, w), CLS_SIZE))
        name = f"images/cls-{i:03d}.png"
        _write_png(os.path.join(d, name), png)
        rows.append((name, synth.LABELS[label]))
    with open(os.path.join(d, "labels.csv"), "w", newline="") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["file", "label"])
        wr.writerows(rows)
    return d


def gen_det():
    import synth_det
    import preprocess_det as PD
    d = os.path.join(OUT, "cxr-tiny-det")
    _fresh(d, "images")
    images, anns = [], []
    for i in range(N_DET):
        seed = TEST_SEED + i
        stored, c, w, boxes, labels, bg = synth_det.generate(seed)
        assert PD.SIZE == DET_SIZE
        png = _q8(PD.resize(PD.display(stored, 1.0, 0.0, c, w)))
        name = f"images/det-{i:03d}.png"
        _write_png(os.path.join(d, name), png)
        h, wd = png.shape
        images.append({"id": i + 1, "file_name": name, "width": int(wd), "height": int(h)})
        sx, sy = wd / synth_det.W, h / synth_det.H
        for b, l in zip(boxes, labels):
            x1, y1, x2, y2 = float(b[0]) * sx, float(b[1]) * sy, float(b[2]) * sx, float(b[3]) * sy
            bw, bh = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(l) + 1,
                         "bbox": [round(x1, 4), round(y1, 4), round(bw, 4), round(bh, 4)],
                         "area": round(bw * bh, 4), "iscrowd": 0})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(synth_det.LABELS)]}
    with open(os.path.join(d, "annotations.json"), "w") as f:
        json.dump(coco, f, indent=1)
        f.write("\n")
    return d


def _us_frame(i):
    """-> name, uint8 frame (the crop, after data_us's JPEG policy), bool mask, jpeg quality (0 = none)."""
    import data_us
    import synth_us
    seed, positive = TEST_SEED + i, i % 2 == 1   # data_us: positive = odd index
    img, mask, _ = synth_us.sample(seed, positive)
    rng = np.random.default_rng([seed, 7])      # data_us.one, verbatim
    q = int(rng.integers(60, 96)) if rng.random() < data_us.JPEG_P else 0
    if q:
        img = data_us.jpeg(img, q)
    return f"us-{i:03d}", img, mask, q


def nifti_bytes(mask):
    """bool/uint8 mask [rows, cols] -> .nii.gz bytes: uint8 (cols, rows, 1), data[x, y, 0] = mask[y, x] != 0,
    identity affine; gzip with mtime 0 so the bytes are reproducible."""
    import nibabel as nib
    data = (np.asarray(mask) != 0).astype(np.uint8).T[:, :, None].copy()
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_data_dtype(np.uint8)
    raw = img.to_bytes()
    b = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=b, mtime=0, compresslevel=9) as g:
        g.write(raw)
    return b.getvalue()


def read_nifti_mask(path):
    import nibabel as nib
    a = np.asarray(nib.load(path).dataobj)
    assert a.ndim == 3 and a.shape[2] == 1, a.shape
    return a[:, :, 0].T != 0


def gen_us():
    d = os.path.join(OUT, "us-fast-fluid")
    dn = os.path.join(OUT, "us-fast-fluid-nifti")
    _fresh(d, "images", "masks")
    _fresh(dn, "images", "masks")
    for i in range(N_US):
        name, img, mask, q = _us_frame(i)
        assert img.shape == mask.shape
        _write_png(os.path.join(d, "images", name + ".png"), img)
        _write_png(os.path.join(d, "masks", name + ".png"), mask.astype(np.uint8) * 255)
        if i < NIFTI_FRAMES:
            shutil.copyfile(os.path.join(d, "images", name + ".png"), os.path.join(dn, "images", name + ".png"))
            p = os.path.join(dn, "masks", name + ".nii.gz")
            with open(p, "wb") as f:
                f.write(nifti_bytes(mask))
            assert np.array_equal(read_nifti_mask(p), mask)
    return d, dn


def _du(path):
    tot = 0
    for root, _, files in os.walk(path):
        tot += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return tot


def generate():
    sets = [gen_cls(), gen_det(), *gen_us()]
    for s in sets:
        print(f"{os.path.relpath(s, ROOT):40s} {_du(s) / 1024:8.1f} KiB")


# -------------------------------------------------------------------------------------------- reference

def ref_cls():
    import preprocess as P
    from sklearn.metrics import roc_auc_score
    model = "cxr-tiny-cls"
    d = os.path.join(OUT, model)
    man = _manifest(model)
    labels = [l["name"] for l in man["labels"]]
    thr = np.array([l["threshold"] for l in man["labels"]], np.float64)
    size = man["input"]["shape"][-1]
    mean, std = man["preprocess"]["mean"], man["preprocess"]["std"]
    with open(os.path.join(d, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    y = np.array([labels.index(r["label"]) for r in rows])
    xs = [P.normalise(P.resize(_read_png(os.path.join(d, r["file"])) / 255.0, size), mean, std).reshape(1, 1, size, size)
          for r in rows]
    xs, diff = _bedside(model, [os.path.join(d, r["file"]) for r in rows], xs)
    out = {"model": model, "n_images": len(rows), "preprocess": PREPARED, "prepare_max_abs_vs_factory": diff,
           "labels": {l: {"threshold": float(t)} for l, t in zip(labels, thr)}, "forms": {}}
    for form, sess in _sessions(model).items():
        logits = np.stack([_run(sess, x).reshape(-1) for x in xs]).astype(np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        per = {}
        for k, l in enumerate(labels):
            pos, pred = y == k, p[:, k] >= thr[k]
            tp, fp = int(np.sum(pred & pos)), int(np.sum(pred & ~pos))
            tn, fn = int(np.sum(~pred & ~pos)), int(np.sum(~pred & pos))
            per[l] = {"tp": tp, "fp": fp, "tn": tn, "fn": fn,
                      "sensitivity": _r(tp / (tp + fn) if tp + fn else float("nan")),
                      "specificity": _r(tn / (tn + fp) if tn + fp else float("nan")),
                      "auc": _r(roc_auc_score(pos, p[:, k]))}
        out["forms"][form] = {
            "accuracy": _r(np.mean(p.argmax(1) == y)), "per_label": per,
            "images": [{"file": r["file"], "label": r["label"], "probs": [_r(v) for v in pp]}
                       for r, pp in zip(rows, p)]}
    return out


def _coco_eval(gt, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = json.loads(json.dumps(gt))
        cg.createIndex()
        if not dets:
            return {"map_50_95": 0.0, "map_50": 0.0, "ap_50": {c["name"]: 0.0 for c in gt["categories"]}}
        cd = cg.loadRes(dets)
        ev = COCOeval(cg, cd, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]   # [T iou, R recall, K cat, A area, M maxdets]
    ap50 = {}
    for k, c in enumerate(gt["categories"]):
        pr = prec[0, :, k, 0, -1]
        pr = pr[pr > -1]
        ap50[c["name"]] = _r(pr.mean() if pr.size else float("nan"))
    return {"map_50_95": _r(ev.stats[0]), "map_50": _r(ev.stats[1]), "ap_50": ap50}


def ref_det():
    import decode_det as D
    import preprocess_det as PD
    model = "cxr-tiny-det"
    d = os.path.join(OUT, model)
    man = _manifest(model)
    spec = man["detection"]
    floor = min(l["threshold"] for l in man["labels"])
    size = man["input"]["shape"][-1]
    assert [l["name"] for l in man["labels"]] == D.LABELS and spec["stride"] == D.STRIDE
    with open(os.path.join(d, "annotations.json")) as f:
        gt = json.load(f)
    cat = {c["name"]: c["id"] for c in gt["categories"]}
    xs = []
    for im in gt["images"]:
        a = _read_png(os.path.join(d, im["file_name"]))
        assert a.shape == (im["height"], im["width"])
        xs.append(P_normalise_resize(PD, a / 255.0, size, man))
    xs, diff = _bedside(model, [os.path.join(d, im["file_name"]) for im in gt["images"]], xs)
    out = {"model": model, "n_images": len(gt["images"]), "n_boxes": len(gt["annotations"]),
           "preprocess": PREPARED, "prepare_max_abs_vs_factory": diff,
           "decode": {"min_score": floor, "iou_threshold": spec["iou_threshold"],
                      "max_detections": spec["max_detections"],
                      "note": "decode_det.decode; min_score = lowest label threshold (bedside keeps the same); "
                              "boxes scaled from input pixels to PNG pixels by width/size, height/size"},
           "forms": {}}
    for form, sess in _sessions(model).items():
        raw = [_run(sess, x) for x in xs]
        res = {}
        # "bedside_eval": what `bedside eval` scores (boxes down to 0.001, the COCO convention, and up to
        # 100 per image, pycocotools' cap), boxes clamped to the image as bedside's findings are.
        for tag, ms, cap in (("floor_lowest_threshold", floor, spec["max_detections"]),
                             ("floor_0.01", D.EVAL_MIN_SCORE, spec["max_detections"]),
                             ("bedside_eval", 0.001, max(spec["max_detections"], 100))):
            dets, per_img = [], []
            for im, o in zip(gt["images"], raw):
                sx, sy = im["width"] / size, im["height"] / size
                kept = D.decode(o, ms, spec["iou_threshold"], cap)
                lst = []
                for s, k, b, _ in kept:
                    x1, y1, x2, y2 = b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy
                    if tag == "bedside_eval":
                        x1, x2 = (min(max(v, 0.0), im["width"]) for v in (x1, x2))
                        y1, y2 = (min(max(v, 0.0), im["height"]) for v in (y1, y2))
                    dets.append({"image_id": im["id"], "category_id": cat[D.LABELS[k]],
                                 "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(s)})
                    lst.append({"label": D.LABELS[k], "score": _r(s), "box_xyxy": [_r(v, 4) for v in (x1, y1, x2, y2)]})
                per_img.append({"file": im["file_name"], "detections": lst})
            r = _coco_eval(gt, dets)
            r["n_detections"] = len(dets)
            if tag == "floor_lowest_threshold":
                r["images"] = per_img
            res[tag] = r
        out["forms"][form] = res
    return out


def P_normalise_resize(PD, y, size, man):
    assert PD.SIZE == size and PD.MEAN == man["preprocess"]["mean"] and PD.STD == man["preprocess"]["std"]
    return PD.normalise(PD.resize(y)).reshape(1, 1, size, size)


def _us_eval(model, d, names, load_mask):
    import torch
    import torch.nn.functional as F
    import preprocess_us as PU
    man = _manifest(model)
    lab = man["labels"][0]
    t, min_fraction = float(lab["threshold"]), float(lab["min_fraction"])
    cut = math.log(t / (1 - t))
    assert PU.MEAN == man["preprocess"]["mean"] and PU.STD == man["preprocess"]["std"]
    frames = [_read_png(os.path.join(d, "images", n + ".png")) for n in names]
    masks = [load_mask(n) for n in names]
    xs = [PU.preprocess(f) for f in frames]
    xs, diff = _bedside(model, [os.path.join(d, "images", n + ".png") for n in names], xs)
    out = {"model": model, "n_images": len(names), "n_with_fluid": int(sum(m.any() for m in masks)),
           "preprocess": PREPARED, "prepare_max_abs_vs_factory": diff,
           "threshold": t, "logit_cut": cut, "min_fraction": min_fraction, "forms": {}}
    for form, sess in _sessions(model).items():
        dice, per, tp, fp, tn, fn = [], [], 0, 0, 0, 0
        for n, x, m in zip(names, xs, masks):
            logit = _run(sess, x)  # [1, 1, 56, 56]
            up = F.interpolate(torch.from_numpy(logit), size=m.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
            a = up >= cut
            inter, sa, sb = int(np.sum(a & m)), int(a.sum()), int(m.sum())
            dc = 2 * inter / (sa + sb) if sa + sb else None
            if dc is not None:
                dice.append(dc)
            frac = float(np.mean(logit[0, 0] >= np.float32(cut)))
            found, truth = frac >= min_fraction and frac > 0, bool(m.any())
            tp += found and truth
            fp += found and not truth
            tn += (not found) and not truth
            fn += (not found) and truth
            per.append({"file": f"images/{n}.png", "size_hw": list(m.shape), "mask_pixels": sb, "pred_pixels": sa,
                        "dice": _r(dc), "fraction": _r(frac), "found": found, "truth": truth})
        out["forms"][form] = {
            "mean_dice": _r(np.mean(dice) if dice else float("nan")), "n_dice_defined": len(dice),
            "image_level": {"tp": tp, "fp": fp, "tn": tn, "fn": fn,
                            "sensitivity": _r(tp / (tp + fn) if tp + fn else float("nan")),
                            "specificity": _r(tn / (tn + fp) if tn + fp else float("nan"))},
            "images": per}
    return out


def ref_us():
    model = "us-fast-fluid"
    d = os.path.join(OUT, model)
    names = sorted(f[:-4] for f in os.listdir(os.path.join(d, "images")) if f.endswith(".png"))
    r = _us_eval(model, d, names, lambda n: _read_png(os.path.join(d, "masks", n + ".png")) > 127)
    dn = os.path.join(OUT, "us-fast-fluid-nifti")
    nn = sorted(f[:-4] for f in os.listdir(os.path.join(dn, "images")) if f.endswith(".png"))
    rn = _us_eval(model, dn, nn, lambda n: read_nifti_mask(os.path.join(dn, "masks", n + ".nii.gz")))
    rn["masks"] = "NIfTI uint8 (width, height, 1), data[x, y, 0] = mask[y, x], 0/1, identity affine"
    return r, rn


def _dump(set_name, obj):
    with open(os.path.join(OUT, set_name, "reference.json"), "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def reference():
    cls = ref_cls()
    _dump("cxr-tiny-cls", cls)
    det = ref_det()
    _dump("cxr-tiny-det", det)
    us, usn = ref_us()
    _dump("us-fast-fluid", us)
    _dump("us-fast-fluid-nifti", usn)

    print(f"\ncxr-tiny-cls ({cls['n_images']} images)")
    print(f"  {'form':5s} {'label':13s} {'thr':>5s} {'tp':>3s} {'fp':>3s} {'tn':>3s} {'fn':>3s} {'sens':>6s} {'spec':>6s} {'auc':>6s}")
    for form, r in cls["forms"].items():
        for l, m in r["per_label"].items():
            print(f"  {form:5s} {l:13s} {cls['labels'][l]['threshold']:5.2f} {m['tp']:3d} {m['fp']:3d} {m['tn']:3d} {m['fn']:3d}"
                  f" {m['sensitivity']:6.3f} {m['specificity']:6.3f} {m['auc']:6.3f}")
        print(f"  {form:5s} accuracy(argmax) {r['accuracy']:.4f}")
    print(f"\ncxr-tiny-det ({det['n_images']} images, {det['n_boxes']} boxes; decoder floor {det['decode']['min_score']})")
    for form, r in det["forms"].items():
        for tag, m in r.items():
            ap = " ".join(f"AP50[{k}]={v:.3f}" if v is not None else f"AP50[{k}]=nan" for k, v in m["ap_50"].items())
            print(f"  {form:5s} {tag:23s} dets {m['n_detections']:3d}  mAP@0.5 {m['map_50']:.4f}  mAP@0.5:0.95 {m['map_50_95']:.4f}  {ap}")
    for name, r in (("us-fast-fluid", us), ("us-fast-fluid-nifti", usn)):
        print(f"\n{name} ({r['n_images']} images, {r['n_with_fluid']} with fluid)")
        for form, m in r["forms"].items():
            il = m["image_level"]
            print(f"  {form:5s} mean Dice {m['mean_dice']:.4f} over {m['n_dice_defined']}  image level tp {il['tp']} fp {il['fp']}"
                  f" tn {il['tn']} fn {il['fn']}  sens {il['sensitivity']:.3f} spec {il['specificity']:.3f}")


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd not in ("generate", "reference", "all"):
        sys.exit(__doc__.split("\n\n")[1] + "\n\nusage: eval_sets.py generate | reference | all")
    if cmd in ("generate", "all"):
        generate()
    if cmd in ("reference", "all"):
        reference()
