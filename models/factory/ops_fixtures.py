"""Reference fixtures for bedside's own int8 ops (tests/fixtures/ops/), made by onnxruntime.

Each case is one single-node ONNX model (opset 21 for the default domain, com.microsoft opset 1 for the Microsoft
ops) whose graph inputs are the quantized activations (u8 or s8) and whose quantization parameters, weights and
bias are initializers. onnxruntime (CPUExecutionProvider, 1 intra-op thread, ORT_DISABLE_ALL so that it runs
exactly that node) runs it on seeded random inputs and the case directory gets:

  model.onnx                the model
  input0.bin [input1.bin..] the graph inputs in graph order, raw bytes, C order
  output.bin                onnxruntime's output, raw bytes, C order (float32 little-endian for QGemm without
                            y_scale/y_zero_point: output dtype "f32")
  case.toml                 op, description, input dtypes/shapes, output dtype/shape

Nothing here is random at run time: every case draws from its own numpy Generator seeded by the case name, so
re-running rewrites the same bytes (onnx, onnxruntime and numpy at the versions of requirements.txt). The script
only needs onnx, onnxruntime and numpy:

  python3 -m venv /tmp/venv-ort
  /tmp/venv-ort/bin/pip install onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6 protobuf==7.36.2
  /tmp/venv-ort/bin/python models/factory/ops_fixtures.py            # generate + check + rounding report
  /tmp/venv-ort/bin/python models/factory/ops_fixtures.py check      # only re-run onnxruntime on the files

After generating it re-loads every model.onnx from disk, runs it on the input files and requires the output bytes
to equal output.bin, and it checks every output against numpy re-implementations of the arithmetic (integer
accumulators computed exactly, then candidate requantization formulas) - see the README for what matched.

QLinearConv with u8 activations and s8 weights: on x86-64 without AVX-512 VNNI/AVX-VNNI, onnxruntime's u8xs8
GEMM uses VPMADDUBSW, which saturates the sum of two adjacent u8*s8 products to int16; its result is then not the
exact convolution. Those cases therefore keep |w| <= 64 (or x <= 127) so that no pair can reach 32767, and the
exactness check below fails loudly should any fixture still differ from the exact integer result. The same holds
for com.microsoft QGemm with u8 A and s8 B (a full-range 576 x 100 head differs from the exact product); its s8 x s8
cases are exact with full-range weights.
"""
import math
import os
import shutil
import sys
import zlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "ops")
OPSET, MS_OPSET, IR_VERSION = 21, 1, 10

DT = {  # name: numpy dtype, onnx type, lo, hi
    "u8": (np.uint8, TensorProto.UINT8, 0, 255),
    "i8": (np.int8, TensorProto.INT8, -128, 127),
    "f32": (np.float32, TensorProto.FLOAT, None, None),  # only as an output (QGemm without y_scale/y_zero_point)
}
F32 = np.float32


def rng_for(name):
    return np.random.default_rng(zlib.crc32(name.encode()))


def f32(v):
    return np.asarray(v, dtype=F32)


def session(model_bytes):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def make_model(node, inputs, out_name, out_dt, inits, ms=False):
    """inputs: [(name, array)] graph inputs; inits: [(name, array)] initializers."""
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, DT[dt_name(a)][1], list(a.shape)) for n, a in inputs],
        [helper.make_tensor_value_info(out_name, DT[out_dt][1], None)],
        [numpy_helper.from_array(a, n) for n, a in inits])
    ops = [helper.make_opsetid("", OPSET)]
    if ms:
        ops.append(helper.make_opsetid("com.microsoft", MS_OPSET))
    m = helper.make_model(g, opset_imports=ops, producer_name="bedside-ops-fixtures")
    m.ir_version = IR_VERSION
    return m


def dt_name(a):
    return {np.dtype(np.uint8): "u8", np.dtype(np.int8): "i8", np.dtype(np.float32): "f32"}[a.dtype]


def scalar(v, dtype, shape1=False):
    a = np.array(v, dtype=dtype)
    return a.reshape(1) if shape1 else a.reshape(())


# ----------------------------------------------------------------------------------------------------------------
# QLinearConv
# ----------------------------------------------------------------------------------------------------------------

