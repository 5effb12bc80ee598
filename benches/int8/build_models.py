"""Builds the int8 benchmark's models: six real architectures with random weights, exported to ONNX (batch 1,
fixed shapes, BatchNorm folded) and quantized three ways with onnxruntime; writes models.json beside them.

  python benches/int8/build_models.py [--out DIR] [--models resnet18-1ch,yolov8n] [--calib 8] [--force]

DIR defaults to $BEDSIDE_BENCH_DIR or ~/.cache/bedside-bench (outside the repository: the files are 1-50 MB
each and are rebuilt, never committed). Layout: DIR/<model>/{fp32,int8-pt,int8-pc,int8-qop}.onnx,
DIR/models.json. A model whose four files and models.json entry exist is kept unless --force.

Models (random weights, torch.manual_seed(0), BatchNorm statistics set from one random batch so activations keep a
trained network's scale; only the speed is measured):
  resnet18-1ch       torchvision ResNet-18, conv1 replaced by a 1-channel one, 1x1x224x224
  mobilenetv3-small  torchvision MobileNetV3-Small, 1x3x224x224
  efficientnet-b0    torchvision EfficientNet-B0, 1x3x224x224
  monai-unet         MONAI UNet(2D, 1->2, channels 16..256, strides 2x4, 2 residual units), 1x1x256x256
  monai-basicunet    MONAI BasicUNet(2D, 1->2), 1x1x256x256
  yolov8n            ultralytics DetectionModel from yolov8n.yaml (no weights downloaded), 1x3x320x320;
                     ultralytics (AGPL-3.0) lives only in the bench venv and only builds this ONNX file

Forms (models/factory/zoo.py's quantizer; calibration on --calib random N(0,1) inputs, MinMax):
  fp32      torch.onnx.export (TorchScript exporter, opset 17, one file), eval mode: BatchNorm folded into Conv
  int8-pt   zoo.quantize_int8: QOperator, only Conv+Relu, u8 activations / s8 weights, per-tensor
            (the recipe bedside ships; every op is standard-domain)
  int8-pc   the same with per-channel weight scales
  int8-qop  onnxruntime's full QOperator output: no op-type restriction, per-channel, u8/s8 (Microsoft-domain
            ops: QLinearAdd, QLinearConcat, QLinearGlobalAveragePool, QLinearSigmoid, QGemm, ...)

models.json, per model: input name and shape, GMAC of the fp32 graph (Conv/ConvTranspose/Gemm/MatMul counted with
shape inference, models/factory/bench_all.onnx_macs), and per form: file, bytes, node count, op counts
(domain:op), the com.microsoft and QLinear* ops it uses, the standard ops that get a u8 tensor, whether onnxruntime loads and runs it, and its output's
largest difference from fp32 on one random input (a sanity figure for random weights, not an accuracy).
"""
import argparse
import collections
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "models", "factory"))

import numpy as np  # noqa: E402

import zoo  # noqa: E402  (the project's int8 recipe: quantize_int8, quantize_qoperator, session)
from bench_all import onnx_macs  # noqa: E402

FORMS = ("fp32", "int8-pt", "int8-pc", "int8-qop")
OPSET = 17


def default_dir():
    return os.environ.get("BEDSIDE_BENCH_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "bedside-bench")


# ------------------------------------------------------------------------------------------------ architectures

def resnet18_1ch():
    import torch.nn as nn
    import torchvision
    m = torchvision.models.resnet18(weights=None)
    m.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return m


def mobilenetv3_small():
    import torchvision
    return torchvision.models.mobilenet_v3_small(weights=None)


def efficientnet_b0():
    import torchvision
    return torchvision.models.efficientnet_b0(weights=None)


def monai_unet():
    from monai.networks.nets import UNet
    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
                strides=(2, 2, 2, 2), num_res_units=2)


def monai_basicunet():
    from monai.networks.nets import BasicUNet
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=2)


def yolov8n():
    # (YOLO_CONFIG_DIR and YOLO_OFFLINE are set in main()).
    from ultralytics.nn.modules.block import C2f
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import DetectionModel
    m = DetectionModel("yolov8n.yaml", ch=3, nc=80, verbose=False)
    for mod in m.modules():           # what ultralytics' own ONNX export (engine/exporter.py) sets:
        if isinstance(mod, Detect):   # the head decodes boxes into one (1, 84, anchors) tensor
            mod.export, mod.format, mod.dynamic, mod.shape = True, "onnx", False, None
        elif isinstance(mod, C2f):    # Split with constant sizes instead of chunk's shape arithmetic
            mod.forward = mod.forward_split
    return m


