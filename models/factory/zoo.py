"""What every model factory here shares (cxr: quantize_manifest.py, us/, det/): onnxruntime sessions as the
fixtures and benchmarks use them, the int8 recipe that tract 0.23.9 runs with its integer kernels, hashing, the
manifest and the parity fixtures' format. Each of those is tools/bedside-model's code (the tool users' models go
through), imported here: one implementation, so the shipped models and a user's come out of the same recipe and
are described the same way. What stays in each build is what is the model's own: its data, training, metrics,
thresholds and which test images make good fixtures.

The int8 recipe: onnxruntime's static quantizer in QOperator form restricted to Conv+Relu, so every
convolution becomes a standard-domain QLinearConv with the ReLU folded into its output range (tract cannot load
onnxruntime's Microsoft-domain ops such as QLinearAdd); u8 activations, s8 weights, per-tensor scales (tract's
per-channel requantization ate the gain), MinMax calibration. Optionally the last Conv (a 1x1 head) stays fp32.
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

TOOL = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "bedside-model"))
if TOOL not in sys.path:
    sys.path.insert(0, TOOL)
from bedside_model import fixtures, manifest  # noqa: E402
from bedside_model.quantize import quantize_int8 as recipe  # noqa: E402

sha256 = manifest.sha256
tolerance = manifest.tolerance  # [parity]: ~3x the measured max |tract - onnxruntime|, floor 1e-5
rounded7 = fixtures.rounded7


def session(path, threads=1):
    """onnxruntime on the CPU, `threads` intra-op threads, sequential: the reference the fixtures come from."""
    return fixtures.session(path, threads)


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


# The coded concepts of the shipped models' labels, for DICOM reports (SNOMED CT). Only codes whose concept is the
# label's exactly; the others stay in bedside's private scheme 99BEDSIDE ("normal", "other", "foreign_body",
# "free_fluid").
LABEL_CODES = {
    "pneumothorax": {"value": "36118008", "scheme": "SCT", "meaning": "Pneumothorax"},
    "nodule": {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"},
}


def label(name, **fields):
    """A manifest label with its code when LABEL_CODES has one."""
    return {"name": name, **fields, "code": LABEL_CODES.get(name)}


def manifest_spec(model_id, version, task, quantization, description, int8, fp32, pruned, kept_from):
    """The common part of a factory model's manifest spec (bedside_model.manifest.render): the three forms' files
    and hashes, and the `[memory]` figure of the manifest being rewritten, `kept_from` (tract_working_bytes is measured by
    bedside itself; tests/memory.rs prints it when missing and checks it, so a rebuild keeps it)."""
    return {"id": model_id, "version": version, "task": task, "file": os.path.basename(int8), "sha256": sha256(int8),
            "quantization": quantization, "description": description,
            "parent": {"file": os.path.basename(fp32), "sha256": sha256(fp32)},
            "pruned": {"file": os.path.basename(pruned), "sha256": sha256(pruned)},
            "input_name": "input",
            "tract_working_bytes": manifest.kept_working_bytes(kept_from),
            "memory_note": "measured by bedside when it loads the model, with its int8 ops (tests/memory.rs checks it)"}


def write_manifest(path, spec, forms):
    """The manifest `path` from `spec`; prints the forms' hashes and sizes."""
    manifest.write(path, spec)
    print("wrote", path)
    for _, p in forms:
        print("sha256", os.path.basename(p), sha256(p), os.path.getsize(p), "bytes")


def save_fixtures(fix_dir, doc):
    """parity.json (the tool's format writer) and the total size of the fixture folder."""
    fixtures.save(fix_dir, doc)
    tot = sum(os.path.getsize(os.path.join(fix_dir, p)) for p in os.listdir(fix_dir))
    print("wrote", len(doc["cases"]), "fixtures to", fix_dir, tot, "bytes")