def conv_pads(H, W, kh, kw, s, d, pads, auto_pad):
    if auto_pad in (None, "NOTSET"):
        return pads
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    out = []
    for n, k, st, dl in ((H, kh, s[0], d[0]), (W, kw, s[1], d[1])):
        o = -(-n // st)
        total = max((o - 1) * st + (k - 1) * dl + 1 - n, 0)
        small, big = total // 2, total - total // 2
        out.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
    (t, b), (l, r) = out
    return [t, l, b, r]


def conv_acc(x, w, xz, wz, stride, dil, pads, group):
    """Exact int64 accumulator sum((x - xz) * (w - wz)) of a grouped 2-D convolution, NCHW / OIHW, pads t,l,b,r."""
    x = x.astype(np.int64) - np.int64(xz)
    w = w.astype(np.int64) - np.asarray(wz, np.int64).reshape(-1, 1, 1, 1)
    N, C, H, W = x.shape
    CO, CIg, KH, KW = w.shape
    t, l, b, r = pads
    xp = np.zeros((N, C, H + t + b, W + l + r), np.int64)
    xp[:, :, t:t + H, l:l + W] = x
    sh, sw = stride
    dh, dw = dil
    OH = (H + t + b - (dh * (KH - 1) + 1)) // sh + 1
    OW = (W + l + r - (dw * (KW - 1) + 1)) // sw + 1
    out = np.zeros((N, CO, OH, OW), np.int64)
    cog = CO // group
    for g in range(group):
        xs = xp[:, g * CIg:(g + 1) * CIg]
        wg = w[g * cog:(g + 1) * cog]
        for i in range(KH):
            for j in range(KW):
                patch = xs[:, :, i * dh:i * dh + sh * (OH - 1) + 1:sh, j * dw:j * dw + sw * (OW - 1) + 1:sw]
                out[:, g * cog:(g + 1) * cog] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    return out


def conv_case(name, *, k=3, s=1, d=1, pads=None, auto_pad=None, group=1, ci=8, co=8, hw=(16, 16), batch=1,
              x="u8", w="i8", per_channel=True, bias=True, wz=None, regime=None, xdist="uniform",
              clip=0.01, ties=False, params_1d=False, wmax=None, probe=False):
    """regime: None, 'w7' (|w - 0| <= 64, full-range x) or 'x7' (x <= 127, full-range w); for u8 x s8 GEMM paths.
    wz: weight zero point(s): None = 0 for s8 / random around 128 for u8, an int, or 'varied' (per channel)."""
    rng = rng_for(name)
    kh, kw = (k, k) if isinstance(k, int) else k
    st = (s, s) if isinstance(s, int) else tuple(s)
    dl = (d, d) if isinstance(d, int) else tuple(d)
    xdt, xlo, xhi = DT[x][0], DT[x][2], DT[x][3]
    wdt, wlo, whi = DT[w][0], DT[w][2], DT[w][3]
    H, W = hw
    depthwise = group == ci and ci == co
    if x == "u8" and w == "i8" and not depthwise and regime is None and not (probe and ci == 1 and kh * kw == 1):
        regime = "w7"  # (a 1x1 conv over one input channel has K = 1: nothing to pair, full range is safe)

    # activations
    if x == "u8":
        xz = int(rng.integers(0, 40)) if xdist == "relu" else int(rng.integers(96, 161))
    else:
        xz = int(rng.integers(-128, -100)) if xdist == "relu" else int(rng.integers(-24, 25))
    xmax = 127 if regime == "x7" else xhi
    if probe:  # every value of the type, in order
        xv = np.resize(np.arange(xlo, xhi + 1), batch * ci * H * W).reshape(batch, ci, H, W).astype(xdt)
    elif xdist == "relu":
        v = np.abs(rng.normal(0, (xmax - xz) / 3, (batch, ci, H, W)))
        v[rng.random(v.shape) < 0.4] = 0
        xv = np.clip(np.rint(v) + xz, xlo, xmax).astype(xdt)
    else:
        xv = rng.integers(xlo, xmax + 1, (batch, ci, H, W)).astype(xdt)
    xs = F32(2.0 ** -6) if ties else F32(rng.uniform(0.01, 0.03))

    # weights
    cig = ci // group
    nq = co if per_channel else 1
    if w == "i8":
        if wz is None:
            wzv = np.zeros(nq, np.int64)
        elif wz == "varied":
            wzv = rng.integers(-12, 13, nq)
        else:
            wzv = np.full(nq, int(wz))
        span = wmax if wmax is not None else (64 if regime == "w7" else 127)
        lo_b, hi_b = (-64, 64) if regime == "w7" else (wlo, whi)
    else:
        if wz is None:
            wzv = np.full(nq, int(rng.integers(110, 147)))
        elif wz == "varied":
            wzv = rng.integers(100, 157, nq)
        else:
            wzv = np.full(nq, int(wz))
        span = wmax if wmax is not None else 100
        lo_b, hi_b = wlo, whi
    wf = rng.normal(0, 1, (co, cig, kh, kw))
    if per_channel:
        wf /= np.abs(wf).reshape(co, -1).max(1).reshape(co, 1, 1, 1)
        wf *= rng.uniform(0.6, 1.0, (co, 1, 1, 1))
    else:
        wf /= np.abs(wf).max()
    wzb = np.broadcast_to(wzv.reshape(-1, 1, 1, 1) if per_channel else wzv.reshape(1, 1, 1, 1), wf.shape)
    wv = np.clip(np.rint(wf * span) + wzb, lo_b, hi_b).astype(wdt)
    if ties:
        wsv = np.full(nq, 2.0 ** -7, F32)
    else:
        wsv = rng.uniform(0.002, 0.02, nq).astype(F32)

    p = conv_pads(H, W, kh, kw, st, dl, pads if pads is not None else [0, 0, 0, 0], auto_pad)
    acc = conv_acc(xv, wv, xz, wzv if per_channel else int(wzv[0]), st, dl, p, group)
    if bias:
        bstd = max(float(acc.std()), 1.0)
        bv = np.rint(rng.normal(0, 0.5 * bstd, co)).astype(np.int32)
        if probe:
            bv = rng.integers(-int(3 * bstd), int(3 * bstd) + 1, co).astype(np.int32)
        acc = acc + bv.reshape(1, -1, 1, 1)
    wsb = np.broadcast_to(wsv, (co,)) if not per_channel else wsv
    yf = acc * (float(xs) * wsb.astype(np.float64)).reshape(1, -1, 1, 1)
    ydt, ylo, yhi = DT[x][0], DT[x][2], DT[x][3]
    yz = int(rng.integers(100, 157)) if x == "u8" else int(rng.integers(-24, 25))
    qhi, qlo = np.quantile(yf, 1 - clip / 2), np.quantile(yf, clip / 2)
    ys = max(qhi / (yhi - yz), qlo / (ylo - yz), 1e-6)
    if ties:
        ys = 2.0 ** np.round(np.log2(ys))
    ys = F32(ys)
    if probe:  # per channel, draw w_scale until two of the candidate formulas disagree on that channel
        names = list(conv_formulas(acc[:, :1], xs, wsv[:1], ys, yz, ylo, yhi))
        pairs = [(0, j) for j in range(1, len(names)) if "away" not in names[j]]
        for c in range(co):
            i, j = pairs[c % len(pairs)]
            for _ in range(20000):
                f = list(conv_formulas(acc[:, c:c + 1], xs, wsv[c:c + 1], ys, yz, ylo, yhi).values())
                if (f[i] != f[j]).any():
                    break
                wsv[c] = F32(rng.uniform(0.002, 0.02))
        wsb = wsv

    inits = [("x_scale", scalar(xs, F32, params_1d)), ("x_zero_point", scalar(xz, xdt, params_1d)),
             ("w", wv),
             ("w_scale", wsv if per_channel else scalar(wsv[0], F32, params_1d)),
             ("w_zero_point", wzv.astype(wdt) if per_channel else scalar(wzv[0], wdt, params_1d)),
             ("y_scale", scalar(ys, F32, params_1d)), ("y_zero_point", scalar(yz, ydt, params_1d))]
    names = ["x"] + [n for n, _ in inits]
    if bias:
        inits.append(("B", bv))
        names.append("B")
    attrs = dict(kernel_shape=[kh, kw], strides=list(st), dilations=list(dl), group=group)
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = list(pads if pads is not None else [0, 0, 0, 0])
    node = helper.make_node("QLinearConv", names, ["y"], **attrs)
    model = make_model(node, [("x", xv)], "y", x, inits)

    pad_txt = f"auto_pad {auto_pad}" if auto_pad else f"pads {list(pads or [0, 0, 0, 0])}"
    kind = "depthwise" if depthwise else (f"depthwise x{co // ci}" if group == ci else f"groups {group}")
    desc = (f"k{kh}x{kw} s{list(st)} d{list(dl)} {pad_txt} {kind} ci {ci} co {co} batch {batch} hw {H}x{W} "
            f"x:{x} w:{'s8' if w == 'i8' else 'u8'} y:{x} {'per-channel' if per_channel else 'per-tensor'} "
            f"w_zp {'varied' if wz == 'varied' else int(wzv[0])} {'bias' if bias else 'no bias'}"
            + (f" regime {regime}" if regime else "") + (" x:relu-like" if xdist == "relu" else "")
            + (" power-of-two scales (ties)" if ties else "") + (" params as [1] tensors" if params_1d else "")
            + (" every x value, w_scale per channel drawn so that f32/f64 formulas differ" if probe else "") + (f" clip~{clip:g}" if clip != 0.01 else ""))
    ref = dict(kind="conv", acc=acc, xs=xs, ws=wsb.astype(F32), ys=ys, yz=yz, lo=ylo, hi=yhi)
    return dict(name=name, op="QLinearConv", description=desc.replace("'", ""), model=model, inputs=[xv], ref=ref)


def conv_cases():
    C = []
    a = C.append
    # kernels, strides, dilations, pads (groups 1)
    a(conv_case("conv_k1_s1_ci13_co17_u8s8_pc", k=1, ci=13, co=17, hw=(19, 23)))
    a(conv_case("conv_k1_s2_ci16_co32_u8s8_pt", k=1, s=2, ci=16, co=32, hw=(20, 20), per_channel=False, bias=False))
    a(conv_case("conv_k1_s1_ci33_co17_s8s8_pc", k=1, ci=33, co=17, hw=(9, 11), x="i8"))
    a(conv_case("conv_k1_s1_ci5_co3_u8u8_pt", k=1, ci=5, co=3, hw=(13, 7), w="u8", per_channel=False))
    a(conv_case("conv_k3_s1_p1_ci3_co16_u8s8_pc", ci=3, co=16, pads=[1, 1, 1, 1], hw=(32, 32)))
    a(conv_case("conv_k3_s2_pasym_ci13_co17_u8s8_pc", s=2, ci=13, co=17, pads=[1, 0, 1, 0], hw=(19, 23)))
    a(conv_case("conv_k3_s1_p1_ci16_co16_s8s8_pt", ci=16, co=16, pads=[1, 1, 1, 1], hw=(14, 14), x="i8",
                per_channel=False))
    a(conv_case("conv_k3_s2_p1_ci8_co24_u8u8_pc", s=2, ci=8, co=24, pads=[1, 1, 1, 1], hw=(17, 16), w="u8"))
    a(conv_case("conv_k3_s1_p0_ci7_co9_s8s8_pc_nobias", ci=7, co=9, hw=(12, 10), x="i8", bias=False))
    a(conv_case("conv_k5_s1_p2_ci5_co8_s8s8_pc", k=5, ci=5, co=8, pads=[2, 2, 2, 2], hw=(17, 17), x="i8"))
    a(conv_case("conv_k5_s2_p2_ci8_co12_u8u8_pt", k=5, s=2, ci=8, co=12, pads=[2, 2, 2, 2], hw=(21, 18), w="u8",
                per_channel=False))
    a(conv_case("conv_k5_s1_p1_ci12_co20_u8s8_pc", k=5, ci=12, co=20, pads=[1, 1, 1, 1], hw=(15, 13)))
    a(conv_case("conv_k7_s2_p3_ci3_co16_u8s8_pc", k=7, s=2, ci=3, co=16, pads=[3, 3, 3, 3], hw=(40, 40)))
    a(conv_case("conv_k7_s1_p3_ci1_co5_s8s8_pt", k=7, ci=1, co=5, pads=[3, 3, 3, 3], hw=(15, 15), x="i8",
                per_channel=False))
    a(conv_case("conv_k7_s2_p2_ci4_co6_u8u8_pc", k=7, s=2, ci=4, co=6, pads=[2, 3, 3, 2], hw=(23, 19), w="u8"))
    a(conv_case("conv_k1x7_p03_ci12_co12_u8s8_pc", k=(1, 7), ci=12, co=12, pads=[0, 3, 0, 3], hw=(9, 17)))
    a(conv_case("conv_k3x1_p10_ci9_co11_s8s8_pc", k=(3, 1), ci=9, co=11, pads=[1, 0, 1, 0], hw=(13, 8), x="i8"))
    a(conv_case("conv_k7x1_s2x1_ci6_co4_u8u8_pt", k=(7, 1), s=(2, 1), ci=6, co=4, pads=[3, 0, 3, 0], hw=(20, 9),
                w="u8", per_channel=False))
    a(conv_case("conv_k3_s3_ci6_co7_u8s8_pt", s=3, ci=6, co=7, hw=(20, 17), per_channel=False))
    a(conv_case("conv_k3_s1x2_p1_ci8_co8_s8s8_pc", s=(1, 2), ci=8, co=8, pads=[1, 1, 1, 1], hw=(11, 16), x="i8"))
    a(conv_case("conv_k3_s2x1_p1_ci5_co13_u8s8_pc", s=(2, 1), ci=5, co=13, pads=[1, 1, 1, 1], hw=(16, 9)))
    a(conv_case("conv_k3_d2_p2_ci16_co16_u8s8_pc", d=2, ci=16, co=16, pads=[2, 2, 2, 2], hw=(18, 18)))
    a(conv_case("conv_k3_d2_s2_p2_ci5_co9_s8s8_pc", d=2, s=2, ci=5, co=9, pads=[2, 2, 2, 2], hw=(19, 15), x="i8"))
    a(conv_case("conv_k5_d2_p4_ci4_co4_u8u8_pc", k=5, d=2, ci=4, co=4, pads=[4, 4, 4, 4], hw=(14, 14), w="u8"))
    a(conv_case("conv_k3_d1x2_p12_ci6_co10_s8s8_pt", d=(1, 2), ci=6, co=10, pads=[1, 2, 1, 2], hw=(12, 13), x="i8",
                per_channel=False))
    a(conv_case("conv_k3_pasym0120_ci7_co9_u8s8_pc", ci=7, co=9, pads=[0, 1, 2, 0], hw=(11, 12)))
    a(conv_case("conv_k3_p2_ci4_co6_s8s8_pc", ci=4, co=6, pads=[2, 2, 2, 2], hw=(9, 9), x="i8"))
    a(conv_case("conv_k5_s2_pasym2112_ci3_co8_u8s8_pc", k=5, s=2, ci=3, co=8, pads=[2, 1, 1, 2], hw=(22, 25)))
    # auto_pad
    a(conv_case("conv_same_upper_k3_s2_even_ci8_co16_u8s8_pc", s=2, ci=8, co=16, auto_pad="SAME_UPPER", hw=(16, 16)))
    a(conv_case("conv_same_upper_k3_s2_odd_ci8_co8_s8s8_pc", s=2, ci=8, co=8, auto_pad="SAME_UPPER", hw=(15, 17),
                x="i8"))
    a(conv_case("conv_same_lower_k3_s2_odd_ci6_co12_u8s8_pc", s=2, ci=6, co=12, auto_pad="SAME_LOWER", hw=(15, 17)))
    a(conv_case("conv_same_lower_k4_s1_ci6_co6_u8u8_pt", k=4, ci=6, co=6, auto_pad="SAME_LOWER", hw=(10, 11),
                w="u8", per_channel=False))
    a(conv_case("conv_same_upper_k4_s1_ci5_co7_s8s8_pc", k=4, ci=5, co=7, auto_pad="SAME_UPPER", hw=(10, 11),
                x="i8"))
    a(conv_case("conv_valid_k3_s1_ci10_co12_u8s8_pc", ci=10, co=12, auto_pad="VALID", hw=(14, 15)))
    a(conv_case("conv_valid_k5_s2_ci3_co8_s8s8_pt", k=5, s=2, ci=3, co=8, auto_pad="VALID", hw=(21, 20), x="i8",
                per_channel=False))
    # groups
    a(conv_case("conv_g2_k3_p1_ci16_co16_u8s8_pc", group=2, ci=16, co=16, pads=[1, 1, 1, 1], hw=(14, 14)))
    a(conv_case("conv_g2_k1_ci12_co20_s8s8_pt", k=1, group=2, ci=12, co=20, hw=(10, 10), x="i8", per_channel=False))
    a(conv_case("conv_g4_k3_s2_p1_ci16_co32_u8s8_pc", group=4, s=2, ci=16, co=32, pads=[1, 1, 1, 1], hw=(17, 17)))
    a(conv_case("conv_g4_k3_p1_ci8_co12_u8u8_pc", group=4, ci=8, co=12, pads=[1, 1, 1, 1], hw=(12, 12), w="u8"))
    a(conv_case("conv_g3_k3_p1_ci9_co6_s8s8_pc", group=3, ci=9, co=6, pads=[1, 1, 1, 1], hw=(11, 13), x="i8"))
    a(conv_case("conv_g2_k5_s2_p2_ci10_co6_u8s8_pt", k=5, group=2, s=2, ci=10, co=6, pads=[2, 2, 2, 2], hw=(15, 15),
                per_channel=False))
    # depthwise (group = ci = co)
    a(conv_case("dw_k3_s1_p1_c16_u8s8_pc", group=16, ci=16, co=16, pads=[1, 1, 1, 1], hw=(20, 20)))
    a(conv_case("dw_k3_s2_p1_c32_u8s8_pc", group=32, s=2, ci=32, co=32, pads=[1, 1, 1, 1], hw=(19, 19)))
    a(conv_case("dw_k3_s1_p1_c13_s8s8_pc", group=13, ci=13, co=13, pads=[1, 1, 1, 1], hw=(15, 11), x="i8"))
    a(conv_case("dw_k3_s2_p0011_c24_s8s8_pt", group=24, s=2, ci=24, co=24, pads=[0, 0, 1, 1], hw=(16, 16), x="i8",
                per_channel=False))
    a(conv_case("dw_k5_s1_p2_c17_u8s8_pc", k=5, group=17, ci=17, co=17, pads=[2, 2, 2, 2], hw=(13, 14)))
    a(conv_case("dw_k5_s2_p2_c8_u8u8_pt", k=5, s=2, group=8, ci=8, co=8, pads=[2, 2, 2, 2], hw=(18, 17), w="u8",
                per_channel=False))
    a(conv_case("dw_k5_s2_p2_c33_s8s8_pc", k=5, s=2, group=33, ci=33, co=33, pads=[2, 2, 2, 2], hw=(14, 14), x="i8"))
    a(conv_case("dw_k3_s1_p1_c48_u8u8_pc", group=48, ci=48, co=48, pads=[1, 1, 1, 1], hw=(10, 10), w="u8"))
    a(conv_case("dw_k3_d2_p2_c8_u8s8_pc_nobias", d=2, group=8, ci=8, co=8, pads=[2, 2, 2, 2], hw=(12, 12),
                bias=False))
    a(conv_case("dw_same_upper_k3_s2_c12_u8s8_pc", s=2, group=12, ci=12, co=12, auto_pad="SAME_UPPER", hw=(13, 14)))
    a(conv_case("dw_k3_c1_u8s8_pt", group=1, ci=1, co=1, pads=[1, 1, 1, 1], hw=(9, 9), per_channel=False))
    a(conv_case("dw_k7_s1_p3_c8_s8s8_pc", k=7, group=8, ci=8, co=8, pads=[3, 3, 3, 3], hw=(12, 12), x="i8"))
    a(conv_case("dw_k3_s1_p1_c20_u8s8_pc_fullrange", group=20, ci=20, co=20, pads=[1, 1, 1, 1], hw=(12, 12)))
    # depthwise with channel multiplier 2 (group = ci, co = 2 ci)
    a(conv_case("dwm2_k3_s1_p1_ci8_co16_u8s8_pc", group=8, ci=8, co=16, pads=[1, 1, 1, 1], hw=(14, 14)))
    a(conv_case("dwm2_k3_s2_p1_ci5_co10_s8s8_pc", group=5, s=2, ci=5, co=10, pads=[1, 1, 1, 1], hw=(15, 15), x="i8"))
    a(conv_case("dwm2_k5_s1_p2_ci4_co8_u8u8_pt", k=5, group=4, ci=4, co=8, pads=[2, 2, 2, 2], hw=(11, 11), w="u8",
                per_channel=False))
    a(conv_case("dwm2_k5_s2_p2_ci12_co24_u8s8_pc", k=5, s=2, group=12, ci=12, co=24, pads=[2, 2, 2, 2], hw=(16, 16)))
    # batch 2
    a(conv_case("conv_b2_k3_p1_ci8_co8_u8s8_pc", batch=2, ci=8, co=8, pads=[1, 1, 1, 1], hw=(10, 12)))
    a(conv_case("dw_b2_k3_p1_c8_s8s8_pc", batch=2, group=8, ci=8, co=8, pads=[1, 1, 1, 1], hw=(9, 10), x="i8"))
    # odd channel counts
    a(conv_case("conv_k3_p1_ci1_co1_u8s8_pt", ci=1, co=1, pads=[1, 1, 1, 1], hw=(12, 11), per_channel=False))
    a(conv_case("conv_k3_p1_ci17_co33_u8s8_pc", ci=17, co=33, pads=[1, 1, 1, 1], hw=(9, 9)))
    a(conv_case("conv_k3_s2_p1_ci48_co48_u8u8_pc", s=2, ci=48, co=48, pads=[1, 1, 1, 1], hw=(12, 12), w="u8"))
    a(conv_case("conv_k3_p1_ci33_co5_s8s8_pc", ci=33, co=5, pads=[1, 1, 1, 1], hw=(8, 9), x="i8"))
    # quantization-parameter variants
    a(conv_case("conv_k3_p1_ci8_co8_u8s8_pt_params1d", ci=8, co=8, pads=[1, 1, 1, 1], hw=(10, 10),
                per_channel=False, params_1d=True))
    a(conv_case("conv_k3_p1_ci8_co12_u8u8_pc_wzp_varied", ci=8, co=12, pads=[1, 1, 1, 1], hw=(10, 10), w="u8",
                wz="varied"))
    a(conv_case("conv_k1_ci16_co12_s8s8_pc_wzp_varied", k=1, ci=16, co=12, hw=(9, 9), x="i8", wz="varied"))
    a(conv_case("conv_k3_p1_ci6_co10_u8s8_pc_wzp_varied", ci=6, co=10, pads=[1, 1, 1, 1], hw=(9, 10), wz="varied"))
    a(conv_case("dw_k3_p1_c12_u8u8_pc_wzp_varied", group=12, ci=12, co=12, pads=[1, 1, 1, 1], hw=(9, 9), w="u8",
                wz="varied"))
    a(conv_case("dw_k3_p1_c12_s8s8_pc_wzp_varied", group=12, ci=12, co=12, pads=[1, 1, 1, 1], hw=(9, 9), x="i8",
                wz="varied"))
    a(conv_case("conv_k3_p1_ci8_co8_s8s8_pt_wzp3", ci=8, co=8, pads=[1, 1, 1, 1], hw=(10, 10), x="i8",
                per_channel=False, wz=3))
    a(conv_case("conv_k3_p1_ci8_co8_u8s8_pt_wzpm5", ci=8, co=8, pads=[1, 1, 1, 1], hw=(10, 10),
                per_channel=False, wz=-5))
    a(conv_case("conv_k3_p1_ci8_co8_u8u8_pt_wzp0", ci=8, co=8, pads=[1, 1, 1, 1], hw=(10, 10), w="u8",
                per_channel=False, wz=0, wmax=200))
    # u8 x s8 with full-range weights (x <= 127 so VPMADDUBSW cannot saturate)
    a(conv_case("conv_k3_p1_ci16_co16_u8s8_pc_x7", ci=16, co=16, pads=[1, 1, 1, 1], hw=(12, 12), regime="x7"))
    a(conv_case("conv_k1_ci32_co8_u8s8_pt_x7", k=1, ci=32, co=8, hw=(10, 10), regime="x7", per_channel=False))
    # relu-like activations, heavy output clipping
    a(conv_case("conv_k3_p1_ci12_co12_u8s8_pc_relu", ci=12, co=12, pads=[1, 1, 1, 1], hw=(12, 12), xdist="relu"))
    a(conv_case("conv_k3_p1_ci12_co12_s8s8_pc_relu", ci=12, co=12, pads=[1, 1, 1, 1], hw=(12, 12), xdist="relu",
                x="i8"))
    a(conv_case("conv_k3_p1_ci8_co8_u8s8_pc_clip20", ci=8, co=8, pads=[1, 1, 1, 1], hw=(10, 10), clip=0.2))
    a(conv_case("conv_k3_p1_ci8_co8_s8s8_pc_clip20", ci=8, co=8, pads=[1, 1, 1, 1], hw=(10, 10), clip=0.2, x="i8"))
    # rounding: power-of-two scales (many exact .5 ties), and every input value through per-channel scales
    a(conv_case("conv_ties_k1_ci2_co4_u8s8", k=1, ci=2, co=4, hw=(16, 16), per_channel=False, ties=True, wmax=6))
    a(conv_case("conv_ties_k3_p1_ci3_co4_s8s8", ci=3, co=4, pads=[1, 1, 1, 1], hw=(12, 12), x="i8",
                per_channel=False, ties=True, wmax=3))
    a(conv_case("dw_ties_k3_p1_c6_u8u8", group=6, ci=6, co=6, pads=[1, 1, 1, 1], hw=(10, 10), w="u8",
                per_channel=False, ties=True, wmax=4))
    a(conv_case("conv_probe_k1_ci1_co32_u8s8_pc", k=1, ci=1, co=32, hw=(16, 16), probe=True))
    a(conv_case("conv_probe_k1_ci1_co32_s8s8_pc", k=1, ci=1, co=32, hw=(16, 16), probe=True, x="i8"))
    a(conv_case("conv_probe_k1_ci1_co32_u8u8_pc", k=1, ci=1, co=32, hw=(16, 16), probe=True, w="u8"))
    # realistic sizes (kernel tiling)
    a(conv_case("real_k3_p1_ci64_co64_28x28_u8s8_pc", ci=64, co=64, pads=[1, 1, 1, 1], hw=(28, 28)))
    a(conv_case("real_k1_ci32_co96_20x20_u8s8_pc", k=1, ci=32, co=96, hw=(20, 20)))
    a(conv_case("real_k1_ci96_co24_14x14_s8s8_pc", k=1, ci=96, co=24, hw=(14, 14), x="i8"))
    a(conv_case("real_dw_k3_s2_p1_c96_20x20_u8s8_pc", group=96, s=2, ci=96, co=96, pads=[1, 1, 1, 1], hw=(20, 20)))
    a(conv_case("real_k3_s2_p1_ci48_co64_24x24_u8u8_pt", s=2, ci=48, co=64, pads=[1, 1, 1, 1], hw=(24, 24), w="u8",
                per_channel=False))
    return C


# ----------------------------------------------------------------------------------------------------------------
# Microsoft-domain element-wise ops and friends
# ----------------------------------------------------------------------------------------------------------------

def rand_q(rng, dt, shape):
    lo, hi = DT[dt][2], DT[dt][3]
    return rng.integers(lo, hi + 1, shape).astype(DT[dt][0])


def rand_zp(rng, dt):
    return int(rng.integers(90, 166)) if dt == "u8" else int(rng.integers(-30, 31))


def binary_params(rng, op, dt, ties=False):
    lo, hi = DT[dt][2], DT[dt][3]
    az, bz, cz = rand_zp(rng, dt), rand_zp(rng, dt), rand_zp(rng, dt)
    asc, bsc = F32(rng.uniform(0.01, 0.05)), F32(rng.uniform(0.01, 0.05))
    if ties:
        asc, bsc = F32(2.0 ** -5), F32(2.0 ** -4)
    g = np.arange(lo, hi + 1, dtype=np.float64)
    fa, fb = ((g - az) * float(asc))[:, None], ((g - bz) * float(bsc))[None, :]
    fc = fa + fb if op == "QLinearAdd" else fa * fb
    csc = max(np.quantile(fc, 0.99) / (hi - cz), np.quantile(fc, 0.01) / (lo - cz))
    if ties:
        csc = 2.0 ** np.round(np.log2(csc))
    return dict(az=az, bz=bz, cz=cz, asc=asc, bsc=bsc, csc=F32(csc))


def binary_case(name, op, dt, sa, sb, params_1d=False, ties=False, probe=None):
    """com.microsoft QLinearAdd / QLinearMul: A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp.
    probe: 'vv' (same shapes), 'sb' (B one value per channel), 'sa' (A one value per channel), 's1' (B shape [1]):
    the scales and zero points are drawn (40 tries) to tell apart as many candidate formulas as possible over all
    256 x 256 input pairs, and the inputs hold the pairs where they disagree, then random ones."""
    rng = rng_for(name)
    lo, hi, npd = DT[dt][2], DT[dt][3], DT[dt][0]
    if probe:
        g = np.arange(lo, hi + 1)
        GA, GB = np.meshgrid(g, g, indexing="ij")
        path = {"vv": "vv", "sb": "sb", "s1": "sb", "sa": "sa"}[probe]
        f = add_formulas if op == "QLinearAdd" else mul_formulas
        best = None
        for _ in range(40):
            q = binary_params(rng, op, dt)
            npairs, mask = disagreements(f(GA, GB, q["az"], q["bz"], q["asc"], q["bsc"], q["csc"], q["cz"],
                                           lo, hi, path))
            if best is None or (npairs, mask.sum()) > best[0]:
                best = ((npairs, int(mask.sum())), q, mask)
        _, q, mask = best
        ia, ib = np.nonzero(mask)
        if probe == "vv":
            sel = rng.permutation(len(ia))[:768]
            n = int(np.prod(sa))
            fill = n - len(sel)
            a = np.concatenate([g[ia[sel]], rng.integers(lo, hi + 1, fill)]).reshape(sa)
            b = np.concatenate([g[ib[sel]], rng.integers(lo, hi + 1, fill)]).reshape(sb)
        else:
            # the values of the one-per-channel operand with the most disagreements, the other spans every value
            per = np.bincount(ia if probe == "sa" else ib, minlength=256)
            nch = 1 if probe == "s1" else (sa[1] if probe == "sb" else sb[1])
            chosen = g[np.argsort(-per, kind="stable")[:nch]]
            spans = (sa if probe != "sa" else sb)
            full = np.stack([rng.permutation(np.resize(g, int(np.prod(spans[2:])) if probe != "s1"
                                                        else int(np.prod(spans))))
                             for _ in range(nch)]).reshape(spans)
            one = chosen.reshape(sb if probe != "sa" else sa)
            a, b = (full, one) if probe != "sa" else (one, full)
        a, b = a.astype(npd), b.astype(npd)
    else:
        q = binary_params(rng, op, dt, ties=ties)
        a = rand_q(rng, dt, sa)
        b = rand_q(rng, dt, sb)
    az, bz, cz, asc, bsc, csc = q["az"], q["bz"], q["cz"], q["asc"], q["bsc"], q["csc"]
    inits = [("a_scale", scalar(asc, F32, params_1d)), ("a_zero_point", scalar(az, npd, params_1d)),
             ("b_scale", scalar(bsc, F32, params_1d)), ("b_zero_point", scalar(bz, npd, params_1d)),
             ("c_scale", scalar(csc, F32, params_1d)), ("c_zero_point", scalar(cz, npd, params_1d))]
    node = helper.make_node(op, ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "c_scale",
                                 "c_zero_point"], ["c"], domain="com.microsoft")
    model = make_model(node, [("a", a), ("b", b)], "c", dt, inits, ms=True)
    desc = f"{dt} a{list(sa)} + b{list(sb)}" if op == "QLinearAdd" else f"{dt} a{list(sa)} * b{list(sb)}"
    desc += " (numpy broadcasting)" if list(sa) != list(sb) else ""
    desc += " params as [1] tensors" if params_1d else ""
    desc += " power-of-two scales (ties)" if ties else ""
    desc += " scales/zero points and inputs chosen where candidate rounding formulas disagree" if probe else ""
    ref = dict(kind=op, a=a, b=b, az=az, bz=bz, asc=asc, bsc=bsc, csc=csc, cz=cz, lo=lo, hi=hi)
    return dict(name=name, op=op, description=desc, model=model, inputs=[a, b], ref=ref)


