"""Per-tensor vs per-channel int8 weights: does per-channel keep the models more accurate?

What it does
  For each shipped model (cxr-tiny-cls, cxr-tiny-det, us-fast-fluid) it quantizes the pruned fp32 model
  (model.pruned.onnx) with zoo.quantize_int8 -- the factory's int8 recipe, same calibration split as the factory
  (quantize_manifest.py / det/quantize_det.py / us/quantize_us.py, same exclude_head) -- four ways:
      per-tensor, per-channel, and both again with reduce_range=True (7-bit weights, -64..64),
  and evaluates on the factory's held-out test split (and validation split), with the factory's own metric code:
      cxr-tiny-cls   arg-max accuracy, test = data.py seeds 200000.. (600 images)
      cxr-tiny-det   mAP@0.5 (decode_det.evaluate, min score 0.01, NMS 0.45, 20 dets), test = seeds 200000.. (400)
      us-fast-fluid  pooled Dice on the positives (quantize_us.metrics "dice_pos"), test = seeds 200000.. (800)
  onnxruntime CPU, 1 thread (zoo.session), one image per run (zoo.run), as the factory evaluates.
  It also checks that the per-tensor requantization reproduces the shipped model.onnx (same weights and scales),
  and gives paired bootstrap intervals (over images) for the differences between forms.

  The onnxruntime caveat: on x86 CPUs without AVX-VNNI/AVX512-VNNI onnxruntime's u8 x s8 QLinearConv uses
  VPMADDUBSW, which saturates the sum of two adjacent u8*s8 products at +-32767, so its int8 outputs can be off the
  exact integer convolution that bedside (and onnxruntime on VNNI / ARM) computes. Two checks:
    * per layer: every QLinearConv output of onnxruntime is compared with an exact integer reference (numpy,
      float64 im2col matmul = exact integers, onnxruntime's float requantization: round-half-even of
      float32(acc) * float32(x_scale * w_scale / y_scale), + zero point, clamp) on its own u8 input;
    * end to end: "exact" forms = the same int8 model with the s8 weights re-encoded as u8 (w + 128, zero point 128).
      The integer products are identical ((x - xz) * (w + 128 - 128)), but onnxruntime takes its u8 x u8 kernel,
      which widens to 16 bits (VPMADDWD) and cannot saturate; the per-layer check confirms it is exact. Their
      metric is what bedside computes.
  Then the same for a real architecture: torchvision ResNet-18 with a 1-channel conv1, random init (no ImageNet
  weights), trained for ~RESNET_SECONDS of 1-thread CPU on the cxr-tiny-cls task (data.py train split, 224x224,
  3 classes), BatchNorm folded in eval mode, exported with train_export.export_onnx (opset 17, dynamo=False).

How to run (from anywhere; the venv needs torch, torchvision, onnx, onnxruntime, scipy, pillow):
  python models/factory/per_channel_study.py                 # everything
  python models/factory/per_channel_study.py cls det us      # only the shipped models
  python models/factory/per_channel_study.py resnet18        # only ResNet-18 (reuses its checkpoint if present)
  Prints a markdown table (also written to $STUDY_DIR/results.md; numbers in $STUDY_DIR/results.json, merged over
  runs, so parts can be re-run separately).
  Environment: STUDY_DIR (default ~/.cache/bedside-study: generated data, int8 models, ResNet-18 checkpoint/ONNX),
  CACHE / CACHE_DET / CACHE_US (the factory's data caches; default under STUDY_DIR), STUDY_WORKERS (data generation
  processes, default 1), RESNET_SECONDS (training budget, default 600), RESNET_STEPS (fixed step count instead of
  the budget), RESNET_BATCH (default 16), RETRAIN=1 (ignore a saved ResNet-18 checkpoint).
  Everything runs with 1 thread (torch, onnxruntime incl. its calibration session, BLAS).

How long (2-core AMD EPYC, AVX2 without VNNI, everything 1 thread, STUDY_WORKERS=1), measured:
  data generation the first time ~10 min (cls val+test+calib 70 s, cls train 3000 ~3.5 min, det 90 s, us 4 min);
  cxr-tiny-cls ~10 s, us-fast-fluid ~15 s, cxr-tiny-det ~25 min (decode_det's Python decoding at score >= 0.01,
  ~2.5 min per form, 9 forms, plus its bootstrap); ResNet-18 ~10 min training + ~4 min quantization/evaluation
  (skipped training when its checkpoint exists). About 50 min from scratch, ~40 min with the data cached.
"""
import contextlib
import copy
import functools
import json
import os
import sys
import time

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
STUDY = os.path.expanduser(os.environ.get("STUDY_DIR", "~/.cache/bedside-study"))
os.environ.setdefault("CACHE", os.path.join(STUDY, "cache-cls"))
os.environ.setdefault("CACHE_DET", os.path.join(STUDY, "cache-det"))
os.environ.setdefault("CACHE_US", os.path.join(STUDY, "cache-us"))
for _d in (HERE, os.path.join(HERE, "det"), os.path.join(HERE, "us")):
    if _d not in sys.path:
        sys.path.insert(0, _d)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime.quantization import calibrate as _calibrate  # noqa: E402

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass

