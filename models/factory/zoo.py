"""What every model factory here shares (cxr: quantize_manifest.py, us/, det/): onnxruntime sessions as the
fixtures and benchmarks use them, the int8 recipe that tract 0.23.9 runs with its integer kernels, hashing.

The int8 recipe: onnxruntime's static quantizer in QOperator form restricted to Conv+Relu, so every
convolution becomes a standard-domain QLinearConv with the ReLU folded into its output range (tract cannot load
onnxruntime's Microsoft-domain ops such as QLinearAdd); u8 activations, s8 weights, per-tensor scales (tract's
per-channel requantization ate the gain), MinMax calibration. Optionally the last Conv (a 1x1 head) stays fp32.
"""
import hashlib
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def session(path, threads=1):
    """onnxruntime on the CPU, `threads` intra-op threads, sequential: the reference the fixtures come from
    (tools/bedside-model's settings, one implementation)."""
    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "bedside-model")
    if tool not in sys.path:
        sys.path.insert(0, tool)
    from bedside_model.fixtures import session as make
    return make(path, threads)


def run(sess, x):
    """The first output for each image of the batch `x`, one image per run (as bedside runs them)."""
    return np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


class Reader(CalibrationDataReader):
    def __init__(self, x):
        self.it = iter([{"input": x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.it, None)


def quantize_qoperator(src, out, calib, cache_dir, per_channel=False, op_types=("Conv", "Relu"),
                       exclude_head=False):
    """onnxruntime's static quantizer on the fp32 model `src` (after quant_pre_process, written to `cache_dir`),
    QOperator form, u8 activations, s8 weights, MinMax calibration on the images `calib`, to `out`.
    `op_types`: the op types to quantize; None quantizes every op onnxruntime can (its full QOperator output,
    with Microsoft-domain ops such as QLinearAdd). The defaults are quantize_int8's recipe."""
    pre = os.path.join(cache_dir, "model.pruned.pre.onnx")
    quant_pre_process(src, pre, skip_symbolic_shape=True)
    exclude = []
    if exclude_head:
        m = onnx.load(pre)
        exclude = [[n.name for n in m.graph.node if n.op_type == "Conv"][-1]]
    quantize_static(pre, out, Reader(calib), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                    op_types_to_quantize=None if op_types is None else list(op_types),
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude)


def quantize_int8(pruned, out, calib, cache_dir, doc, version="0.1.0", exclude_head=False, per_channel=False):
    """Quantizes the fp32 model `pruned` to `out` with bedside's int8 recipe, calibrated on the images `calib`;
    returns the op list (domain:op) of the int8 graph, after checking that tract can load every op.
    The recipe is tools/bedside-model's (bedside_model.quantize.quantize_int8), the one code users' models go
    through too; the shipped cxr-tiny-cls and us-fast-fluid int8 files come out of it byte for byte.
    per_channel=True: per-channel weight scales instead (benches/int8 compares the two)."""
    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "bedside-model")
    if tool not in sys.path:
        sys.path.insert(0, tool)
    from bedside_model.quantize import quantize_int8 as recipe
    ops = recipe(pruned, out, "input", calib, cache_dir, exclude_head=exclude_head, producer_version=version,
                 doc=doc, producer_name="bedside-model-factory", per_channel=per_channel)
    print("quantized", out, ops, os.path.getsize(out), "bytes")
    return ops


def ort_ms(sess, x, n=100):
    """Median ms of `n` runs of the onnxruntime session `sess` on the input `x`, after 10 warm-up runs."""
    import time
    for _ in range(10):
        sess.run(None, {"input": x})
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        sess.run(None, {"input": x})
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def memory_section(model_toml):
    """`[memory]` of a manifest being rewritten: tract_working_bytes is measured by bedside itself (tests/memory.rs
    prints it when it is missing and checks it against the manifest), so a rebuild keeps the figure already
    written in `model_toml`. '' when there is none; else the table and a blank line."""
    if not os.path.exists(model_toml):
        return ""
    import tomllib
    kept = tomllib.load(open(model_toml, "rb")).get("memory", {}).get("tract_working_bytes")
    if not kept:
        return ""
    return ("[memory]\n# measured by bedside when it loads the model (tests/memory.rs checks it)\n"
            f"tract_working_bytes = {kept}\n\n")


def manifest_head(model_id, version, task, quantization, description, int8, fp32, pruned):
    """The `[model]`, `[model.parent]` and `[model.pruned]` tables of a manifest for the three forms' files."""
    return f'''[model]
id = "{model_id}"
version = "{version}"
task = "{task}"
file = "{os.path.basename(int8)}"
sha256 = "{sha256(int8)}"
quantization = "{quantization}"
description = "{description}"

[model.parent]
file = "{os.path.basename(fp32)}"
sha256 = "{sha256(fp32)}"

[model.pruned]
file = "{os.path.basename(pruned)}"
sha256 = "{sha256(pruned)}"
'''