def concat_case(name, dt, chans, hw, same_as_output=None, axis=1):
    """com.microsoft QLinearConcat: Y_scale, Y_zp, then (X, X_scale, X_zp) per input."""
    rng = rng_for(name)
    npd, lo, hi = DT[dt][0], DT[dt][2], DT[dt][3]
    xs, params = [], []
    for i, c in enumerate(chans):
        shape = [1, c, *hw] if axis == 1 else [1, chans[0], *hw]
        if axis != 1:
            shape[axis] = c
        xs.append(rand_q(rng, dt, shape))
        params.append((F32(rng.uniform(0.01, 0.08)), rand_zp(rng, dt)))
    fl = [(x.astype(np.float64) - z) * float(s) for x, (s, z) in zip(xs, params)]
    allf = np.concatenate([f.ravel() for f in fl])
    yz = rand_zp(rng, dt)
    ys = F32(max(np.quantile(allf, 0.99) / (hi - yz), np.quantile(allf, 0.01) / (lo - yz)))
    if same_as_output is not None:
        params[same_as_output] = (ys, yz)
    inits = [("y_scale", scalar(ys, F32)), ("y_zero_point", scalar(yz, npd))]
    names = ["y_scale", "y_zero_point"]
    for i, (s, z) in enumerate(params):
        inits += [(f"x{i}_scale", scalar(s, F32)), (f"x{i}_zero_point", scalar(z, npd))]
        names += [f"x{i}", f"x{i}_scale", f"x{i}_zero_point"]
    node = helper.make_node("QLinearConcat", names, ["y"], domain="com.microsoft", axis=axis)
    model = make_model(node, [(f"x{i}", x) for i, x in enumerate(xs)], "y", dt, inits, ms=True)
    desc = (f"{dt} axis {axis} {len(chans)} inputs {[list(x.shape) for x in xs]} different scales/zero points"
            + (f" (input {same_as_output} has the output's scale and zero point: a copy)"
               if same_as_output is not None else ""))
    ref = dict(kind="concat", xs=xs, params=params, ys=ys, yz=yz, lo=lo, hi=hi, axis=axis)
    return dict(name=name, op="QLinearConcat", description=desc, model=model, inputs=xs, ref=ref)