import zoo  # noqa: E402  (the factory's int8 recipe, sessions, run)

WORKERS = int(os.environ.get("STUDY_WORKERS", "1"))
RESULTS = os.path.join(STUDY, "results.json")
N_EXACT = 4          # test images for the per-layer exactness check


def _one_thread_calibration_session(self):
    """onnxruntime's calibrator session (calibrate.CalibraterBase.create_inference_session) with 1 intra-op thread:
    the same session otherwise (no graph optimisation); MinMax ranges do not depend on the thread count."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=so,
                                              providers=self.execution_providers)


_calibrate.CalibraterBase.create_inference_session = _one_thread_calibration_session


@contextlib.contextmanager
def reduce_range(on):
    """zoo's recipe with quantize_static(..., reduce_range=True): 7-bit weights (-64..64), nothing else changed."""
    orig = zoo.quantize_static
    if on:
        zoo.quantize_static = functools.partial(orig, reduce_range=True)
    try:
        yield
    finally:
        zoo.quantize_static = orig


# ------------------------------------------------------------------------------------------------ int8 forms

def quantize_forms(name, fp32, calib, exclude_head, out_dir):
    """int8 forms of `fp32` with zoo.quantize_int8: pt / pc (per-tensor / per-channel weights), -rr (reduce_range),
    -exact (the pt / pc model with u8-encoded weights). -> {form: path}."""
    os.makedirs(out_dir, exist_ok=True)
    forms = {}
    for pc in (False, True):
        for rr in (False, True):
            form = ("int8-pc" if pc else "int8-pt") + ("-rr" if rr else "")
            path = os.path.join(out_dir, form + ".onnx")
            work = os.path.join(out_dir, "work-" + form)
            os.makedirs(work, exist_ok=True)
            t = time.time()
            with reduce_range(rr):
                zoo.quantize_int8(fp32, path, calib, work, exclude_head=exclude_head, per_channel=pc,
                                  doc=f"{name} {form} (per_channel_study.py; not shipped)")
            print(f"[{name}] {form}: quantized in {time.time() - t:.1f}s", flush=True)
            forms[form] = path
    for form in ("int8-pt", "int8-pc"):
        forms[form + "-exact"] = u8_weights(forms[form], os.path.join(out_dir, form + "-exact.onnx"))
    return forms


def u8_weights(src, dst):
    """The same int8 model with every QLinearConv's s8 weights stored as u8 = w + 128 with zero point(s) 128:
    identical integer products, but onnxruntime runs its u8 x u8 kernel (no VPMADDUBSW saturation).
    One implementation: tools/bedside-model's (the tool's parity fixtures use it too)."""
    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "bedside-model")
    if tool not in sys.path:
        sys.path.insert(0, tool)
    from bedside_model.quantize import u8_weights as reencode
    return reencode(src, dst)