MODELS = {
    "resnet18-1ch": (resnet18_1ch, (1, 1, 224, 224)),
    "mobilenetv3-small": (mobilenetv3_small, (1, 3, 224, 224)),
    "efficientnet-b0": (efficientnet_b0, (1, 3, 224, 224)),
    "monai-unet": (monai_unet, (1, 1, 256, 256)),
    "monai-basicunet": (monai_basicunet, (1, 1, 256, 256)),
    "yolov8n": (yolov8n, (1, 3, 320, 320)),
}


# ------------------------------------------------------------------------------------------------ steps

def recalibrate_bn(model, shape, n=8):
    """Sets every BatchNorm's running statistics to those of one batch of `n` random inputs. With freshly
    initialised ones (mean 0, variance 1) and random weights, activations shrink layer after layer (EfficientNet-B0's
    output was ~1e-14), which would give the quantizer degenerate ranges and fp32 denormal-prone values; with
    these, every BatchNorm outputs roughly unit-variance activations, as in a trained network."""
    import torch
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                 # cumulative average: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(n, *shape[1:]))
    model.eval()
    return len(bns)


def export_fp32(name, path, shape):
    import torch
    torch.manual_seed(0)
    model = MODELS[name][0]()
    recalibrate_bn(model, shape)
    model.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        model(x)                          # fails here rather than inside the exporter if the model is broken
        # The TorchScript exporter: one self-contained file, BatchNorm folded into the Conv before it in eval
        # mode (do_constant_folding). dynamo=False is deprecated in torch 2.15 but still the simpler graph.
        torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["output"],
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    import onnx
    m = onnx.load(path)
    onnx.checker.check_model(m)
    bn = sum(n.op_type == "BatchNormalization" for n in m.graph.node)
    if bn:
        raise RuntimeError(f"{name}: {bn} BatchNormalization left in the exported graph")


def op_counts(path):
    import onnx
    m = onnx.load(path)
    c = collections.Counter((n.domain or "ai.onnx") + ":" + n.op_type for n in m.graph.node)
    return dict(sorted(c.items())), len(m.graph.node)


def u8_standard_ops(path):
    """Standard-domain ops (other than Quantize/DequantizeLinear and QLinear*) whose first input is a quantized
    uint8 tensor (MaxPool, Resize, Split, ... run on u8 in onnxruntime's QOperator graphs): op -> count."""
    import onnx
    m = onnx.load(path)
    q = {i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.UINT8}
    c = collections.Counter()
    for n in m.graph.node:
        quant = n.op_type == "QuantizeLinear" or n.op_type.startswith("QLinear") or n.op_type == "QGemm"
        if quant:
            q.add(n.output[0])
        elif n.input and n.input[0] in q and n.op_type != "DequantizeLinear":
            q.update(n.output)          # layout and pooling ops keep the u8 type
            if not n.domain or n.domain == "ai.onnx":
                c[n.op_type] += 1
    return dict(sorted(c.items()))


def check_in_ort(path, x, ref):
    """Loads and runs `path` in onnxruntime (1 thread); the largest |output - ref| (first output)."""
    s = zoo.session(path, 1)
    out = s.run(None, {s.get_inputs()[0].name: x})[0]
    return float(np.abs(out.astype(np.float64) - ref).max()), float(np.abs(ref).max())


