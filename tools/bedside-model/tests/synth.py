"""Small inputs for the tests, made here: a tiny classification CNN built with onnx.helper, grey PNGs written with
a minimal PNG writer (zlib), a labelled set (labels.csv) for `bedside eval`."""
import os
import struct
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LABELS = ["normal", "effusion", "other"]


def tiny_cnn(path, seed=0, input_dims=(1, 1, 64, 64)):
    """Conv+Relu x3 (1->8 s2, 8->16 s2, 16->16), GlobalAveragePool, Flatten, Gemm -> 3 logits; opset 17."""
    rng = np.random.default_rng(seed)

    def conv_w(co, ci, k=3):
        return (rng.standard_normal((co, ci, k, k)) * np.sqrt(2.0 / (ci * k * k))).astype(np.float32)

    inits = [numpy_helper.from_array(conv_w(8, 1), "c1.w"),
             numpy_helper.from_array(np.full(8, 0.05, np.float32), "c1.b"),
             numpy_helper.from_array(conv_w(16, 8), "c2.w"),
             numpy_helper.from_array(np.full(16, 0.05, np.float32), "c2.b"),
             numpy_helper.from_array(conv_w(16, 16), "c3.w"),
             numpy_helper.from_array(np.full(16, 0.05, np.float32), "c3.b"),
             numpy_helper.from_array((rng.standard_normal((3, 16)) * 0.5).astype(np.float32), "fc.w"),
             numpy_helper.from_array(np.zeros(3, np.float32), "fc.b")]
    nodes = [
        helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1"], name="conv1", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], name="conv2", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "c3.w", "c3.b"], ["c3"], name="conv3", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_dims))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bedside-model-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def write_png(path, img):
    """8-bit greyscale PNG (colour type 0), no interlace, filter 0 on every row."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = img.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                 + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def image(cls, rng, h=80, w=96):
    """A grey phantom of class `cls`: 0 a smooth gradient, 1 a bright disk, 2 stripes; plus noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 60 + 80 * (y / h)
    if cls == 1:
        cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(8, 18)
        base = base + 120 * ((y - cy) ** 2 + (x - cx) ** 2 < r * r)
    elif cls == 2:
        base = base + 70 * (np.sin(x / rng.uniform(2, 5)) > 0)
    return np.clip(base + rng.normal(0, 12, (h, w)), 0, 255).astype(np.uint8)


def image_folder(dirpath, n, seed):
    """n PNGs, classes in turn; returns [(file name, label)]."""
    os.makedirs(dirpath, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cls = i % 3
        name = f"img{i:03d}.png"
        write_png(os.path.join(dirpath, name), image(cls, rng))
        out.append((name, LABELS[cls]))
    return out


def labelled_set(dirpath, n=12, seed=1):
    """A classification set for bedside eval: images/*.png and labels.csv (file,label)."""
    rows = image_folder(os.path.join(dirpath, "images"), n, seed)
    with open(os.path.join(dirpath, "labels.csv"), "w") as fh:
        fh.write("file,label\n")
        for name, lab in rows:
            fh.write(f"images/{name},{lab}\n")
    return dirpath