def gap_case(name, dt, shape, channels_last=0, ties=False, probe=False):
    """com.microsoft QLinearGlobalAveragePool: X, x_scale, x_zp, y_scale, y_zp; attr channels_last.
    probe: the scales are drawn (40 tries) to tell apart candidate formulas over every reachable accumulator, and
    the channels are filled to sum to the accumulators where they disagree."""
    rng = rng_for(name)
    npd, lo, hi = DT[dt][0], DT[dt][2], DT[dt][3]
    cshape = [1] * len(shape)
    cshape[-1 if channels_last else 1] = shape[-1 if channels_last else 1]
    cshape[0] = shape[0]
    centre = rng.uniform(lo + 20, hi - 20, cshape)  # channels of different means, so the outputs spread out
    x = np.clip(np.rint(centre + rng.normal(0, 50, shape)), lo, hi).astype(npd)
    xz = rand_zp(rng, dt)
    xs = F32(2.0 ** -5) if ties else F32(rng.uniform(0.01, 0.05))
    spatial = shape[1:-1] if channels_last else shape[2:]
    n = int(np.prod(spatial))
    axes = tuple(range(1, len(shape) - 1)) if channels_last else tuple(range(2, len(shape)))
    mean = ((x.astype(np.float64) - xz) * float(xs)).mean(axis=axes)
    yz = rand_zp(rng, dt)
    ys = max(np.abs(mean).max() / 110.0, float(xs) / 40)
    if ties:  # scale = xs / (ys * n) a power of two
        ys = float(xs) / n / 2.0 ** np.round(np.log2(float(xs) / (ys * n)))
    ys = F32(ys)
    if probe:
        accs = np.arange(n * (lo - xz), n * (hi - xz) + 1)
        D = 400
        xs_ = rng.uniform(0.01, 0.05, (D, 1)).astype(F32)
        ys_ = (xs_ * np.abs(accs).max() / (n * 128) * rng.uniform(0.7, 1.3, (D, 1))).astype(F32)
        r, mask = best_row(gap_formulas(accs[None, :], xs_, ys_, n, yz, lo, hi))
        xs, ys = F32(xs_[r, 0]), F32(ys_[r, 0])
        C = shape[-1] if channels_last else shape[1]
        want = list(rng.permutation(accs[mask]))[:C]
        want += list(rng.integers(accs[0], accs[-1] + 1, C - len(want)))
        chans = []
        for t in want:  # n values in [lo, hi] summing to t + xz*n, spread out
            total = int(t) + xz * n
            v = np.full(n, total // n) + (np.arange(n) < total % n)
            for _ in range(4 * n):
                i, j = rng.integers(0, n, 2)
                d = int(rng.integers(0, 64))
                d = min(d, hi - v[i], v[j] - lo)
                v[i] += d
                v[j] -= d
            chans.append(rng.permutation(v))
        chans = np.stack(chans)  # C, n
        x = (chans.T.reshape(shape) if channels_last else chans.reshape(shape)).astype(npd)
    inits = [("x_scale", scalar(xs, F32)), ("x_zero_point", scalar(xz, npd)),
             ("y_scale", scalar(ys, F32)), ("y_zero_point", scalar(yz, npd))]
    node = helper.make_node("QLinearGlobalAveragePool", ["x", "x_scale", "x_zero_point", "y_scale", "y_zero_point"],
                            ["y"], domain="com.microsoft", channels_last=channels_last)
    model = make_model(node, [("x", x)], "y", dt, inits, ms=True)
    desc = (f"{dt} x{list(shape)} channels_last={channels_last} image size {n}" + (" (ties)" if ties else "")
            + (" scales and channel sums chosen where candidate rounding formulas disagree" if probe else ""))
    ref = dict(kind="gap", x=x, xz=xz, xs=xs, ys=ys, yz=yz, lo=lo, hi=hi, axes=axes, n=n)
    return dict(name=name, op="QLinearGlobalAveragePool", description=desc, model=model, inputs=[x], ref=ref)


def lut_case(name, op, dt, shape, alpha=None, xs=None, ys=None, probe=False):
    """com.microsoft QLinearSigmoid / QLinearLeakyRelu: X, X_scale, X_zp, Y_scale, Y_zp. The input holds every value
    of the type (then random ones), so the whole 256-entry table is exercised."""
    rng = rng_for(name)
    npd, lo, hi = DT[dt][0], DT[dt][2], DT[dt][3]
    n = int(np.prod(shape))
    x = np.concatenate([rng.permutation(np.arange(lo, hi + 1)), rng.integers(lo, hi + 1, max(n - 256, 0))])
    x = x[:n].reshape(shape).astype(npd)
    xz = rand_zp(rng, dt)
    xs = F32(xs if xs is not None else rng.uniform(0.02, 0.06))
    if op == "QLinearSigmoid":
        yz = lo  # output range [0, 1]
        ys = F32(ys if ys is not None else 1.0 / 256)
        if probe:  # draw (x_scale, x_zp, y_scale) to tell apart candidate formulas on the 256-entry table
            D = 20000
            q = (rng.uniform(0.02, 0.12, (D, 1)).astype(F32), rng.integers(lo + 64, hi - 63, (D, 1)),
                 rng.uniform(1 / 300, 1 / 240, (D, 1)).astype(F32))
            r = dict(kind=op, x=np.arange(lo, hi + 1)[None, :], xs=q[0], xz=q[1], ys=q[2], yz=yz, lo=lo, hi=hi)
            i, _ = best_row(candidates(r), first=(0, 1) if dt == "u8" else None)  # 0, 1: FMA, no FMA
            xs, xz, ys = F32(q[0][i, 0]), int(q[1][i, 0]), F32(q[2][i, 0])
    else:
        f = (np.arange(lo, hi + 1) - xz) * float(xs)
        f = np.where(f >= 0, f, alpha * f)
        yz = rand_zp(rng, dt) - 40 if dt == "u8" else rand_zp(rng, dt) - 60
        ys = F32(ys if ys is not None else max(f.max() / (hi - yz), f.min() / (lo - yz)))
    inits = [("x_scale", scalar(xs, F32)), ("x_zero_point", scalar(xz, npd)),
             ("y_scale", scalar(ys, F32)), ("y_zero_point", scalar(yz, npd))]
    attrs = {"alpha": float(alpha)} if alpha is not None else {}
    node = helper.make_node(op, ["x", "x_scale", "x_zero_point", "y_scale", "y_zero_point"], ["y"],
                            domain="com.microsoft", **attrs)
    model = make_model(node, [("x", x)], "y", dt, inits, ms=True)
    desc = (f"{dt} x{list(shape)} holding every {dt} value" + (f" alpha {alpha}" if alpha is not None else "")
            + (" scales chosen where candidate formulas disagree" if probe else ""))
    ref = dict(kind=op, x=x, xz=xz, xs=xs, ys=ys, yz=yz, lo=lo, hi=hi, alpha=alpha)
    return dict(name=name, op=op, description=desc, model=model, inputs=[x], ref=ref)


def silu_case(name, dt, shape, sigmoid_second=True):
    """QLinearSigmoid, then QLinearMul of its input and its output: SiLU (Swish) as onnxruntime's quantizer writes
    EfficientNet's activations. bedside folds the pair into one 256-entry table, so the fixture is the pair as
    onnxruntime runs it. sigmoid_second: the sigmoid is the Mul's B operand (as in the quantizer's output), else A.
    The input holds every value of the type, so the whole folded table is exercised."""
    rng = rng_for(name)
    npd, lo, hi = DT[dt][0], DT[dt][2], DT[dt][3]
    n = int(np.prod(shape))
    x = np.concatenate([rng.permutation(np.arange(lo, hi + 1)), rng.integers(lo, hi + 1, max(n - 256, 0))])
    x = x[:n].reshape(shape).astype(npd)
    xz = rand_zp(rng, dt)
    xs = F32(rng.uniform(0.02, 0.06))
    ss, sz = F32(1.0 / 256), lo
    dq = (np.arange(lo, hi + 1) - xz) * float(xs)
    f = dq / (1 + np.exp(-dq))
    ys = F32((f.max() - f.min()) / (hi - lo))
    yz = int(np.clip(round(lo - f.min() / float(ys)), lo, hi))
    inits = [("x_scale", scalar(xs, F32)), ("x_zero_point", scalar(xz, npd)),
             ("s_scale", scalar(ss, F32)), ("s_zero_point", scalar(sz, npd)),
             ("y_scale", scalar(ys, F32)), ("y_zero_point", scalar(yz, npd))]
    sig = helper.make_node("QLinearSigmoid", ["x", "x_scale", "x_zero_point", "s_scale", "s_zero_point"], ["s"],
                           domain="com.microsoft")
    a, b = (("x", "x_scale", "x_zero_point"), ("s", "s_scale", "s_zero_point"))
    if not sigmoid_second:
        a, b = b, a
    mul = helper.make_node("QLinearMul", [*a, *b, "y_scale", "y_zero_point"], ["y"], domain="com.microsoft")
    g = helper.make_graph(
        [sig, mul], "g",
        [helper.make_tensor_value_info("x", DT[dt][1], list(x.shape))],
        [helper.make_tensor_value_info("y", DT[dt][1], None)],
        [numpy_helper.from_array(v, k) for k, v in inits])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET),
                                                helper.make_opsetid("com.microsoft", MS_OPSET)],
                              producer_name="bedside-ops-fixtures")
    model.ir_version = IR_VERSION
    order = "x * sigmoid(x)" if sigmoid_second else "sigmoid(x) * x"
    desc = f"{dt} x{list(shape)} holding every {dt} value: QLinearSigmoid then QLinearMul, {order}"
    ref = dict(kind="qsilu", x=x, xz=xz, xs=xs, ss=ss, sz=sz, ys=ys, yz=yz, lo=lo, hi=hi,
               sigmoid_second=sigmoid_second)
    return dict(name=name, op="QLinearSigmoid+QLinearMul", description=desc, model=model, inputs=[x], ref=ref)


def qsoftmax_case(name, dt, shape, axis, opset=13, xs=None, ys=1 / 256, dist="full"):
    """com.microsoft QLinearSoftmax: X, X_scale, X_zero_point, Y_scale, Y_zero_point; attributes axis and opset
    (opset < 13: the softmax runs over axis and every axis after it, flattened; from 13: over axis alone).
    The output scale is what onnxruntime's quantizer gives a softmax (1/256, zero point at the bottom)."""
    rng = rng_for(name)
    npd, lo, hi = DT[dt][0], DT[dt][2], DT[dt][3]
    if dist == "full":
        x = rng.integers(lo, hi + 1, shape)
    elif dist == "narrow":  # logits within a few dozen steps, as a trained head gives
        x = rng.integers(lo + 100, lo + 140, shape)
    else:  # "equal": every softmax uniform
        x = np.full(shape, lo + 77)
    x = x.astype(npd)
    xz = rand_zp(rng, dt)
    xs = F32(xs if xs is not None else rng.uniform(0.02, 0.2))
    ys, yz = F32(ys), lo
    inits = [("x_scale", scalar(xs, F32)), ("x_zero_point", scalar(xz, npd)),
             ("y_scale", scalar(ys, F32)), ("y_zero_point", scalar(yz, npd))]
    node = helper.make_node("QLinearSoftmax", ["x", "x_scale", "x_zero_point", "y_scale", "y_zero_point"], ["y"],
                            domain="com.microsoft", axis=axis, opset=opset)
    model = make_model(node, [("x", x)], "y", dt, inits, ms=True)
    desc = f"{dt} x{list(shape)} axis {axis} opset {opset} x_scale {float(xs):.4g} inputs {dist}"
    ref = dict(kind="qsoftmax", x=x, xs=xs, ys=ys, yz=yz, lo=lo, hi=hi, axis=axis, opset=opset, signed=dt == "i8")
    return dict(name=name, op="QLinearSoftmax", description=desc, model=model, inputs=[x], ref=ref)


def softmax_case(name, shape, axis, scale=3.0):
    """Softmax (default domain) in f32 over a non-innermost axis: the one bedside runs itself (YOLOv8's DFL head
    takes it over axis 1 of [1, 16, 4, 8400])."""
    rng = rng_for(name)
    x = (rng.standard_normal(shape) * scale).astype(F32)
    node = helper.make_node("Softmax", ["x"], ["y"], axis=axis)
    model = make_model(node, [("x", x)], "y", "f32", [])
    desc = f"f32 x{list(shape)} axis {axis}, N(0, {scale}) logits"
    ref = dict(kind="softmax", x=x, axis=axis, lo=None, hi=None)
    return dict(name=name, op="Softmax", description=desc, model=model, inputs=[x], ref=ref)


def qsoftmax_ref(ref, log_f32):
    """onnxruntime's QLinearSoftmax in numpy: the 256-entry table of exp((k - 255 + shift) * xs), sums in f32 in
    axis order, rne(f32(f32(e * floor(1/ys)) / sum)) + yz, saturated to the type (the maximum of an i8 softmax
    with y_scale 1/256 comes to 256 - 128 = 128 and is stored as 127)."""
    x, axis, opset = ref["x"], ref["axis"], ref["opset"]
    axis = axis % x.ndim
    d = int(np.prod(x.shape[axis:])) if opset < 13 else x.shape[axis]
    q = np.float32(np.finfo(F32).max) / np.float32(d)
    shift = float(np.log(q)) if log_f32 else math.log(float(q))
    shift = max(0.0, shift - 5.0) / float(ref["xs"])
    table = np.array([math.exp((k - 255 + shift) * float(ref["xs"])) for k in range(256)]).astype(F32)
    if opset < 13:
        v = x.reshape(int(np.prod(x.shape[:axis])), d, 1)
    else:
        v = x.reshape(int(np.prod(x.shape[:axis])), d, int(np.prod(x.shape[axis + 1:])))
    v = v.astype(np.int64)
    k = 255 - (v.max(axis=1, keepdims=True) - v)
    e = table[k]
    s = np.zeros((v.shape[0], v.shape[2]), F32)
    for i in range(d):
        s = (s + e[:, i, :]).astype(F32)
    ysf = np.floor(np.float32(1.0) / ref["ys"]).astype(F32)
    qv = rne(((e * ysf).astype(F32) / s[:, None, :]).astype(F32)).astype(np.int64) + ref["yz"]
    return np.clip(qv, ref["lo"], ref["hi"]).reshape(x.shape)


def other_cases():
    C = []
    a = C.append
    for op, tag in (("QLinearAdd", "add"), ("QLinearMul", "mul")):
        for dt in ("u8", "i8"):
            a(binary_case(f"{tag}_{dt}_same_1x16x13x11", op, dt, (1, 16, 13, 11), (1, 16, 13, 11)))
            a(binary_case(f"{tag}_{dt}_bcast_c_1x24x10x10", op, dt, (1, 24, 10, 10), (1, 24, 1, 1)))
            a(binary_case(f"{tag}_{dt}_scalar1_1x8x9x9", op, dt, (1, 8, 9, 9), (1,)))
            a(binary_case(f"{tag}_{dt}_probe_same_1x4x16x16", op, dt, (1, 4, 16, 16), (1, 4, 16, 16), probe="vv"))
        a(binary_case(f"{tag}_u8_bcast_c_first_1x12x7x9", op, "u8", (1, 12, 1, 1), (1, 12, 7, 9)))
        a(binary_case(f"{tag}_u8_same_1x33x5x7_params1d", op, "u8", (1, 33, 5, 7), (1, 33, 5, 7), params_1d=True))
        a(binary_case(f"{tag}_u8_ties_1x8x12x12", op, "u8", (1, 8, 12, 12), (1, 8, 12, 12), ties=True))
        a(binary_case(f"{tag}_u8_probe_bcast_c_1x16x16x16", op, "u8", (1, 16, 16, 16), (1, 16, 1, 1), probe="sb"))
        a(binary_case(f"{tag}_u8_probe_bcast_c_first_1x16x16x16", op, "u8", (1, 16, 1, 1), (1, 16, 16, 16),
                      probe="sa"))
        a(binary_case(f"{tag}_i8_probe_scalar1_1x4x8x8", op, "i8", (1, 4, 8, 8), (1,), probe="s1"))
    a(binary_case("add_i8_same_1x64x6x6", "QLinearAdd", "i8", (1, 64, 6, 6), (1, 64, 6, 6)))
    a(concat_case("concat_u8_2in_c8_c13", "u8", [8, 13], (9, 7)))
    a(concat_case("concat_u8_3in_c5_c16_c3", "u8", [5, 16, 3], (6, 6), same_as_output=1))
    a(concat_case("concat_i8_2in_c12_c4", "i8", [12, 4], (7, 8)))
    a(concat_case("concat_i8_3in_c1_c7_c9", "i8", [1, 7, 9], (5, 5)))
    a(gap_case("gap_u8_1x16x7x7", "u8", (1, 16, 7, 7)))
    a(gap_case("gap_u8_1x33x13x11", "u8", (1, 33, 13, 11)))
    a(gap_case("gap_i8_1x24x10x10", "i8", (1, 24, 10, 10)))
    a(gap_case("gap_u8_2x8x40x40", "u8", (2, 8, 40, 40)))
    a(gap_case("gap_u8_1x96x4x4_ties", "u8", (1, 96, 4, 4), ties=True))
    a(gap_case("gap_u8_nhwc_1x7x7x20", "u8", (1, 7, 7, 20), channels_last=1))
    a(gap_case("gap_i8_nhwc_1x5x9x13", "i8", (1, 5, 9, 13), channels_last=1))
    a(gap_case("gap_u8_probe_1x32x7x7", "u8", (1, 32, 7, 7), probe=True))
    a(gap_case("gap_i8_probe_1x32x5x5", "i8", (1, 32, 5, 5), probe=True))
    a(gap_case("gap_u8_nhwc_probe_1x6x6x32", "u8", (1, 6, 6, 32), channels_last=1, probe=True))
    a(lut_case("sigmoid_u8_1x16x8x8", "QLinearSigmoid", "u8", (1, 16, 8, 8)))
    a(lut_case("sigmoid_i8_1x8x8x8", "QLinearSigmoid", "i8", (1, 8, 8, 8)))
    a(lut_case("sigmoid_u8_wide_1x4x8x8", "QLinearSigmoid", "u8", (1, 4, 8, 8), xs=0.1, ys=1 / 255))
    a(lut_case("sigmoid_u8_probe_1x4x8x8", "QLinearSigmoid", "u8", (1, 4, 8, 8), probe=True))
    a(lut_case("sigmoid_i8_probe_1x4x8x8", "QLinearSigmoid", "i8", (1, 4, 8, 8), probe=True))
    a(lut_case("leakyrelu_u8_1x16x8x8", "QLinearLeakyRelu", "u8", (1, 16, 8, 8), alpha=0.1))
    a(lut_case("leakyrelu_i8_1x8x8x8", "QLinearLeakyRelu", "i8", (1, 8, 8, 8), alpha=0.1))
    a(lut_case("leakyrelu_u8_same_scale_1x4x8x8", "QLinearLeakyRelu", "u8", (1, 4, 8, 8), alpha=0.1,
               xs=0.05, ys=0.05))
    a(qsoftmax_case("qsoftmax_u8_dfl_1x16x4x40", "u8", (1, 16, 4, 40), 1))
    a(qsoftmax_case("qsoftmax_u8_dfl_narrow_1x16x4x700", "u8", (1, 16, 4, 700), 1, dist="narrow"))
    a(qsoftmax_case("qsoftmax_i8_dfl_1x16x4x40", "i8", (1, 16, 4, 40), 1))
    a(qsoftmax_case("qsoftmax_i8_dfl_narrow_1x16x4x40", "i8", (1, 16, 4, 40), 1, dist="narrow"))
    a(qsoftmax_case("qsoftmax_u8_last_2x3x50", "u8", (2, 3, 50), -1))
    a(qsoftmax_case("qsoftmax_i8_last_4x1000", "i8", (4, 1000), -1, xs=0.05))
    a(qsoftmax_case("qsoftmax_u8_mid_2x5x7x3", "u8", (2, 5, 7, 3), 2))
    a(qsoftmax_case("qsoftmax_u8_equal_1x16x2x9", "u8", (1, 16, 2, 9), 1, dist="equal"))
    a(qsoftmax_case("qsoftmax_u8_opset12_2x4x6", "u8", (2, 4, 6), 1, opset=12))
    a(qsoftmax_case("qsoftmax_u8_ys255_1x10x30", "u8", (1, 10, 30), 1, ys=1 / 255))
    a(softmax_case("softmax_f32_dfl_1x16x4x300", (1, 16, 4, 300), 1))
    a(softmax_case("softmax_f32_mid_2x5x7x3", (2, 5, 7, 3), 2))
    a(softmax_case("softmax_f32_wide_1x3x1100", (1, 3, 1100), 1, scale=30.0))
    a(silu_case("silu_u8_1x16x8x8", "u8", (1, 16, 8, 8)))
    a(silu_case("silu_i8_1x8x8x8", "i8", (1, 8, 8, 8)))
    a(silu_case("silu_u8_sigmoid_first_1x4x8x8", "u8", (1, 4, 8, 8), sigmoid_second=False))
    return C