def build_one(name, out_dir, n_calib):
    shape = MODELS[name][1]
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    files = {f: os.path.join(d, f + ".onnx") for f in FORMS}
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((n_calib,) + shape[1:]).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    entry = {"input": "input", "shape": list(shape), "files": {}, "seconds": {}}
    t = time.time()
    export_fp32(name, files["fp32"], shape)
    entry["seconds"]["export"] = round(time.time() - t, 1)
    entry["gmac"] = round(onnx_macs(files["fp32"], shape) / 1e9, 4)
    doc = f"bedside int8 benchmark: {name} with random weights (benches/int8/build_models.py)"
    with tempfile.TemporaryDirectory(dir=d) as cache:
        for form, kw in (("int8-pt", {}), ("int8-pc", {"per_channel": True})):
            t = time.time()
            with contextlib.redirect_stdout(io.StringIO()):   # zoo prints the whole op list
                zoo.quantize_int8(files["fp32"], files[form], calib, cache, doc, **kw)
            entry["seconds"][form] = round(time.time() - t, 1)
        t = time.time()
        zoo.quantize_qoperator(files["fp32"], files["int8-qop"], calib, cache, per_channel=True, op_types=None)
        entry["seconds"]["int8-qop"] = round(time.time() - t, 1)
    s = zoo.session(files["fp32"], 1)
    ref = s.run(None, {"input": x})[0].astype(np.float64)
    for form, path in files.items():
        ops, nodes = op_counts(path)
        f = {"file": os.path.relpath(path, out_dir), "bytes": os.path.getsize(path), "nodes": nodes, "ops": ops,
             "com_microsoft_ops": {k.split(":", 1)[1]: v for k, v in ops.items() if k.startswith("com.microsoft:")},
             "qlinear_ops": {k.split(":", 1)[1]: v for k, v in ops.items() if k.split(":", 1)[1].startswith("QLinear")
                             or k.split(":", 1)[1] in ("QGemm", "QuantizeLinear", "DequantizeLinear",
                                                       "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")},
             "u8_standard_ops": u8_standard_ops(path)}
        try:
            diff, scale = check_in_ort(path, x, ref)
            f["ort_loads"] = True
            f["max_abs_diff_vs_fp32"], f["max_abs_fp32"] = diff, scale
        except Exception as e:  # recorded, not fatal: the table shows which form is missing
            f["ort_loads"], f["ort_error"] = False, str(e)[-500:]
        entry["files"][form] = f
    return entry


def versions():
    import importlib.metadata as md
    v = {}
    for p in ("torch", "torchvision", "monai", "ultralytics", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = None
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=default_dir(), help="work folder (default $BEDSIDE_BENCH_DIR or ~/.cache/bedside-bench)")
    ap.add_argument("--models", help="comma-separated subset of: " + ",".join(MODELS))
    ap.add_argument("--calib", type=int, default=8, help="random calibration inputs (default 8)")
    ap.add_argument("--force", action="store_true", help="rebuild models already built")
    a = ap.parse_args()
    names = a.models.split(",") if a.models else list(MODELS)
    bad = [n for n in names if n not in MODELS]
    if bad:
        sys.exit(f"unknown model(s) {bad}; known: {', '.join(MODELS)}")
    os.makedirs(a.out, exist_ok=True)
    # ultralytics: settings file in the work folder, no network (there is none to reach anyway)
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(a.out, "ultralytics-config"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(a.out, "matplotlib-config"))   # ultralytics imports it
    index_path = os.path.join(a.out, "models.json")
    index = json.load(open(index_path)) if os.path.exists(index_path) else {}
    index.setdefault("models", {})
    failed = {}
    t0 = time.time()
    for name in names:
        have = index["models"].get(name)
        if have and not a.force and all(os.path.exists(os.path.join(a.out, f["file"])) for f in have["files"].values()):
            print(f"{name}: already built (--force rebuilds)", flush=True)
            continue
        print(f"== {name} {MODELS[name][1]}", flush=True)
        t = time.time()
        try:
            entry = build_one(name, a.out, a.calib)
        except Exception as e:  # one model failing to export or quantize must not stop the others
            import traceback
            traceback.print_exc()
            failed[name] = f"{type(e).__name__}: {str(e)[-800:]}"
            index["models"].pop(name, None)
            shutil.rmtree(os.path.join(a.out, name), ignore_errors=True)
            continue
        entry["seconds"]["total"] = round(time.time() - t, 1)
        index["models"][name] = entry
        fs = entry["files"]
        print(f"{name}: {entry['gmac']:.3f} GMAC, " + ", ".join(
            f"{k} {v['bytes'] / 1e6:.2f} MB {v['nodes']} nodes{'' if v['ort_loads'] else ' (ORT FAILS)'}"
            for k, v in fs.items()) + f"; {entry['seconds']['total']} s", flush=True)
        print(f"  int8-qop com.microsoft ops: {fs['int8-qop']['com_microsoft_ops']}", flush=True)
        index["models"] = dict(sorted(index["models"].items(), key=lambda kv: list(MODELS).index(kv[0])))
        index.update({"versions": versions(), "opset": OPSET, "calibration_inputs": a.calib,
                      "calibration": "N(0,1) random, seed 0, MinMax"})
        json.dump(index, open(index_path, "w"), indent=1)
    index["failed"] = {n: w for n, w in index.get("failed", {}).items() if n not in names}
    index["failed"].update(failed)
    json.dump(index, open(index_path, "w"), indent=1)
    print(f"wrote {index_path} ({time.time() - t0:.0f} s)")
    for n, why in failed.items():
        print(f"FAILED {n}: {why}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