def compare_int8(a, b):
    """How two int8 models differ: 'identical' (same nodes and initializer values), or which initializers differ
    (integer tensors; max relative difference of float ones such as scales), or 'different graph'."""
    ma, mb = onnx.load(a), onnx.load(b)
    if [(n.op_type, list(n.input)) for n in ma.graph.node] != [(n.op_type, list(n.input)) for n in mb.graph.node]:
        return "different graph"
    ia = {i.name: numpy_helper.to_array(i) for i in ma.graph.initializer}
    ib = {i.name: numpy_helper.to_array(i) for i in mb.graph.initializer}
    if ia.keys() != ib.keys():
        return "different initializers"
    diff = [k for k in ia if not (ia[k].dtype == ib[k].dtype and np.array_equal(ia[k], ib[k]))]
    if not diff:
        return "identical"
    ints = [k for k in diff if not np.issubdtype(ia[k].dtype, np.floating)]
    fl = [k for k in diff if k not in ints]
    rel = max((float(np.max(np.abs(ia[k] - ib[k]) / np.abs(ia[k]))) for k in fl), default=0.0)
    return (f"{len(ints)} integer tensors differ; {len(fl)} of {len(ia)} float tensors differ "
            f"(max relative {rel:.1e}: {', '.join(fl)})")


def bootstrap_delta(task, pa, pb, split, n_boot, seed=0):
    """Paired bootstrap over the images of `split`: metric(b) - metric(a) on the same resamples -> mean, 95 % CI."""
    n = len(task.x[split])
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        d.append(task.score(pb, split, idx) - task.score(pa, split, idx))
    lo, hi = np.percentile(d, [2.5, 97.5])
    return {"delta": task.score(pb, split) - task.score(pa, split), "ci95": [float(lo), float(hi)],
            "p_delta_le_0": float(np.mean(np.array(d) <= 0)), "n_boot": n_boot}


# ------------------------------------------------------------------------------------------------ exactness

