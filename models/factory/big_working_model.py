"""A test model with a large working set and a tiny file (tests/fixtures/models/cxr-big-working): a classifier
with cxr-tiny-cls's id, input and labels whose first 1x1 convolution widens the 224x224 input to 1024 channels
(~205 MB of intermediate tensor, 2 KB of weights). tests/update.rs stages it as an update that the device's
memory budget cannot hold. Random weights, meaningless output; not a medical device.

  /work/venv-ort/bin/python models/factory/big_working_model.py     # needs $BEDSIDE or target/debug/bedside

Its [memory] is what `bedside models measure` prints (an update must state it: the daemon plans it before
loading it).
"""
import hashlib
import os
import subprocess

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "models",
                   "cxr-big-working")
WIDE = 1024

rng = np.random.default_rng(20261203)
w1 = rng.normal(0, 1, (WIDE, 1, 1, 1)).astype(np.float32)
w2 = rng.normal(0, 0.05, (3, WIDE, 1, 1)).astype(np.float32)
graph = helper.make_graph(
    [helper.make_node("Conv", ["input", "w1"], ["wide"], name="widen"),
     helper.make_node("Relu", ["wide"], ["act"], name="relu"),
     helper.make_node("GlobalAveragePool", ["act"], ["pooled"], name="pool"),
     helper.make_node("Conv", ["pooled", "w2"], ["head"], name="head"),
     helper.make_node("Flatten", ["head"], ["logits"], name="flatten")],
    "cxr_big_working",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 224, 224])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bedside factory")
model.ir_version = 8
onnx.checker.check_model(model)
os.makedirs(OUT, exist_ok=True)
path = os.path.join(OUT, "model.onnx")
onnx.save(model, path)
sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
with open(os.path.join(OUT, "model.toml"), "w") as f:
    f.write(f'''[model]
id = "cxr-tiny-cls"
version = "9.0.0-big-working-test"
task = "classification"
file = "model.onnx"
sha256 = "{sha}"
quantization = "none: fp32"
description = "test model: cxr-tiny-cls's id and labels with a ~205 MB working set (models/factory/big_working_model.py); random weights, meaningless output; not a medical device"

[input]
name = "input"
shape = [1, 1, 224, 224]
layout = "NCHW"

[preprocess]
window = "dicom"
resize = "bilinear-antialias"
mean = 0.34
std = 0.27

[output]
name = "logits"
activation = "softmax"

[[labels]]
name = "normal"
threshold = 0.5
[[labels]]
name = "pneumothorax"
threshold = 0.25
[[labels]]
name = "other"
threshold = 0.25
''')
repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
bedside = os.environ.get("BEDSIDE", os.path.join(repo, "target", "debug", "bedside"))
measured = subprocess.run([bedside, "models", "measure", OUT], check=True, capture_output=True, text=True).stdout
working = next(int(l.split("=")[1]) for l in measured.splitlines() if l.startswith("tract_working_bytes"))
with open(os.path.join(OUT, "model.toml"), "a") as f:
    f.write(f"\n[memory]\n# bedside models measure\ntract_working_bytes = {working}\n")
print(path, os.path.getsize(path), sha, "working", working)