# ----------------------------------------------------------------------------------------------------------------
# com.microsoft QGemm (what onnxruntime's quantizer emits for Gemm / a classification head)
# ----------------------------------------------------------------------------------------------------------------

def qgemm_case(name, *, M=1, K=64, N=10, a="u8", transB=1, per_column=True, bias=True, out="q", regime=None,
               adist="uniform", probe=False, ties=False, alpha=1.0):
    """com.microsoft QGemm: A, a_scale, a_zero_point, B, b_scale, b_zero_point, [C], [y_scale, y_zero_point].
    A [M, K] is the graph input; B (s8, zero point 0, [N, K] with transB=1 or [K, N] with transB=0), the scales,
    zero points and the int32 bias C [N] are initializers; transA=0; alpha 1 (other values only in
    probe_qgemm_alpha, not written). out: 'q' (y_scale/y_zero_point given: y has A's type) or 'f32' (neither
    given: y is float32).
    regime: None (= 'w7' for u8 A), 'w7' (|B| <= 64), 'x7' (A <= 127), as for QLinearConv (u8 x s8 on AVX2
    without VNNI), or 'full' (full-range A and B: only in probe_qgemm_saturation, not written).
    probe: the bias of each column is chosen so that its accumulator lands where candidate formulas disagree
    (per column, the scales drawn until a pair of them does; per tensor, the draw telling the most pairs apart)."""
    rng = rng_for(name)
    adt, alo, ahi = DT[a][0], DT[a][2], DT[a][3]
    if a == "u8" and regime is None:
        regime = "w7"
    # A
    if a == "u8":
        az = int(rng.integers(0, 40)) if adist == "relu" else int(rng.integers(96, 161))
    else:
        az = int(rng.integers(-128, -100)) if adist == "relu" else int(rng.integers(-24, 25))
    amax = 127 if regime == "x7" else ahi
    if adist == "relu":
        v = np.abs(rng.normal(0, (amax - az) / 3, (M, K)))
        v[rng.random(v.shape) < 0.4] = 0
        av = np.clip(np.rint(v) + az, alo, amax).astype(adt)
    else:
        av = rng.integers(alo, amax + 1, (M, K)).astype(adt)
    asc = F32(2.0 ** -6) if ties else F32(rng.uniform(0.01, 0.03))
    # B (s8, symmetric), one row per output column
    span = 64 if regime == "w7" else 127
    bf = rng.normal(0, 1, (N, K))
    bf /= np.abs(bf).max(1, keepdims=True) if per_column else np.abs(bf).max()
    if per_column:
        bf *= rng.uniform(0.6, 1.0, (N, 1))
    bv = np.clip(np.rint(bf * span), -span, span).astype(np.int8)  # [N, K]
    nq = N if per_column else 1
    bsc = np.full(nq, 2.0 ** -7, F32) if ties else rng.uniform(0.002, 0.02, nq).astype(F32)
    dot = (av.astype(np.int64) - az) @ bv.astype(np.int64).T  # [M, N], exact
    cv = None
    if bias:
        cstd = max(float(dot.std()), 1.0)
        cv = np.rint(rng.normal(0, 0.5 * cstd, N)).astype(np.int32)
    acc = dot + (cv.astype(np.int64) if bias else 0)
    ysc, yz, lo, hi = None, None, None, None
    if out == "q":
        lo, hi = alo, ahi
        yz = int(rng.integers(100, 157)) if a == "u8" else int(rng.integers(-24, 25))
        yf = acc * (alpha * float(asc) * np.broadcast_to(bsc, (N,)).astype(np.float64))
        ys = max(np.quantile(yf, 0.995) / (hi - yz), np.quantile(yf, 0.005) / (lo - yz), 1e-6)
        if ties:
            ys = 2.0 ** np.round(np.log2(ys))
        ysc = F32(ys)

    if probe:  # M = 1: choose each column's bias so that its accumulator tells two candidate formulas apart
        assert M == 1 and bias
        form = (lambda acc_, a_, b_, y_: qgemm_formulas(acc_, a_, b_, y_, yz, lo, hi, alpha)) if out == "q" else \
            (lambda acc_, a_, b_, y_: qgemm_f32_formulas(acc_, a_, b_, alpha))
        names = list(form(acc[:, :1], asc, bsc[:1], ysc))
        # (the bias one depends on C, not only on acc; exact ties need power-of-two scales)
        pairs = [(0, j) for j in range(1, len(names)) if "bias" not in names[j] and ("away" not in names[j] or ties)
]

        def window(a_, b_, y_):  # accumulators to choose from
            if out == "q":  # formulas can only disagree next to a rounding boundary k + 1/2 of an unsaturated output
                s = alpha * float(a_) * float(b_) / float(y_)
                k = np.arange(lo - yz - 1, hi - yz + 1) + 0.5
                return np.unique((np.floor(k / s).astype(np.int64)[:, None] + np.arange(-2, 4)).ravel())
            w1 = int(4 * max(float(np.abs(acc).max()), 1000.0))  # float output: almost anywhere
            return np.unique(rng.integers(-w1, w1 + 1, 20000))

        def disagree(W, a_, b_, y_):
            f = list(form(W[:, None], a_, np.asarray([b_], F32), y_).values())
            return [np.nonzero(f[i][:, 0] != f[j][:, 0])[0] for i, j in pairs]

        if not per_column:  # draw the three scales, keep the draw telling the most pairs apart
            best = None
            for t in range(1 if ties else 3000):
                a_ = asc if t == 0 or ties else F32(rng.uniform(0.01, 0.03))
                b_ = bsc[0] if t == 0 or ties else F32(rng.uniform(0.002, 0.02))
                # y_scale keeps the scale near the data's, varied so that the float32 scales differ
                y_ = ysc if (t == 0 or ties or out != "q") else F32(
                    float(ysc) * float(a_) * float(b_) / (float(asc) * float(bsc[0])) * rng.uniform(0.8, 1.25))
                W = window(a_, b_, y_)
                d = disagree(W, a_, b_, y_)
                score = sum(len(x) > 0 for x in d)
                if best is None or score > best[0]:
                    best = (score, a_, b_, y_, W, d)
                if score == len(pairs):
                    break
            _, asc, b0, ysc, W, d = best
            bsc[:] = b0
        targets = []
        for c in range(N):
            if per_column:
                for _ in range(40):
                    W = window(asc, bsc[c], ysc)
                    d = disagree(W, asc, bsc[c], ysc)
                    if len(d[c % len(pairs)]):
                        break
                    bsc[c] = F32(rng.uniform(0.002, 0.02))
            k = c % len(pairs)
            order = [(k + t) % len(pairs) for t in range(len(pairs))]
            pick = next((d[o] for o in order if len(d[o])), None)
            targets.append(int(W[rng.choice(pick)]) if pick is not None else int(rng.choice(W)))
        cv = (np.asarray(targets, np.int64) - dot[0]).astype(np.int32)
        acc = dot + cv.astype(np.int64)

    b_init = bv if transB else np.ascontiguousarray(bv.T)
    bzp = np.zeros(nq, np.int8) if per_column else scalar(0, np.int8)
    inits = [("a_scale", scalar(asc, F32)), ("a_zero_point", scalar(az, adt)), ("b", b_init),
             ("b_scale", bsc if per_column else scalar(bsc[0], F32)), ("b_zero_point", bzp)]
    names = ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point"]
    if bias:
        inits.append(("C", cv))
        names.append("C")
    if out == "q":
        if not bias:
            names.append("")
        inits += [("y_scale", scalar(ysc, F32)), ("y_zero_point", scalar(yz, adt))]
        names += ["y_scale", "y_zero_point"]
    node = helper.make_node("QGemm", names, ["y"], domain="com.microsoft", transA=0, transB=transB, alpha=alpha)
    model = make_model(node, [("a", av)], "y", a if out == "q" else "f32", inits, ms=True)
    an = "s8" if a == "i8" else "u8"
    desc = (f"A {an}[{M}, {K}] x B s8 initializer {list(b_init.shape)} transB={transB} N {N} "
            f"{'per-column' if per_column else 'per-tensor'} b_scale b_zp 0 "
            + (f"bias int32[{N}]" if bias else "no bias") + f" alpha {alpha:g} "
            + (f"y {an} (y_scale, y_zero_point)" if out == "q" else "y f32 (no y_scale/y_zero_point)")
            + (f" regime {regime}" if regime and regime != "full" else "") + (" A:relu-like" if adist == "relu" else "")
            + (" power-of-two scales (ties)" if ties else "")
            + (" bias per column chosen so that candidate formulas disagree" if probe else ""))
    ref = dict(kind="qgemm" if out == "q" else "qgemm_f32", acc=acc, bias=cv, asc=asc, bsc=bsc.astype(F32),
               ysc=ysc, yz=yz, lo=lo, hi=hi, alpha=alpha)
    return dict(name=name, op="QGemm", description=desc, model=model, inputs=[av], ref=ref)


def qgemm_cases():
    C = []
    a = C.append
    # quantized output (y_scale, y_zero_point): what onnxruntime's quantizer emits for a classification head
    a(qgemm_case("qgemm_u8s8_1x576_n100_pc", K=576, N=100))
    a(qgemm_case("qgemm_u8s8_1x64_n1000_pc", K=64, N=1000))
    a(qgemm_case("qgemm_u8s8_1x64_n10_pt", K=64, N=10, per_column=False))
    a(qgemm_case("qgemm_u8s8_2x256_n37_pc", M=2, K=256, N=37))
    a(qgemm_case("qgemm_u8s8_1x96_n24_pc_transb0", K=96, N=24, transB=0))
    a(qgemm_case("qgemm_u8s8_1x160_n40_pt_transb0_nobias", K=160, N=40, transB=0, per_column=False, bias=False))
    a(qgemm_case("qgemm_u8s8_1x200_n64_pc_x7", K=200, N=64, regime="x7"))
    a(qgemm_case("qgemm_u8s8_1x128_n50_pc_relu", K=128, N=50, adist="relu"))
    a(qgemm_case("qgemm_s8s8_1x128_n40_pc", K=128, N=40, a="i8"))
    a(qgemm_case("qgemm_s8s8_2x96_n30_pt", M=2, K=96, N=30, a="i8", per_column=False))
    # float output (no y_scale / y_zero_point)
    a(qgemm_case("qgemm_u8s8_1x320_n50_pc_f32", K=320, N=50, out="f32"))
    a(qgemm_case("qgemm_u8s8_1x64_n10_pt_f32", K=64, N=10, per_column=False, out="f32"))
    a(qgemm_case("qgemm_u8s8_2x128_n20_pc_f32_transb0", M=2, K=128, N=20, transB=0, out="f32"))
    a(qgemm_case("qgemm_s8s8_1x96_n30_pc_f32", K=96, N=30, a="i8", out="f32"))
    # rounding: biases chosen so that each column's accumulator tells candidate formulas apart; ties
    a(qgemm_case("qgemm_probe_u8s8_1x64_n256_pc", K=64, N=256, probe=True))
    a(qgemm_case("qgemm_probe_u8s8_1x64_n128_pt", K=64, N=128, per_column=False, probe=True))
    a(qgemm_case("qgemm_probe_s8s8_1x64_n128_pc", K=64, N=128, a="i8", probe=True))
    a(qgemm_case("qgemm_probe_u8s8_1x64_n128_pc_f32", K=64, N=128, out="f32", probe=True))
    a(qgemm_case("qgemm_ties_u8s8_1x64_n64_pt", K=64, N=64, per_column=False, ties=True, probe=True))
    return C


# ----------------------------------------------------------------------------------------------------------------
# numpy re-implementations: candidate requantization formulas, to say which one onnxruntime follows
# ----------------------------------------------------------------------------------------------------------------