def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def qlinearconv_exact(x, node, inits):
    """Exact integer QLinearConv of the u8 tensor x [1,C,H,W] (NOTSET auto_pad): integer accumulation (float64
    matmul of integers < 2^53 is exact), + int32 bias, onnxruntime's requantization
    round_half_even(float32(acc) * float32(x_scale * w_scale / y_scale)) + y_zp, clamped to u8."""
    g = lambda i: numpy_helper.to_array(inits[node.input[i]])  # noqa: E731
    xs, xz, w, ws, wz, ys, yz = g(1), g(2), g(3), g(4), g(5), g(6), g(7)
    bias = g(8).astype(np.int64) if len(node.input) > 8 and node.input[8] else np.zeros(w.shape[0], np.int64)
    a = _attrs(node)
    assert a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    kh, kw = w.shape[2:]
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    pt, pl, pb, pr = a.get("pads", [0, 0, 0, 0])
    group = a.get("group", 1)
    xi = np.pad(x[0].astype(np.float64) - float(xz), ((0, 0), (pt, pb), (pl, pr)))
    c, hp, wp = xi.shape
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    cols = np.empty((c, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xi[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
    m_out = w.shape[0]
    wi = w.astype(np.float64) - wz.astype(np.float64).reshape(-1, 1, 1, 1)
    cg, mg = c // group, m_out // group
    acc = np.empty((m_out, oh * ow))
    for k in range(group):
        acc[k * mg:(k + 1) * mg] = wi[k * mg:(k + 1) * mg].reshape(mg, -1) @ cols[k * cg:(k + 1) * cg].reshape(cg * kh * kw, -1)
    acc = np.rint(acc).astype(np.int64) + bias[:, None]
    mult = (np.float32(xs) * ws.astype(np.float32).reshape(-1)) / np.float32(ys)
    v = acc.astype(np.float32) * mult.astype(np.float32)[:, None]
    y = np.clip(np.rint(v) + int(yz), 0, 255).astype(np.uint8)
    return y.reshape(1, m_out, oh, ow)


def layer_exactness(path, x):
    """Per QLinearConv: onnxruntime's output vs qlinearconv_exact on onnxruntime's own input, over the images x.
    -> dict: elements, mismatched, mismatched by more than 1, max |diff| (LSB), per layer and in total."""
    m = onnx.load(path)
    inits = {i.name: i for i in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type == "QLinearConv"]
    have = {o.name for o in m.graph.output}
    for nm in dict.fromkeys(t for n in convs for t in (n.input[0], n.output[0])):
        if nm not in have:
            m.graph.output.append(helper.make_tensor_value_info(nm, TensorProto.UINT8, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    layers = [{"node": n.name, "elements": 0, "mismatched": 0, "over_1": 0, "max_abs": 0} for n in convs]
    for i in range(len(x)):
        out = dict(zip(names, sess.run(None, {"input": x[i:i + 1]})))
        for n, r in zip(convs, layers):
            ref = qlinearconv_exact(out[n.input[0]], n, inits)
            d = np.abs(out[n.output[0]].astype(np.int32) - ref.astype(np.int32))
            r["elements"] += d.size
            r["mismatched"] += int((d > 0).sum())
            r["over_1"] += int((d > 1).sum())
            r["max_abs"] = max(r["max_abs"], int(d.max()))
    tot = {k: sum(r[k] for r in layers) for k in ("elements", "mismatched", "over_1")}
    tot["max_abs"] = max(r["max_abs"] for r in layers)
    tot["layers_with_mismatch"] = sum(r["mismatched"] > 0 for r in layers)
    tot["layers"] = len(layers)
    return {"total": tot, "per_layer": layers}


# ------------------------------------------------------------------------------------------------ tasks

class Task:
    """name, metric label, fp32 model, shipped int8 (or None), calibration images, exclude_head, held-out inputs
    per split, run(sess, x) -> outputs, prep(outputs, split) -> per-image data (the slow part, once per form),
    score(prep, split, idx=None) -> metric in % / points on the images idx (all when None; idx: a bootstrap
    resample), n_boot: bootstrap resamples for the paired confidence intervals."""

    def __init__(self, name, metric, fp32, shipped, calib, exclude_head, x, run, prep, score, fp32_label, n_boot):
        self.__dict__.update(locals())
        del self.__dict__["self"]


def cls_task(fp32=None, name="cxr-tiny-cls", fp32_label="fp32-pruned"):
    import data
    import quantize_manifest as QM
    xv, yv = data.load("val", workers=WORKERS)
    xt, yt = data.load("test", workers=WORKERS)
    xc, _ = data.load("calib", workers=WORKERS)
    ys = {"test": yt, "val": yv}

    def score(correct, split, idx=None):
        return 100 * float(correct.mean() if idx is None else correct[idx].mean())
    return Task(name, "accuracy %", fp32 or QM.PRUNED, None if fp32 else QM.INT8, xc, False,
                {"test": xt, "val": xv}, QM.logits, lambda out, split: out.argmax(1) == ys[split], score,
                fp32_label, 2000)


def det_task():
    import data_det
    import decode_det as Dd
    import quantize_det as QD
    xv, bv, lv, _ = data_det.load("val", workers=WORKERS)
    xt, bt, lt, _ = data_det.load("test", workers=WORKERS)
    xc = data_det.load("calib", workers=WORKERS)[0]
    gts = {"test": list(zip(bt, lt)), "val": list(zip(bv, lv))}

    def prep(out, split):  # decode_det.evaluate's detections
        return Dd.evaluate(out, gts[split], Dd.EVAL_MIN_SCORE, QD.IOU_THRESHOLD, QD.MAX_DETECTIONS)[1]

    def score(dets, split, idx=None):  # decode_det.evaluate's mAP on the images idx
        g = gts[split]
        if idx is not None:
            dets, g = [dets[i] for i in idx], [g[i] for i in idx]
        return 100 * float(np.mean([Dd.average_precision(dets, g, c) for c in range(len(Dd.LABELS))]))
    return Task("cxr-tiny-det", "mAP@0.5 x100", QD.PRUNED, QD.INT8, xc, QD.EXCLUDE_HEAD,
                {"test": xt, "val": xv}, QD.run, prep, score, "fp32-pruned", 300)


def us_task():
    import tomllib
    import data_us
    import quantize_us as QU
    xv, tv, yv, _ = data_us.load("val", workers=WORKERS)
    xt, tt, yt, _ = data_us.load("test", workers=WORKERS)
    xc = data_us.load("calib", workers=WORKERS)[0]
    toml = tomllib.load(open(os.path.join(QU.OUT_DIR, "model.toml"), "rb"))
    minf = toml["labels"][0]["min_fraction"]
    ty = {"test": (tt, yt), "val": (tv, yv)}

    def prep(out, split):  # quantize_us.metrics' pooled Dice on the positives, kept per image
        t, y = ty[split]
        p, g = out > 0.0, t.astype(np.float32) >= 0.5
        full = 100 * QU.metrics(out, t, y, minf)["dice_pos"]
        inter = (p & g).reshape(len(p), -1).sum(1) * (y == 1)
        size = (p.reshape(len(p), -1).sum(1) + g.reshape(len(g), -1).sum(1)) * (y == 1)
        assert abs(full - 100 * 2 * inter.sum() / max(size.sum(), 1)) < 1e-9
        return inter, size

    def score(pr, split, idx=None):
        inter, size = pr if idx is None else (pr[0][idx], pr[1][idx])
        return 100 * float(2 * inter.sum() / max(size.sum(), 1))
    return Task("us-fast-fluid", "Dice pos x100", QU.PRUNED, QU.INT8, xc, QU.EXCLUDE_HEAD,
                {"test": xt, "val": xv}, QU.run, prep, score, "fp32-pruned", 2000)


def sqnr_db(ref, q):
    ref, q = ref.astype(np.float64), q.astype(np.float64)
    return float(10 * np.log10((ref ** 2).sum() / max(((q - ref) ** 2).sum(), 1e-30)))


def study(task, out_dir):
    t0 = time.time()
    forms = {task.fp32_label: task.fp32}
    if task.shipped:
        forms["shipped model.onnx"] = task.shipped
    forms.update(quantize_forms(task.name, task.fp32, task.calib, task.exclude_head, out_dir))
    t_q = time.time() - t0
    res = {"metric": task.metric, "fp32_label": task.fp32_label, "n": {s: len(x) for s, x in task.x.items()},
           "n_calib": len(task.calib), "exclude_head": task.exclude_head, "forms": {}}
    outs, preps = {}, {}
    for form, path in forms.items():
        t = time.time()
        sess = zoo.session(path)
        outs[form] = {s: task.run(sess, x) for s, x in task.x.items()}
        preps[form] = {s: task.prep(outs[form][s], s) for s in task.x}
        res["forms"][form] = {"file": path, "bytes": os.path.getsize(path),
                              **{s: task.score(preps[form][s], s) for s in task.x}}
        print(f"[{task.name}] {form}: test {res['forms'][form]['test']:.2f} val {res['forms'][form]['val']:.2f} "
              f"({time.time() - t:.1f}s)", flush=True)
    ref = outs[task.fp32_label]["test"]
    for form in forms:
        res["forms"][form]["sqnr_db_vs_fp32_test"] = sqnr_db(ref, outs[form]["test"])
    for k in ("int8-pt", "int8-pc"):
        a, b = outs[k]["test"], outs[k + "-exact"]["test"]
        res[f"{k}_ort_vs_exact_test"] = {
            "images_with_any_output_difference": int(sum(not np.array_equal(a[i], b[i]) for i in range(len(a)))),
            "max_abs_output_difference": float(np.abs(a - b).max()),
            "metric_difference_points": res["forms"][k]["test"] - res["forms"][k + "-exact"]["test"]}
    t = time.time()
    res["bootstrap"] = {}
    for a, b in (("int8-pt-exact", "int8-pc-exact"), ("int8-pt", "int8-pc"), ("int8-pt-rr", "int8-pc-rr"),
                 (task.fp32_label, "int8-pt-exact"), (task.fp32_label, "int8-pc-exact")):
        res["bootstrap"][f"{b} - {a}"] = {s: bootstrap_delta(task, preps[a][s], preps[b][s], s, task.n_boot)
                                          for s in task.x}
    print(f"[{task.name}] bootstrap {time.time() - t:.0f}s: "
          f"{json.dumps({k: v['test'] for k, v in res['bootstrap'].items()})}", flush=True)
    if task.shipped:
        res["per_tensor_vs_shipped"] = compare_int8(task.shipped, forms["int8-pt"])
    t = time.time()
    xe = task.x["test"][:N_EXACT]
    res["layer_exactness"] = {form: layer_exactness(forms[form], xe)
                              for form in ("int8-pt", "int8-pc", "int8-pt-rr", "int8-pc-rr",
                                           "int8-pt-exact", "int8-pc-exact")}
    for form, r in res["layer_exactness"].items():
        print(f"[{task.name}] exactness {form}: {r['total']}", flush=True)
    res["seconds"] = {"quantize": t_q, "total": time.time() - t0, "exactness": time.time() - t}
    return res


# ------------------------------------------------------------------------------------------------ ResNet-18

RESNET_DIR = os.path.join(STUDY, "resnet18")
RESNET_CKPT = os.path.join(RESNET_DIR, "resnet18-1ch.pt")
RESNET_ONNX = os.path.join(RESNET_DIR, "resnet18-1ch.fp32.onnx")


def resnet18_1ch():
    import torch.nn as nn
    import torchvision
    m = torchvision.models.resnet18(weights=None, num_classes=3)
    m.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return m


def fold_resnet(model):
    """Eval-mode copy with every BatchNorm folded into its Conv (torch.nn.utils.fusion.fuse_conv_bn_eval)."""
    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    m = copy.deepcopy(model).eval()
    m.conv1, m.bn1 = fuse_conv_bn_eval(m.conv1, m.bn1), nn.Identity()
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        for blk in layer:
            blk.conv1, blk.bn1 = fuse_conv_bn_eval(blk.conv1, blk.bn1), nn.Identity()
            blk.conv2, blk.bn2 = fuse_conv_bn_eval(blk.conv2, blk.bn2), nn.Identity()
            if blk.downsample is not None:
                blk.downsample = nn.Sequential(fuse_conv_bn_eval(blk.downsample[0], blk.downsample[1]))
    return m


def train_resnet():
    """Random-init ResNet-18 (1-channel conv1) on the cxr-tiny-cls train split, the factory's augmentation
    (brightness/contrast jitter), AdamW + one-cycle LR, batch RESNET_BATCH, for RESNET_STEPS steps or as many as
    fit in RESNET_SECONDS (measured on two throwaway steps first); 1 thread, deterministic algorithms."""
    import torch.nn as nn
    import data
    import train_export as TE
    TE.setup(threads=1)
    xtr, ytr = data.load("train", workers=WORKERS)
    xva, yva = data.load("val", workers=WORKERS)
    batch = int(os.environ.get("RESNET_BATCH", "16"))
    budget = float(os.environ.get("RESNET_SECONDS", "600"))
    model = resnet18_1ch()
    lossf = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    steps = int(os.environ.get("RESNET_STEPS", "0"))
    if not steps:  # time two steps of a throwaway copy
        probe = copy.deepcopy(model).train()
        popt = torch.optim.AdamW(probe.parameters(), lr=1e-4)
        ts = []
        for k in range(3):
            t = time.time()
            popt.zero_grad()
            lossf(probe(xt[k * batch:(k + 1) * batch]), yt[k * batch:(k + 1) * batch]).backward()
            popt.step()
            ts.append(time.time() - t)
        step_s = float(np.mean(ts[1:]))
        steps = max(10, int(budget / step_s))
        print(f"[resnet18] probe: {step_s:.2f} s/step (batch {batch}) -> {steps} steps for {budget:.0f} s", flush=True)
        del probe, popt
    lr = float(os.environ.get("RESNET_LR", "2e-3"))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(TE.SEED)
    perm = torch.cat([torch.randperm(len(xtr), generator=g) for _ in range(steps * batch // len(xtr) + 1)])
    t0, tot, nb, log = time.time(), 0.0, 0, []
    model.train()
    for s in range(steps):
        idx = perm[s * batch:(s + 1) * batch]
        a = 1 + 0.1 * (torch.rand(batch, 1, 1, 1, generator=g) - 0.5)
        c = 0.1 * (torch.rand(batch, 1, 1, 1, generator=g) - 0.5)
        opt.zero_grad()
        loss = lossf(model(xt[idx] * a + c), yt[idx])
        loss.backward()
        opt.step()
        sched.step()
        tot, nb = tot + loss.item(), nb + 1
        if (s + 1) % 20 == 0 or s + 1 == steps:
            print(f"[resnet18] step {s + 1}/{steps} loss {tot / nb:.4f} ({time.time() - t0:.0f}s)", flush=True)
            log.append((s + 1, round(tot / nb, 4)))
            tot, nb = 0.0, 0
    train_s = time.time() - t0
    val_acc, _ = TE.evaluate(model, xva, yva)
    info = {"steps": steps, "batch": batch, "images_seen": steps * batch, "epochs": steps * batch / len(xtr),
            "train_seconds": train_s, "max_lr": lr, "val_acc_torch": val_acc, "loss_log": log,
            "params": sum(p.numel() for p in model.parameters())}
    print(f"[resnet18] trained {steps} steps in {train_s:.0f}s, val acc (torch) {val_acc:.4f}", flush=True)
    os.makedirs(RESNET_DIR, exist_ok=True)
    torch.save({"state": model.state_dict(), "info": info}, RESNET_CKPT)
    return model, info


def resnet_fp32():
    import data
    import train_export as TE
    if os.path.exists(RESNET_CKPT) and os.environ.get("RETRAIN") != "1":
        ck = torch.load(RESNET_CKPT)
        model = resnet18_1ch()
        model.load_state_dict(ck["state"])
        info = ck["info"]
        print("[resnet18] reusing", RESNET_CKPT, flush=True)
    else:
        model, info = train_resnet()
    model.eval()
    fused = fold_resnet(model)
    xva, yva = data.load("val", workers=WORKERS)
    with torch.no_grad():
        a, b = model(torch.from_numpy(xva[:8])), fused(torch.from_numpy(xva[:8]))
    info["fold_max_abs_logit_diff"] = float((a - b).abs().max())
    TE.export_onnx(fused, RESNET_ONNX, "ResNet-18 (1-channel conv1, random init, BatchNorm folded) trained briefly "
                                       "on cxr-tiny-cls synthetic phantoms (per_channel_study.py; not shipped)")
    ops = [n.op_type for n in onnx.load(RESNET_ONNX).graph.node]
    assert "BatchNormalization" not in ops, ops
    info["onnx_ops"] = {o: ops.count(o) for o in sorted(set(ops))}
    o = zoo.run(zoo.session(RESNET_ONNX), xva[:8])
    info["onnx_vs_torch_max_abs_logit_diff"] = float(np.abs(o - a.numpy()).max())
    return info


# ------------------------------------------------------------------------------------------------ report

COLS = [("fp32", None), ("int8-pt", "per-tensor"), ("int8-pc", "per-channel"), ("int8-pt-rr", "per-tensor rr"),
        ("int8-pc-rr", "per-channel rr"), ("int8-pt-exact", "per-tensor exact"),
        ("int8-pc-exact", "per-channel exact")]


def table(results):
    lines = []
    for split in ("test", "val"):
        lines += [f"\n{split} split (held-out; onnxruntime 1 thread on this CPU). rr = reduce_range (7-bit weights); "
                  "exact = s8 weights re-encoded u8 (no VPMADDUBSW saturation = bedside's / VNNI's integer result). "
                  "Deltas in points vs per-tensor of the same kind.\n",
                  "| model | n | metric | fp32 | shipped int8 | per-tensor | per-channel | Δ pc−pt | per-tensor rr | "
                  "per-channel rr | Δ rr | per-tensor exact | per-channel exact | Δ exact | int8 pt−fp32 (exact) | "
                  "int8 pc−fp32 (exact) |",
                  "|" + "---|" * 16]
        for name, r in results.items():
            if name.startswith("_"):
                continue
            f = r["forms"]
            v = lambda k: f[k][split]  # noqa: E731
            fp = v(r["fp32_label"])
            shipped = f"{v('shipped model.onnx'):.2f}" if "shipped model.onnx" in f else "–"
            lines.append(
                f"| {name} | {r['n'][split]} | {r['metric']} | {fp:.2f} ({r['fp32_label']}) | {shipped} | "
                f"{v('int8-pt'):.2f} | {v('int8-pc'):.2f} | {v('int8-pc') - v('int8-pt'):+.2f} | "
                f"{v('int8-pt-rr'):.2f} | {v('int8-pc-rr'):.2f} | {v('int8-pc-rr') - v('int8-pt-rr'):+.2f} | "
                f"{v('int8-pt-exact'):.2f} | {v('int8-pc-exact'):.2f} | {v('int8-pc-exact') - v('int8-pt-exact'):+.2f} | "
                f"{v('int8-pt-exact') - fp:+.2f} | {v('int8-pc-exact') - fp:+.2f} |")
    lines += ["\nOutput fidelity: SQNR (dB) of each int8 form's raw test outputs against the fp32 model's "
              "(higher = closer); onnxruntime vs exact; per-layer exactness of onnxruntime's QLinearConv "
              f"(first {N_EXACT} test images: mismatched bytes / all, max |diff| in LSB).\n",
              "| model | pt | pc | pt rr | pc rr | pt exact | pc exact | pt: ORT≠exact images, Δmetric | "
              "pc: ORT≠exact images, Δmetric | per-layer pt | per-layer pc | per-layer pt/pc rr | per-layer pt/pc exact |"
              " pt vs shipped model.onnx |",
              "|" + "---|" * 14]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        f, le = r["forms"], r["layer_exactness"]
        s = lambda k: f"{f[k]['sqnr_db_vs_fp32_test']:.1f}"  # noqa: E731

        def ex(k):
            t = le[k]["total"]
            return f"{t['mismatched']}/{t['elements']} (max {t['max_abs']})"

        def oe(k):
            o = r[f"{k}_ort_vs_exact_test"]
            return f"{o['images_with_any_output_difference']}/{r['n']['test']}, {o['metric_difference_points']:+.2f}"
        lines.append(f"| {name} | {s('int8-pt')} | {s('int8-pc')} | {s('int8-pt-rr')} | {s('int8-pc-rr')} | "
                     f"{s('int8-pt-exact')} | {s('int8-pc-exact')} | {oe('int8-pt')} | {oe('int8-pc')} | "
                     f"{ex('int8-pt')} | {ex('int8-pc')} | {ex('int8-pt-rr')} / {ex('int8-pc-rr')} | "
                     f"{ex('int8-pt-exact')} / {ex('int8-pc-exact')} | "
                     f"{r.get('per_tensor_vs_shipped', '–')} |")
    lines += ["\nPaired bootstrap over images (same resamples for both forms): Δ in points and 95 % interval.\n",
              "| model | split | pc exact − pt exact | pc − pt (ORT here) | pc rr − pt rr | pt exact − fp32 | "
              "pc exact − fp32 |", "|" + "---|" * 7]
    for name, r in results.items():
        if name.startswith("_") or "bootstrap" not in r:
            continue
        for split in ("test", "val"):
            def b(k):
                v = r["bootstrap"][k][split]
                return f"{v['delta']:+.2f} [{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}]"
            fl = r["fp32_label"]
            lines.append(f"| {name} | {split} | {b('int8-pc-exact - int8-pt-exact')} | {b('int8-pc - int8-pt')} | "
                         f"{b('int8-pc-rr - int8-pt-rr')} | {b('int8-pt-exact - ' + fl)} | "
                         f"{b('int8-pc-exact - ' + fl)} |")
    if "_resnet18_training" in results:
        i = results["_resnet18_training"]
        lines.append(f"\nResNet-18 (1-ch conv1, random init): {i['steps']} steps x batch {i['batch']} = "
                     f"{i['images_seen']} images ({i['epochs']:.2f} epochs of 3000) in {i['train_seconds']:.0f} s, "
                     f"1 thread; val accuracy (torch) {100 * i['val_acc_torch']:.2f} %; {i['params']} parameters; "
                     f"BN-fold max |Δlogit| {i['fold_max_abs_logit_diff']:.1e}, ONNX vs torch "
                     f"{i['onnx_vs_torch_max_abs_logit_diff']:.1e}.")
    return "\n".join(lines)


def main(parts):
    os.makedirs(STUDY, exist_ok=True)
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    t_all = time.time()
    makers = {"cls": cls_task, "det": det_task, "us": us_task}
    for p in parts:
        t = time.time()
        if p in makers:
            task = makers[p]()
            print(f"[{task.name}] data ready in {time.time() - t:.0f}s", flush=True)
            results[task.name] = study(task, os.path.join(STUDY, task.name))
        elif p == "resnet18":
            info = resnet_fp32()
            results["_resnet18_training"] = info
            task = cls_task(RESNET_ONNX, "resnet18-1ch (cls task)", "fp32 (dense, BN folded)")
            results[task.name] = study(task, RESNET_DIR)
        else:
            raise SystemExit(f"unknown part {p!r} (cls, det, us, resnet18)")
        results[task.name]["seconds"]["part_wall"] = time.time() - t
        with open(RESULTS, "w") as f:
            json.dump(results, f, indent=1)
        print(f"[{p}] done in {time.time() - t:.0f}s", flush=True)
    md = table(results)
    with open(os.path.join(STUDY, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    print(f"\nwall time this run: {time.time() - t_all:.0f}s; results in {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["cls", "det", "us", "resnet18"])
