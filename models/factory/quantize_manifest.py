"""Static int8 quantization of model.fp32.onnx -> model.onnx, evaluation, thresholds, model.toml.

Format: onnxruntime QOperator restricted to Conv+Relu (-> QLinearConv with the ReLU folded into its output
range), u8 activations, s8 weights, per-tensor scales; GlobalAveragePool and the final Gemm stay float.
This is the int8 form tract 0.23.9 actually executes with int8 kernels (see MODEL_CARD.md).
"""
import hashlib
import json
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

import data
import preprocess as P
import synth

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.normpath(os.path.join(HERE, "..", "cxr-tiny-cls"))
FP32 = os.path.join(OUT_DIR, "model.fp32.onnx")
INT8 = os.path.join(OUT_DIR, "model.onnx")
METRICS = os.path.join(data.CACHE, "metrics.json")

# Tolerance for |tract - onnxruntime| on the int8 logits of the parity fixtures. Measured with
# tract_check.py (tract 0.23.9, x86_64 AVX-512 VNNI): 2.9e-6 on the int8 logits; tolerance ~3.5x that.
PARITY_MAX_ABS = float(os.environ.get("PARITY_MAX_ABS", "1e-5"))


class Reader(CalibrationDataReader):
    def __init__(self, x):
        self.it = iter([{"input": x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.it, None)


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def logits(sess, x):
    return np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def softmax(l):
    e = np.exp(l - l.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ort_ms(sess, x, n=100):
    for _ in range(10):
        sess.run(None, {"input": x})
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        sess.run(None, {"input": x})
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def quantize():
    xc, _ = data.load("calib")
    pre = os.path.join(data.CACHE, "model.fp32.pre.onnx")
    quant_pre_process(FP32, pre, skip_symbolic_shape=True)
    quantize_static(pre, INT8, Reader(xc), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False,
                    op_types_to_quantize=["Conv", "Relu"], calibrate_method=CalibrationMethod.MinMax)
    m = onnx.load(INT8)
    m.producer_name, m.producer_version = "bedside-model-factory", "0.1.0"
    m.doc_string = f"cxr-tiny-cls int8 (QOperator QLinearConv u8/s8 per-tensor), calibrated on {len(xc)} synthetic images"
    onnx.save(m, INT8)
    ops = sorted({(n.domain or "ai.onnx") + ":" + n.op_type for n in m.graph.node})
    print("quantized", INT8, ops, os.path.getsize(INT8), "bytes")
    assert all(o.startswith("ai.onnx:") for o in ops), "non-standard-domain op in the int8 graph (tract cannot load it)"
    return len(xc)


def thresholds(prob, y):
    """Per-class threshold on the validation set maximising Youden's J, on a 0.05 grid in [0.2, 0.8]."""
    out = {}
    for k in (1, 2):
        best = max(np.arange(0.2, 0.801, 0.05),
                   key=lambda t: ((prob[y == k, k] >= t).mean() + (prob[y != k, k] < t).mean(), -abs(t - 0.5)))
        out[synth.LABELS[k]] = round(float(best), 2)
    return out


def evaluate(n_calib):
    s32, s8 = session(FP32), session(INT8)
    xv, yv = data.load("val")
    xt, yt = data.load("test")
    res = {"n_calib": n_calib, "n_test": int(len(yt)), "n_val": int(len(yv))}
    for name, s in (("fp32", s32), ("int8", s8)):
        lt = logits(s, xt)
        pred = lt.argmax(1)
        res[f"test_acc_{name}"] = float((pred == yt).mean())
        res[f"test_per_class_{name}"] = {synth.LABELS[k]: float((pred[yt == k] == k).mean()) for k in range(3)}
        res[f"confusion_{name}"] = [[int(((yt == a) & (pred == b)).sum()) for b in range(3)] for a in range(3)]
        res[f"ort_1thread_ms_{name}"] = ort_ms(s, xt[:1])
        if name == "fp32":
            l32 = lt
    res["int8_vs_fp32_test_max_abs_logit"] = float(np.abs(lt - l32).max())
    res["int8_vs_fp32_argmax_agree"] = float((lt.argmax(1) == l32.argmax(1)).mean())
    res["thresholds"] = thresholds(softmax(logits(s8, xv)), yv)
    print(json.dumps(res, indent=1))
    with open(METRICS, "w") as f:
        json.dump(res, f, indent=1)
    return res


def manifest(res):
    th = res["thresholds"]
    toml = f'''[model]
id = "cxr-tiny-cls"
version = "0.1.0"
task = "classification"
file = "model.onnx"
sha256 = "{sha256(INT8)}"
quantization = "int8 static, QOperator QLinearConv u8/s8 per-tensor, calibrated on {res["n_calib"]} synthetic images"
description = "Tiny 3-class chest X-ray classifier trained on synthetic phantoms; runtime reference, not a medical device"

[model.parent]
file = "model.fp32.onnx"
sha256 = "{sha256(FP32)}"

[input]
name = "input"
shape = [1, 1, {P.SIZE}, {P.SIZE}]
layout = "NCHW"

[preprocess]
window = "dicom"
resize = "bilinear-antialias"
mean = {P.MEAN}
std = {P.STD}

[output]
name = "logits"
activation = "softmax"

[parity]
# max |tract - onnxruntime| on the int8 logits of tests/fixtures/cxr-tiny-cls; tolerance ~3.5x the measured 2.9e-6
# (measured value in MODEL_CARD.md, re-measure with models/factory/tract_check.py)
max_abs = {PARITY_MAX_ABS}

[[labels]]
name = "normal"
threshold = 0.5
[[labels]]
name = "pneumothorax"
threshold = {th["pneumothorax"]}
[[labels]]
name = "other"
threshold = {th["other"]}
'''
    path = os.path.join(OUT_DIR, "model.toml")
    with open(path, "w") as f:
        f.write(toml)
    print("wrote", path)
    print("sha256", os.path.basename(INT8), sha256(INT8))
    print("sha256", os.path.basename(FP32), sha256(FP32))


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    n = quantize()
    manifest(evaluate(n))