def fma32(a, b, c):
    """float32 fused multiply-add (exact product in float64, one rounding to float32; a*b fits 53 bits here)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(F32)


def rne(v):
    return np.rint(v)


def half_away(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def sat(v, lo, hi):
    return np.clip(v, lo, hi).astype(np.int64)


def conv_formulas(acc, xs, ws, ys, yz, lo, hi):
    shp = (1, -1, 1, 1)
    ws = np.asarray(ws, F32)
    s32 = ((xs * ws).astype(F32) / ys).astype(F32).reshape(shp)
    prod32 = (acc.astype(F32) * s32).astype(F32)
    s64 = (np.float64(xs) * ws.astype(np.float64) / np.float64(ys)).reshape(shp)
    return {
        "f32: rne(f32(acc) * f32(f32(xs*ws)/ys)) + yz": sat(rne(prod32) + yz, lo, hi),
        "f64: rne(acc * (xs*ws/ys)) + yz": sat(rne(acc * s64) + yz, lo, hi),
        "f32 multiply, scale rounded once: f32(acc) * f32(xs*ws/ys)": sat(
            rne((acc.astype(F32) * s64.astype(F32)).astype(F32)) + yz, lo, hi),
        "f32 scale as f32(xs*f32(ws/ys))": sat(
            rne((acc.astype(F32) * (xs * (ws / ys).astype(F32)).astype(F32).reshape(shp)).astype(F32)) + yz, lo, hi),
        "f64 multiply by the f32 scale: rne(acc * f32(f32(xs*ws)/ys))": sat(
            rne(acc * s32.astype(np.float64)) + yz, lo, hi),
        "f32, ties away from zero": sat(half_away(prod32) + yz, lo, hi),
    }


def add_formulas(A, B, az, bz, asc, bsc, csc, cz, lo, hi, path):
    """QLinearAdd. MLAS gets the span operand first (P) and the other (Q; one value per span unless path 'vv'):
    for path 'sa' (A broadcast, B a span) onnxruntime swaps them."""
    (P, pz, ps), (Q, qz, qs) = ((B, bz, bsc), (A, az, asc)) if path == "sa" else ((A, az, asc), (B, bz, bsc))
    rP, rQ = F32(ps / csc), F32(qs / csc)
    Pf, Qf = P.astype(F32), Q.astype(F32)
    tP, tQ = F32(rP * F32(pz)), F32(rQ * F32(qz))
    C = {}
    for tag, fixed in (("fixed = zc - (rP*zp + rQ*zq)", F32(F32(cz) - F32(tP + tQ))),
                       ("fixed = zc - fma(rP, zp, rQ*zq)", F32(F32(cz) - fma32(rP, F32(pz), tQ))),
                       ("fixed = zc - fma(rQ, zq, rP*zp)", F32(F32(cz) - fma32(rQ, F32(qz), tP)))):
        if path == "vv":
            v = fma32(Pf, rP, fma32(Qf, rQ, fixed))
        else:
            v = fma32(Pf, rP, (fixed + (Qf * rQ).astype(F32)).astype(F32))
        C[f"AVX2 FMA: {tag}; rne(fma(p, rP, fma(q, rQ, fixed)))"] = sat(rne(v), lo, hi)
    fixed = F32(F32(cz) - F32(tP + tQ))
    if path == "vv":
        v = ((fixed + (Pf * rP).astype(F32)).astype(F32) + (Qf * rQ).astype(F32)).astype(F32)
    else:
        v = ((fixed + (Qf * rQ).astype(F32)).astype(F32) + (Pf * rP).astype(F32)).astype(F32)
    C["SSE2 (no FMA): rne((fixed + p*rP) + q*rQ)"] = sat(rne(v), lo, hi)
    C["scalar C++: rne(f32((sa*(a-za) + sb*(b-zb))/sc)) + zc"] = sat(rne(
        (((asc * (A - az).astype(F32)).astype(F32) + (bsc * (B - bz).astype(F32)).astype(F32)).astype(F32)
         / csc).astype(F32)) + cz, lo, hi)
    v64 = (float(asc) * (A - az) + float(bsc) * (B - bz)) / float(csc)
    C["f64: rne((sa*(a-za) + sb*(b-zb))/sc) + zc"] = sat(rne(v64) + cz, lo, hi)
    C["f64, ties away from zero"] = sat(half_away(v64) + cz, lo, hi)
    return C


def mul_formulas(A, B, az, bz, asc, bsc, csc, cz, lo, hi, path=None):
    prod = (A - az) * (B - bz)
    p = prod.astype(F32)
    r = F32(F32(asc * bsc) / csc)
    v64 = prod * (float(asc) * float(bsc) / float(csc))
    return {
        "SSE2: rne(f32(f32(prod)*r) + f32(zc)), r = f32(f32(sa*sb)/sc)": sat(
            rne(((p * r).astype(F32) + F32(cz)).astype(F32)), lo, hi),
        "rne(f32(prod)*r) + zc": sat(rne((p * r).astype(F32)) + cz, lo, hi),
        "f64: rne(prod*sa*sb/sc) + zc": sat(rne(v64) + cz, lo, hi),
        "f64, ties away from zero": sat(half_away(v64) + cz, lo, hi),
    }


def gap_formulas(acc, xs, ys, n, yz, lo, hi):
    xs, ys = np.asarray(xs, F32), np.asarray(ys, F32)
    s = (xs / (ys * F32(n)).astype(F32)).astype(F32)
    v32 = (acc.astype(F32) * s).astype(F32)
    return {
        "rne(f32(acc) * f32(xs/(ys*n))) + yz": sat(rne(v32) + yz, lo, hi),
        "f64: rne(acc*xs/(ys*n)) + yz": sat(rne(acc * (xs.astype(np.float64) / (ys.astype(np.float64) * n))) + yz,
                                            lo, hi),
        "f32 mean first: rne(f32(f32(acc)/n) * f32(xs/ys)) + yz": sat(
            rne(((acc.astype(F32) / F32(n)).astype(F32) * (xs / ys).astype(F32)).astype(F32)) + yz, lo, hi),
        "ties away from zero": sat(half_away(v32) + yz, lo, hi),
    }


def qgemm_formulas(acc, asc, bsc, ysc, yz, lo, hi, alpha=1.0, bias=None):
    """QGemm with y_scale/y_zero_point: acc [.., N] = exact integer sum + bias; bsc per column ([N]) or [1]."""
    bs = np.asarray(bsc, F32)
    al = F32(alpha)
    s32 = ((F32(al * asc) * bs).astype(F32) / ysc).astype(F32)
    prod32 = (acc.astype(F32) * s32).astype(F32)
    s64 = np.float64(al) * np.float64(asc) * bs.astype(np.float64) / np.float64(ysc)
    C = {
        "u8/s8 out: rne(f32(acc) * f32(f32(f32(alpha*as)*bs)/ys)) + yz": sat(rne(prod32) + yz, lo, hi),
        "u8/s8 out, f64: rne(acc * (alpha*as*bs/ys)) + yz": sat(rne(acc * s64) + yz, lo, hi),
        "u8/s8 out, scale rounded once: f32(acc) * f32(alpha*as*bs/ys)": sat(
            rne((acc.astype(F32) * s64.astype(F32)).astype(F32)) + yz, lo, hi),
        "u8/s8 out, scale as f32(as*f32(bs/ys))": sat(
            rne((acc.astype(F32) * (F32(al * asc) * (bs / ysc).astype(F32)).astype(F32)).astype(F32)) + yz, lo, hi),
        "u8/s8 out, f64 multiply by the f32 scale": sat(rne(acc * s32.astype(np.float64)) + yz, lo, hi),
        "u8/s8 out, f32, ties away from zero": sat(half_away(prod32) + yz, lo, hi),
    }
    if alpha != 1.0:  # where alpha goes (they coincide for alpha = 1)
        s_last = ((((F32(asc) * bs).astype(F32) / ysc).astype(F32)) * al).astype(F32)
        s_onb = ((F32(asc) * (al * bs).astype(F32)).astype(F32) / ysc).astype(F32)
        s_noal = (((F32(asc) * bs).astype(F32) / ysc).astype(F32))
        C["u8/s8 out, alpha last in the scale: f32(f32(f32(as*bs)/ys)*alpha)"] = sat(
            rne((acc.astype(F32) * s_last).astype(F32)) + yz, lo, hi)
        C["u8/s8 out, alpha on b: f32(f32(as*f32(alpha*bs))/ys)"] = sat(
            rne((acc.astype(F32) * s_onb).astype(F32)) + yz, lo, hi)
        C["u8/s8 out, alpha after the product: f32(f32(f32(acc)*f32(f32(as*bs)/ys))*alpha)"] = sat(
            rne(((acc.astype(F32) * s_noal).astype(F32) * al).astype(F32)) + yz, lo, hi)
    if bias is not None:
        Cb = np.asarray(bias, np.int64)
        C["u8/s8 out, bias added in float: rne(f32(f32(acc-C)*s) + f32(f32(C)*s)) + yz"] = sat(rne(
            ((acc - Cb).astype(F32) * s32).astype(F32) + (Cb.astype(F32) * s32).astype(F32)) + yz, lo, hi)
    return C


def qgemm_f32_formulas(acc, asc, bsc, alpha=1.0, bias=None):
    """QGemm without y_scale/y_zero_point: float32 output."""
    bs = np.asarray(bsc, F32)
    al = F32(alpha)
    s32 = (F32(al * asc) * bs).astype(F32)
    C = {
        "f32 out: f32(acc) * f32(f32(alpha*as)*bs)": (acc.astype(F32) * s32).astype(F32),
        "f32 out, f64: f32(acc*alpha*as*bs)": (acc * (np.float64(al) * np.float64(asc) * bs.astype(np.float64))
                                               ).astype(F32),
        "f32 out, dequantize order: f32(f32(f32(acc)*as)*bs)": (
            (acc.astype(F32) * F32(al * asc)).astype(F32) * bs).astype(F32),
    }
    if alpha != 1.0:  # where alpha goes (they coincide for alpha = 1)
        C["f32 out, alpha on b: f32(acc) * f32(as*f32(alpha*bs))"] = (
            acc.astype(F32) * (F32(asc) * (al * bs).astype(F32)).astype(F32)).astype(F32)
        C["f32 out, alpha last: f32(f32(f32(acc)*f32(as*bs))*alpha)"] = (
            (acc.astype(F32) * (F32(asc) * bs).astype(F32)).astype(F32) * al).astype(F32)
    if bias is not None:
        Cb = np.asarray(bias, np.int64)
        C["f32 out, bias added in float: f32(f32(acc-C)*s) + f32(f32(C)*s)"] = (
            ((acc - Cb).astype(F32) * s32).astype(F32) + (Cb.astype(F32) * s32).astype(F32)).astype(F32)
    return C


def best_row(C, first=None):
    """Formulas evaluated with one draw of parameters per row: the row telling the most formula pairs apart (then
    with the most disagreeing elements; rows telling apart the formulas numbered `first` come first), and that
    row's mask of elements where not all formulas agree."""
    vals = list(C.values())
    pairs = np.zeros(vals[0].shape[0], int)
    mask = np.zeros(vals[0].shape, bool)
    for i in range(len(vals)):
        mask |= vals[i] != vals[0]
        for j in range(i + 1, len(vals)):
            pairs += (vals[i] != vals[j]).any(axis=1)
    key = np.zeros(len(pairs), bool) if first is None else (vals[first[0]] != vals[first[1]]).any(axis=1)
    r = int(np.lexsort((-mask.sum(axis=1), -pairs, ~key))[0])
    return r, mask[r]


def disagreements(C):
    """(number of formula pairs told apart, mask of elements where not all formulas agree)."""
    vals = list(C.values())
    pairs = sum(bool((vals[i] != vals[j]).any()) for i in range(len(vals)) for j in range(i + 1, len(vals)))
    mask = np.zeros(vals[0].shape, bool)
    for v in vals[1:]:
        mask |= v != vals[0]
    return pairs, mask


def candidates(ref):
    k = ref["kind"]
    lo, hi = ref["lo"], ref["hi"]
    C = {}
    if k == "conv":
        C.update(conv_formulas(ref["acc"], ref["xs"], ref["ws"], ref["ys"], ref["yz"], lo, hi))
    elif k in ("QLinearAdd", "QLinearMul"):
        A, B = np.broadcast_arrays(ref["a"].astype(np.int64), ref["b"].astype(np.int64))
        path = ref.get("path") or ("vv" if ref["a"].size == ref["b"].size else
                                   "sb" if ref["b"].size < ref["a"].size else "sa")
        f = add_formulas if k == "QLinearAdd" else mul_formulas
        C.update(f(A, B, ref["az"], ref["bz"], ref["asc"], ref["bsc"], ref["csc"], ref["cz"], lo, hi, path))
    elif k == "qgemm":
        C.update(qgemm_formulas(ref["acc"], ref["asc"], ref["bsc"], ref["ysc"], ref["yz"], lo, hi, ref["alpha"],
                                ref["bias"]))
    elif k == "qgemm_f32":
        C.update(qgemm_f32_formulas(ref["acc"], ref["asc"], ref["bsc"], ref["alpha"], ref["bias"]))
    elif k == "concat":
        outs32, outs64 = [], []
        for x, (s, z) in zip(ref["xs"], ref["params"]):
            xi = x.astype(np.int64)
            if s == ref["ys"] and z == ref["yz"]:
                outs32.append(xi)
                outs64.append(xi)
                continue
            dq = (s * (xi - z).astype(F32)).astype(F32)
            outs32.append(sat(rne((dq / ref["ys"]).astype(F32)) + ref["yz"], lo, hi))
            outs64.append(sat(rne((xi - z) * float(s) / float(ref["ys"])) + ref["yz"], lo, hi))
        C["table: rne(f32(f32(xs*(x-xz)) / ys)) + yz"] = np.concatenate(outs32, ref["axis"])
        C["f64: rne((x-xz)*xs/ys) + yz"] = np.concatenate(outs64, ref["axis"])
    elif k == "gap":
        x, xz, n = ref["x"].astype(np.int64), ref["xz"], ref["n"]
        acc = x.sum(axis=ref["axes"], keepdims=True) - xz * n
        C.update(gap_formulas(acc, ref["xs"], ref["ys"], n, ref["yz"], lo, hi))
    elif k == "qsoftmax":
        C["table: f64 ln of the bound, sums in f32, rne(f32(e*floor(1/ys))/sum) + yz"] = qsoftmax_ref(ref, False)
        C["table: f32 ln of the bound, sums in f32, rne(f32(e*floor(1/ys))/sum) + yz"] = qsoftmax_ref(ref, True)
    elif k == "qsilu":
        x = ref["x"].astype(np.int64)
        dq = (ref["xs"] * (x - ref["xz"]).astype(F32)).astype(F32)
        sig = sat(rne((mlas_logistic(dq, True) / ref["ss"]).astype(F32)) + ref["sz"], lo, hi)
        A, B = (x, sig) if ref["sigmoid_second"] else (sig, x)
        az, bz, asc, bsc = ((ref["xz"], ref["sz"], ref["xs"], ref["ss"]) if ref["sigmoid_second"]
                            else (ref["sz"], ref["xz"], ref["ss"], ref["xs"]))
        for formula, v in mul_formulas(A, B, az, bz, asc, bsc, ref["ys"], ref["yz"], lo, hi).items():
            C["sigmoid table (FMA), then QLinearMul " + formula] = v
    elif k == "softmax":
        x = ref["x"].astype(np.float64)
        e = np.exp(x - x.max(axis=ref["axis"], keepdims=True))
        C["f64 softmax rounded to f32"] = (e / e.sum(axis=ref["axis"], keepdims=True)).astype(F32)
    elif k in ("QLinearSigmoid", "QLinearLeakyRelu"):
        x = ref["x"].astype(np.int64)
        dq = (ref["xs"] * (x - ref["xz"]).astype(F32)).astype(F32)
        dq64 = (x - ref["xz"]) * np.asarray(ref["xs"], np.float64)
        if k == "QLinearLeakyRelu":
            al = F32(ref["alpha"])
            f = np.where(dq >= 0, dq, (al * dq).astype(F32)).astype(F32)
            f64 = np.where(dq64 >= 0, dq64, ref["alpha"] * dq64)
            C["table: rne(f32(f(dq)/ys)) + yz, f32"] = sat(rne((f / ref["ys"]).astype(F32)) + ref["yz"], lo, hi)
        else:
            for tag, fused in (("Eigen rational, FMA", True), ("Eigen rational, no FMA", False)):
                f = mlas_logistic(dq, fused)
                C[f"table: rne(f32({tag}(dq)/ys)) + yz"] = sat(rne((f / ref["ys"]).astype(F32)) + ref["yz"], lo, hi)
            f64 = 1.0 / (1.0 + np.exp(-dq64))
            C["exact sigmoid of f32 dq, then rne(/ys) + yz"] = sat(
                rne(((1.0 / (1.0 + np.exp(-dq.astype(np.float64)))).astype(F32) / ref["ys"]).astype(F32))
                + ref["yz"], lo, hi)
        C["f64: rne(f((x-xz)*xs)/ys) + yz"] = sat(rne(f64 / np.asarray(ref["ys"], np.float64)) + ref["yz"], lo, hi)
    return C


