"""The int8 recipe, in one place.

It is the model factory's (models/factory/zoo.py, quantize_qoperator + quantize_int8), called with the very same
onnxruntime API and options; the factory is to be rewritten on this module, so keep the two from drifting until
then. onnxruntime's static quantizer in QOperator form restricted to Conv+Relu: every convolution becomes a
standard-domain QLinearConv with the ReLU folded into its output range (tract cannot load onnxruntime's
Microsoft-domain ops such as QLinearAdd); u8 activations, s8 weights, PER-TENSOR scales (the decided recipe,
docs/int8.md "Per-channel or per-tensor"), MinMax calibration. Optionally the last Conv (a 1x1 head) stays fp32.

`per_channel=True` exists for the factory's per-channel study only (benches/int8); the factory's builds call
this function (models/factory/zoo.py quantize_int8), so their int8 files come from the same code as the tool's.

Also here: `u8_weights` (models/factory/per_channel_study.py), the same int8 model with its s8 weights re-encoded
as u8, which onnxruntime on x86 without VNNI runs through its exact u8 x u8 kernel (its u8 x s8 kernel saturates,
VPMADDUBSW): every onnxruntime int8 reference (parity fixtures) is taken from that form.
"""
import os

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from . import Refused

RECIPE = ("int8 static, QOperator QLinearConv u8/s8 per-tensor (ReLU folded){head}, MinMax calibration on "
          "{n} images")


class Reader(CalibrationDataReader):
    """The calibration tensors, one image per run (as bedside runs them)."""

    def __init__(self, name, x):
        self.it = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.it, None)


def quantize_int8(src, out, input_name, calib, work, exclude_head=False, producer_version="0.1.0", doc="",
                  producer_name="bedside-model", per_channel=False):
    """Quantizes the fp32 model `src` to `out` with the recipe above, calibrated on `calib` (N, 1, H, W) float32.
    Returns the op list (domain:op) of the int8 graph. Refuses a graph with a non-standard-domain op (tract cannot
    load it) or with a Conv that did not become a QLinearConv (the head excepted with exclude_head)."""
    pre = os.path.join(work, "model.pre.onnx")
    quant_pre_process(src, pre, skip_symbolic_shape=True)
    pm = onnx.load(pre)
    if any(not n.name for n in pm.graph.node):
        # Unnamed nodes (onnx.helper graphs; exporters name theirs): the quantizer excludes and reports by name.
        taken = {n.name for n in pm.graph.node}
        for i, n in enumerate(pm.graph.node):
            if not n.name:
                n.name = next(c for c in (f"{n.op_type}_{i}", *(f"{n.op_type}_{i}_{k}" for k in range(99)))
                              if c not in taken)
                taken.add(n.name)
        onnx.save(pm, pre)
    exclude = []
    if exclude_head:
        convs = [n.name for n in pm.graph.node if n.op_type == "Conv"]
        exclude = convs[-1:]
    quantize_static(pre, out, Reader(input_name, calib), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                    op_types_to_quantize=["Conv", "Relu"],
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude)
    m = onnx.load(out)
    m.producer_name, m.producer_version = producer_name, producer_version
    m.doc_string = doc
    onnx.save(m, out)
    ops = [(n.domain or "ai.onnx") + ":" + n.op_type for n in m.graph.node]
    odd = sorted({o for o in ops if not o.startswith("ai.onnx:")})
    if odd:
        raise Refused(f"the int8 graph has non-standard-domain ops {odd}: tract cannot load them")
    src_convs = sum(n.op_type == "Conv" for n in pm.graph.node)
    left = [n.name or "(unnamed)" for n in m.graph.node if n.op_type == "Conv"]
    qconvs = sum(n.op_type == "QLinearConv" for n in m.graph.node)
    if len(left) > len(exclude) or qconvs + len(left) != src_convs or src_convs == 0:
        raise Refused(f"quantization left {len(left)} Conv node(s) in fp32 ({', '.join(left)}) of {src_convs} "
                      f"(expected {len(exclude)}: {'the head' if exclude else 'none'}); {qconvs} QLinearConv")
    return ops


def u8_weights(src, dst):
    """The same int8 model with every QLinearConv's s8 weights stored as u8 = w + 128 with zero point(s) 128:
    identical integer products, but onnxruntime runs its u8 x u8 kernel (no VPMADDUBSW saturation).
    (models/factory/per_channel_study.py u8_weights.)"""
    m = onnx.load(src)
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type != "QLinearConv":
            continue
        w = numpy_helper.to_array(inits[n.input[3]])
        zp = numpy_helper.to_array(inits[n.input[5]])
        if w.dtype != np.int8:
            continue
        wn, zn = n.name + "_w_u8", n.name + "_wzp_u8"
        m.graph.initializer.extend([numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8), wn),
                                    numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8), zn)])
        n.input[3], n.input[5] = wn, zn
    used = {i for n in m.graph.node for i in n.input}
    keep = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, dst)
    return dst


def describe(n_calib, exclude_head):
    return RECIPE.format(head=", 1x1 head conv fp32" if exclude_head else "", n=n_calib)