LOGISTIC = dict(a9=4.37031012579801e-11, a7=1.15627324459942e-07, a5=6.08574864600143e-05,
                a3=8.51377133304701e-03, a1=2.48287947061529e-01, b10=6.10247389755681e-13,
                b8=5.76102136993427e-09, b6=6.29106785017040e-06, b4=1.70198817374094e-03,
                b2=1.16817656904453e-01, b0=9.93151921023180e-01)


def mlas_logistic(v, fused):
    """MlasComputeLogistic (Eigen's rational approximation) in float32: fused = MlasLogisticKernelFma3 (fused
    multiply-adds), else the generic kernel (separate multiply and add)."""
    c = {k: F32(x) for k, x in LOGISTIC.items()}
    v = np.clip(v.astype(F32), F32(-18), F32(18))
    v2 = (v * v).astype(F32)

    def ma(x, y, z):
        return fma32(x, y, z) if fused else ((x * y).astype(F32) + z).astype(F32)
    p = ma(v2, c["a9"], c["a7"])
    for k in ("a5", "a3", "a1"):
        p = ma(p, v2, c[k])
    p = (p * v).astype(F32)
    q = ma(v2, c["b10"], c["b8"])
    for k in ("b6", "b4", "b2", "b0"):
        q = ma(q, v2, c[k])
    v = ((p / q).astype(F32) + F32(0.5)).astype(F32)
    # the FMA3 kernel (x86-64 AVX2) clamps only at 0, the generic one to [0, 1]
    return np.maximum(v, F32(0)) if fused else np.clip(v, F32(0), F32(1))


# ----------------------------------------------------------------------------------------------------------------

def toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_case(case, root):
    d = os.path.join(root, case["name"])
    model = case["model"]
    sess = session(model.SerializeToString())
    feeds = {i.name: x for i, x in zip(sess.get_inputs(), case["inputs"])}
    y = sess.run(None, feeds)[0]
    # the graph output gets the shape onnxruntime produced (the checker wants one); check() re-runs the saved model
    out = model.graph.output[0]
    out.CopyFrom(helper.make_tensor_value_info(out.name, out.type.tensor_type.elem_type, list(y.shape)))
    mb = model.SerializeToString()
    os.makedirs(d)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(mb)
    for i, x in enumerate(case["inputs"]):
        with open(os.path.join(d, f"input{i}.bin"), "wb") as f:
            f.write(np.ascontiguousarray(x).tobytes())
    with open(os.path.join(d, "output.bin"), "wb") as f:
        f.write(np.ascontiguousarray(y).tobytes())
    ins = ", ".join(f'{{ dtype = "{dt_name(x)}", shape = {list(map(int, x.shape))} }}' for x in case["inputs"])
    with open(os.path.join(d, "case.toml"), "w") as f:
        f.write(f"op = {toml_str(case['op'])}\n")
        f.write(f"description = {toml_str(case['description'])}\n")
        f.write(f"inputs = [ {ins} ]\n")
        f.write(f'output = {{ dtype = "{dt_name(y)}", shape = {list(map(int, y.shape))} }}\n')
    return y


def read_case(d):
    import tomllib
    with open(os.path.join(d, "case.toml"), "rb") as f:
        meta = tomllib.load(f)
    npd = {"u8": np.uint8, "i8": np.int8, "f32": np.float32}
    ins = []
    for i, spec in enumerate(meta["inputs"]):
        raw = np.fromfile(os.path.join(d, f"input{i}.bin"), dtype=npd[spec["dtype"]])
        ins.append(raw.reshape(spec["shape"]))
    out = np.fromfile(os.path.join(d, "output.bin"), dtype=npd[meta["output"]["dtype"]])
    return meta, ins, out.reshape(meta["output"]["shape"])


def check(root):
    """Re-load every model from disk, run onnxruntime on the input files, require output.bin byte for byte."""
    counts, bad = {}, []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        meta, ins, want = read_case(d)
        with open(os.path.join(d, "model.onnx"), "rb") as f:
            mb = f.read()
        m = onnx.load_from_string(mb)
        onnx.checker.check_model(m, full_check=m.graph.node[0].domain == "")
        sess = session(mb)
        got = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), ins)})[0]
        if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
            bad.append(name)
        counts[meta["op"]] = counts.get(meta["op"], 0) + 1
    for op, n in sorted(counts.items()):
        print(f"check: {op:26s} {n:3d} cases, onnx checker passes, onnxruntime reproduces output.bin")
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(root) for f in fs)
    print(f"check: {sum(counts.values())} cases, {size} bytes ({size / 1e6:.2f} MB) under {os.path.relpath(root, ROOT)}")
    if bad:
        sys.exit(f"check: onnxruntime output differs from output.bin in {bad}")


EXACT = {  # the formula each op's fixtures must follow exactly (what onnxruntime 1.32 does on x86-64 AVX2)
    "conv": "f32: rne(f32(acc) * f32(f32(xs*ws)/ys)) + yz",
    "QLinearAdd": "AVX2 FMA: fixed = zc - fma(rP, zp, rQ*zq); rne(fma(p, rP, fma(q, rQ, fixed)))",
    "QLinearMul": "SSE2: rne(f32(f32(prod)*r) + f32(zc)), r = f32(f32(sa*sb)/sc)",
    "concat": "table: rne(f32(f32(xs*(x-xz)) / ys)) + yz",
    "gap": "rne(f32(acc) * f32(xs/(ys*n))) + yz",
    "QLinearSigmoid": "table: rne(f32(Eigen rational, FMA(dq)/ys)) + yz",
    "QLinearLeakyRelu": "table: rne(f32(f(dq)/ys)) + yz, f32",
    "qgemm": "u8/s8 out: rne(f32(acc) * f32(f32(f32(alpha*as)*bs)/ys)) + yz",
    "qgemm_f32": "f32 out: f32(acc) * f32(f32(alpha*as)*bs)",
    "qsoftmax": "table: f64 ln of the bound, sums in f32, rne(f32(e*floor(1/ys))/sum) + yz",
    "qsilu": "sigmoid table (FMA), then QLinearMul SSE2: rne(f32(f32(prod)*r) + f32(zc)), r = f32(f32(sa*sb)/sc)",
}


def probe_conv_types():
    """Which (x, w, y) element types onnxruntime's QLinearConv runs: [(x, w, y, None or the error)]."""
    out = []
    for x in ("u8", "i8"):
        for w in ("u8", "i8"):
            for y in ("u8", "i8"):
                inits = [("x_scale", f32(0.02)), ("x_zero_point", scalar(0, DT[x][0])),
                         ("w", np.ones((2, 2, 1, 1), DT[w][0])), ("w_scale", f32(0.01)),
                         ("w_zero_point", scalar(0, DT[w][0])), ("y_scale", f32(0.1)),
                         ("y_zero_point", scalar(0, DT[y][0]))]
                node = helper.make_node("QLinearConv", ["x"] + [n for n, _ in inits], ["y"])
                xv = np.ones((1, 2, 3, 3), DT[x][0])
                try:
                    session(make_model(node, [("x", xv)], "y", y, inits).SerializeToString()).run(None, {"x": xv})
                    out.append((x, w, y, None))
                except Exception as e:
                    out.append((x, w, y, str(e).strip().splitlines()[0]))
    return out


def probe_qgemm_types():
    """Which (A, B, y) element types onnxruntime's QGemm runs (y f32: no y_scale/y_zero_point)."""
    out = []
    for a in ("u8", "i8"):
        for b in ("u8", "i8"):
            for y in ("u8", "i8", "f32"):
                inits = [("a_scale", f32(0.02)), ("a_zero_point", scalar(0, DT[a][0])),
                         ("b", np.ones((3, 4), DT[b][0])), ("b_scale", f32(0.01)),
                         ("b_zero_point", scalar(0, DT[b][0]))]
                names = ["a"] + [n for n, _ in inits]
                if y != "f32":
                    inits += [("y_scale", f32(0.1)), ("y_zero_point", scalar(0, DT[y][0]))]
                    names += ["", "y_scale", "y_zero_point"]
                node = helper.make_node("QGemm", names, ["y"], domain="com.microsoft", transB=1)
                av = np.ones((1, 4), DT[a][0])
                try:
                    session(make_model(node, [("a", av)], "y", y, inits, ms=True).SerializeToString()).run(
                        None, {"a": av})
                    out.append((a, b, y, None))
                except Exception as e:
                    out.append((a, b, y, str(e).strip().splitlines()[0]))
    return out


QGEMM_ALPHAS = (0.7, 1.3, 0.37)


def probe_qgemm_alpha():
    """QGemm with alpha != 1 (not written as fixtures): per-column u8 x s8 probe cases, u8 and f32 output, run in
    memory. Returns [(case name, {formula: elements differing})]; the EXACT formula must give 0."""
    res = []
    for alpha in QGEMM_ALPHAS:
        for out in ("q", "f32"):
            c = qgemm_case(f"qgemm_alpha{alpha:g}_probe_u8s8_1x64_n128_pc_{out}", K=64, N=128, out=out, probe=True,
                           alpha=alpha)
            y = session(c["model"].SerializeToString()).run(None, {"a": c["inputs"][0]})[0]
            d = {}
            for formula, v in candidates(c["ref"]).items():
                if y.dtype == F32:
                    d[formula] = int((np.ascontiguousarray(v, F32).view(np.int32) != y.view(np.int32)).sum())
                else:
                    d[formula] = int((v != y.astype(np.int64)).sum())
            res.append((c["name"], c["ref"]["kind"], d))
    return res


def probe_qgemm_saturation():
    """u8 x s8 QGemm with full-range A and B (not written): [(name, kind, elements differing from the EXACT formula
    on the exact integer product, elements)], to show why the u8 x s8 fixtures keep |B| <= 64 (or A <= 127)."""
    res = []
    for a, out in (("u8", "q"), ("u8", "f32"), ("i8", "q"), ("i8", "f32")):
        c = qgemm_case(f"qgemm_saturation_{a}_1x576_n100_pc_{out}", K=576, N=100, a=a, out=out, regime="full")
        y = session(c["model"].SerializeToString()).run(None, {"a": c["inputs"][0]})[0]
        v = candidates(c["ref"])[EXACT[c["ref"]["kind"]]]
        if y.dtype == F32:
            d = int((np.ascontiguousarray(v, F32).view(np.int32) != y.view(np.int32)).sum())
        else:
            d = int((v != y.astype(np.int64)).sum())
        res.append((a, out, d, y.size))
    return res


def md(s):
    return s.replace("|", "\\|")


README_HEAD = """# Reference fixtures for bedside's int8 ops

Made by `models/factory/ops_fixtures.py` with onnxruntime 1.32.0 (onnx 1.23.2, numpy 2.4.6) on x86-64 with AVX2
and FMA, without AVX-512 or VNNI. Do not edit by hand; to regenerate (rewrites the same bytes; needs only onnx,
onnxruntime and numpy, no torch):

    python3 -m venv /tmp/venv-ort
    /tmp/venv-ort/bin/pip install onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6 protobuf==7.36.2
    /tmp/venv-ort/bin/python models/factory/ops_fixtures.py          # generate, check, rounding report
    /tmp/venv-ort/bin/python models/factory/ops_fixtures.py check    # only: onnxruntime reproduces output.bin

## Layout

One directory per case:

- `model.onnx`: one node (opset 21 for the default domain; `com.microsoft` opset 1 for the Microsoft ops, IR
  version 10). The graph inputs are the quantized activations; every scale, zero point, weight and bias is an
  initializer (so tract sees them as constants). Per-tensor parameters are 0-d tensors, except in the cases whose
  description says "params as [1] tensors".
- `input0.bin`, `input1.bin`, ...: the graph inputs in graph order, raw bytes, C order (NCHW unless the case says
  channels_last).
- `output.bin`: onnxruntime's output (CPUExecutionProvider, 1 intra-op thread, ORT_DISABLE_ALL), raw bytes, C order.
- `case.toml`: `op` (the node's op_type), `description`, `inputs = [ { dtype, shape }, ... ]`, `output = { dtype,
  shape }`; dtype is `"u8"` or `"i8"`, and `"f32"` (float32, little-endian) for the output of the QGemm cases
  without y_scale/y_zero_point (names ending in `_f32`).

Inputs are seeded random (each case has its own generator, seeded by the CRC-32 of its name). Besides checking that
onnxruntime reproduces every `output.bin` from the files on disk, the script checks every output against numpy:
integer accumulators computed exactly, then the requantization formula of the table below; it fails if any
fixture differs from it.

## Input ordering

| op | domain | inputs (after the node's own order) | attributes used |
|---|---|---|---|
| QLinearConv | default | x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, [B (int32)] | kernel_shape, strides, dilations, group, pads or auto_pad |
| QLinearAdd | com.microsoft | A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point | - |
| QLinearMul | com.microsoft | A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point | - |
| QLinearConcat | com.microsoft | Y_scale, Y_zero_point, then per input: X_i, X_i_scale, X_i_zero_point | axis |
| QLinearGlobalAveragePool | com.microsoft | X, x_scale, x_zero_point, y_scale, y_zero_point | channels_last |
| QLinearSigmoid | com.microsoft | X, X_scale, X_zero_point, Y_scale, Y_zero_point | - |
| QLinearLeakyRelu | com.microsoft | X, X_scale, X_zero_point, Y_scale, Y_zero_point | alpha |
| QGemm | com.microsoft | A, a_scale, a_zero_point, B, b_scale, b_zero_point, [C (int32)], [y_scale, y_zero_point] | transA (0), transB, alpha (1) |
| QLinearSoftmax | com.microsoft | X, X_scale, X_zero_point, Y_scale, Y_zero_point | axis, opset |
| Softmax (f32) | default | x | axis |

QLinearConv: w_scale and w_zero_point are per tensor (0-d or [1]) or per output channel ([co]); y has the type of x.
QLinearAdd/QLinearMul broadcast numpy-style ([1,C,1,1] operands, a [1] operand, either side).
QGemm: A [M, K] (M = 1 or 2) is the only graph input (input0.bin); B is an s8 initializer, [N, K] with transB=1
(what onnxruntime's quantizer emits) or [K, N] with transB=0; b_scale and b_zero_point (always 0) are 0-d or per
column ([N]); C is int32 [N] (one case has none: its input name is empty, ""); with y_scale and y_zero_point y has
A's type, without them (the `_f32` cases: the node has 7 inputs, or 6 without C) y is float32. y is [M, N].

## QLinearConv and u8 x s8 on x86 (VPMADDUBSW)

onnxruntime's u8 x s8 GEMM on x86-64 without VNNI (AVX2, AVX-512 without VNNI) multiplies with VPMADDUBSW, which
adds two adjacent u8*s8 products into a saturating int16: with x = 255 and w = 127 (or -128) a pair gives 32767
(-32768) instead of 64770 (-65280), and the output is not the exact convolution. It also happens with grouped
convolutions and with the channel-multiplier-2 depthwise convolution (both go through the GEMM); the plain
depthwise path (group = ci = co) and the u8 x u8 and s8 x s8 paths are exact. So the u8 x s8 cases other than plain
depthwise keep the raw weights within [-64, 64] (regime w7, like onnxruntime's `reduce_range`), or the activations
within [0, 127] (regime x7, full-range weights): 2 * 255 * 64 and 2 * 127 * 128 stay below 32767. Every fixture is
the exact integer result, requantized as below; the Rust side must not emulate the saturation.

"""


def write_readme(written, refused, stats, conv_types, qgemm_types, qgemm_alpha, qgemm_sat):
    counts = {}
    for c in written:
        counts[c["op"]] = counts.get(c["op"], 0) + 1
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    L = [README_HEAD]
    (_, _, dq, nq), (_, _, df, nf) = qgemm_sat[0], qgemm_sat[1]
    (_, _, sq, _), (_, _, sf, _) = qgemm_sat[2], qgemm_sat[3]
    L.append(f"QGemm with u8 A and s8 B goes through the same GEMM and saturates the same way: a 1 x 576 by 576 x 100 "
             f"head with full-range A and B (made in memory, not written) differs from the exact product in {dq} of "
             f"{nq} u8 outputs and {df} of {nf} float outputs (the s8 x s8 equivalents: {sq} and {sf}). So the u8 x s8 "
             "QGemm cases are regime w7 (one x7), the s8 x s8 ones use full-range weights. A real model's full-range "
             "u8 x s8 head can therefore differ, on onnxruntime x86 without VNNI, from the exact result the fixtures "
             "hold.\n\n")
    L.append("## Requantization (what matched bit for bit)\n\n"
             "Notation: f32(...) is a float32 result (every operation rounded to float32), fma a float32 fused "
             "multiply-add, rne round half to even (MLAS converts with cvtps2dq), sat the clamp to the output "
             "type. The table counts the cases whose output equals each candidate formula exactly; the first "
             "formula of each op (for QGemm: of each output kind, u8/s8 out and f32 out) is the one every case "
             "follows (checked), the others are there to show the cases tell them apart (the `probe` and `ties` "
             "cases are built so that they do).\n\n")
    L.append("| op | cases equal | elements differing | formula |\n|---|---|---|---|\n")
    for (op, formula), (ok, n, diff) in stats.items():
        L.append(f"| {op} | {ok}/{n} | {diff} | {md(formula)} |\n")
    L.append("""
In words (float32 throughout, rne = round half to even, then saturate to the output type):

- QLinearConv: acc = sum((x - xz) * (w - wz[c])) + B[c], exact int32. scale[c] = f32(f32(x_scale * w_scale[c]) /
  y_scale); y = sat(rne(f32(f32(acc) * scale[c])) + yz). Multiplying in float64, or forming the scale in another
  order, differs on the probe cases.
- QLinearAdd (MlasQLinearAddKernelAvx2Helper; P is the operand that is a span, Q the other; for an A broadcast per
  channel while B is full, onnxruntime swaps them so P = B): rP = f32(sP / sC), rQ = f32(sQ / sC);
  fixed = f32(f32(zC) - fma(rP, zP, f32(rQ * zQ))) (as if the compiler contracted rP*zP + rQ*zQ into one FMA:
  the other two contractions and no contraction each differ on a probe case);
  both full: y = sat(rne(fma(p, rP, fma(q, rQ, fixed)))); Q one value per span (a [1,C,1,1] or [1] operand):
  fixed' = f32(fixed + f32(q * rQ)), y = sat(rne(fma(p, rP, fixed'))). Note zC is inside the float sum.
- QLinearMul (SSE2 kernel): r = f32(f32(sA * sB) / sC); prod = (a - zA) * (b - zB) exact int32;
  y = sat(rne(f32(f32(f32(prod) * r) + f32(zC)))) - zC added in float before rounding, which differs from adding it
  after rounding.
- QLinearConcat: an input with the output's scale and zero point is copied; otherwise a 256-entry table per input,
  y = sat(rne(f32(f32(x_scale * (x - xz)) / y_scale)) + yz) (MlasQuantizeLinear divides).
- QLinearGlobalAveragePool: acc = sum(x) - xz * n exact (n = H*W); s = f32(x_scale / f32(y_scale * f32(n)));
  y = sat(rne(f32(f32(acc) * s)) + yz). onnxruntime throws unless 2^-32 <= s < 256.
- QLinearSigmoid: 256-entry table; dq = f32(x_scale * (x - xz)); f = MlasLogisticKernelFma3 (Eigen's rational
  approximation: v clamped to [-18, 18], v2 = v*v, p = fma chain of alpha_9..alpha_1 in v2, p = p*v, q = fma chain
  of beta_10..beta_0, f = max(p/q + 0.5, 0)); y = sat(rne(f32(f / y_scale)) + yz). An exact sigmoid differs.
- QLinearLeakyRelu: table; f = dq >= 0 ? dq : f32(alpha * dq) with alpha = f32(0.1); y = sat(rne(f32(f / y_scale))
  + yz).
- QLinearSigmoid then QLinearMul of its input and its output (SiLU, the `silu_*` cases): onnxruntime runs the two
  ops as above, through an intermediate tensor. The result is a function of one input byte, so bedside folds the
  pair into one 256-entry table built with exactly those two steps; the cases check that it is the same.
- QGemm (MlasGemm with an output processor; B prepacked): acc[m, n] = C[n] + sum_k (A[m, k] - a_zp) * B[k, n]
  (b_zp = 0 here), exact int32 - the bias is added in the integer accumulator, not in float. alpha enters the scale
  first: with y_scale/y_zero_point, scale[n] = f32(f32(f32(alpha * a_scale) * b_scale[n]) / y_scale)
  (ComputeOutputScale: alpha_ * a_scale * b_scale[n], then /= y_scale; for alpha = 1 it is QLinearConv's scale) and
  y = sat(rne(f32(f32(acc) * scale[n])) + y_zp) (MlasRequantizeOutput: clamp to [lo - zp, hi - zp] in float,
  cvtps2dq, add zp: the same thing). Without them y is float32: y = f32(f32(acc) * f32(f32(alpha * a_scale) *
  b_scale[n])) (MLAS_QGEMM_SCALE_BIAS_OUTPUT_PROCESSOR, ZeroMode, no float bias); f32(acc) rounds to nearest even
  above 2^24. b_scale 0-d: the same scale for every n.

These are onnxruntime's x86-64 AVX2/FMA3 paths. Other builds run other MLAS kernels (on ARM64, for one,
QLinearAdd is done in fixed point: integer multipliers and a rounding right shift; the logistic uses the generic
kernel), so onnxruntime on a board need not match these files bit for bit; the files are the reference.

""")
    L.append("QGemm with alpha != 1 (per-column u8 x s8 probe cases made in memory, not written; elements "
             "differing from onnxruntime out of 128 per case):\n\n| case | formula | elements differing |\n"
             "|---|---|---|\n")
    for name, _, d in qgemm_alpha:
        for formula, n in d.items():
            L.append(f"| {name} | {md(formula)} | {n} |\n")
    L.append("\n")
    L.append("## What onnxruntime 1.32 refused\n\n")
    L.append("QLinearConv element types (x, w, y) tried on a tiny model:\n\n")
    for x, w, y, err in conv_types:
        wn = "s8" if w == "i8" else "u8"
        L.append(f"- x {x}, w {wn}, y {y}: " + ("runs" if err is None else f"refused ({err})") + "\n")
    L.append("\nQGemm element types (A, B, y; y f32 = no y_scale/y_zero_point) tried on a tiny model:\n\n")
    for a, b, y, err in qgemm_types:
        L.append(f"- A {a}, B {b}, y {y}: " + ("runs" if err is None else f"refused ({err})") + "\n")
    L.append("\nCases of the generator's list that onnxruntime refused (no fixture):\n\n")
    for name, op, desc, err in refused:
        L.append(f"- {name}: {op} {desc}: {err}\n")
    L.append("\nAccepted (and in the fixtures): per-channel weight zero points that differ between channels "
             "(u8 and s8 weights, GEMM and depthwise paths, exact), nonzero per-tensor s8 weight zero points, "
             "[1]-shaped QLinearConv parameters, a [1] operand to QLinearAdd/QLinearMul, s8 variants of every "
             "Microsoft op, QLinearGlobalAveragePool with channels_last=1; QGemm with an initializer B (transB 1 and "
             "0), per-column and per-tensor b_scale, no C, float output (no y_scale/y_zero_point), s8 A (with s8 B "
             "only), M = 2.\n\n")
    L.append(f"## Cases ({len(written)}; {size} bytes of case files)\n\n")
    for op, n in sorted(counts.items()):
        L.append(f"- {op}: {n}\n")
    L.append("\nNames: conv = groups 1 (or grouped: g2, g3, g4), dw = depthwise (group = ci = co), dwm2 = depthwise "
             "with channel multiplier 2, real = realistic sizes; u8s8 = x u8 / w s8 / y u8, s8s8, u8u8; pc / pt = "
             "per-channel / per-tensor weight quantization; probe = parameters chosen where candidate rounding "
             "formulas disagree; ties = power-of-two scales, many exact .5 cases. qgemm_<A><B>_<M>x<K>_n<N>: "
             "QGemm, A [M, K], N output columns; f32 = float output, transb0 = B given as [K, N], nobias = no C; "
             "the QGemm probe/ties cases choose each column's bias so that its accumulator lands where candidate "
             "formulas disagree.\n\n")
    L.append("| case | op | description |\n|---|---|---|\n")
    for c in written:
        L.append(f"| {c['name']} | {c['op']} | {md(c['description'])} |\n")
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("".join(L))


def main(argv):
    if argv[1:] == ["check"]:
        check(OUT)
        return
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    cases = conv_cases() + other_cases() + qgemm_cases()
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    stats = {}  # (op, formula) -> [cases matching, cases, elements differing]
    failures, refused, written = [], [], []
    for c in cases:
        try:
            y = write_case(c, OUT)
        except Exception as e:  # onnxruntime refused the model: no fixture, listed in the README
            refused.append((c["name"], c["op"], c["description"], str(e).strip().splitlines()[0]))
            continue
        written.append(c)
        for formula, v in candidates(c["ref"]).items():
            v = np.broadcast_to(v, y.shape) if v.shape != y.shape else v
            st = stats.setdefault((c["op"], formula), [0, 0, 0])
            if y.dtype == F32:  # float output: bit for bit
                diff = int((np.ascontiguousarray(v, F32).view(np.int32) != y.view(np.int32)).sum())
            else:
                diff = int((v != y.astype(np.int64)).sum())
            st[0] += diff == 0
            st[1] += 1
            st[2] += diff
            if c["ref"]["kind"] in EXACT and formula == EXACT[c["ref"]["kind"]] and diff:
                failures.append(f"{c['name']}: {diff} elements differ from {formula}")
        c.pop("model")
        c.pop("ref")
    print("rounding: cases whose onnxruntime output equals a numpy formula exactly (elements differing in all)")
    for (op, formula), (ok, n, diff) in stats.items():
        print(f"rounding: {op:26s} {ok:3d}/{n:<3d} diff {diff:6d}  {formula}")
    for name, op, desc, err in refused:
        print(f"refused: {name} ({op} {desc}): {err}")
    conv_types = probe_conv_types()
    for x, w, y, err in conv_types:
        print(f"QLinearConv x {x} w {w} y {y}: {'runs' if err is None else 'refused: ' + err}")
    qgemm_types = probe_qgemm_types()
    for a, b, y, err in qgemm_types:
        print(f"QGemm A {a} B {b} y {y}: {'runs' if err is None else 'refused: ' + err}")
    qgemm_alpha = probe_qgemm_alpha()
    for name, kind, d in qgemm_alpha:
        for formula, n in d.items():
            print(f"alpha: {name:45s} diff {n:4d}  {formula}")
        if d[EXACT[kind]]:
            failures.append(f"{name}: {d[EXACT[kind]]} elements differ from {EXACT[kind]}")
    qgemm_sat = probe_qgemm_saturation()
    for a, out, d, n in qgemm_sat:
        print(f"QGemm full-range A {a} x B s8, y {out}: {d} of {n} differ from the exact product")
    write_readme(written, refused, stats, conv_types, qgemm_types, qgemm_alpha, qgemm_sat)
    check(OUT)
    if failures:
        sys.exit("exactness: " + "; ".join(failures))


if __name__ == "__main__":
    main(sys.argv)
