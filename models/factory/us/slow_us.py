"""A deliberately slow test model for bedside's cine pipeline: tests/fixtures/models/us-slow/{model.onnx,model.toml}.

Same input/output names and shapes as us-fast-fluid ([1,1,224,224] -> [1,1,56,56] "mask" logits), real fp32 ONNX
graph (opset 17, Conv/Relu only): a 2x2/2 stem to 112x112x32, N_LAYERS 3x3 32->32 Conv+ReLU at 112x112, a 2x2/2
Conv to one channel at 56x56. Random He-initialised weights from a fixed seed: the output depends on the input but
means nothing. Sized to take about 45-60 ms per frame in tract 0.23.9 single-threaded on the build machine (slower
than the 33 ms / 17 ms frame periods of 30 / 60 fps cine); measure with
  TRACT_BENCH=/path/to/tract-bench python slow_us.py
"""
import hashlib
import os
import subprocess

import numpy as np
import torch
import torch.nn as nn

import preprocess_us as P

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "models", "us-slow")
N_LAYERS = int(os.environ.get("SLOW_LAYERS", "15"))
WIDTH = 32
SEED = 99


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        mods = [nn.Conv2d(1, WIDTH, 2, 2), nn.ReLU()]
        for _ in range(N_LAYERS):
            mods += [nn.Conv2d(WIDTH, WIDTH, 3, 1, 1), nn.ReLU()]
        mods += [nn.Conv2d(WIDTH, 1, 2, 2)]
        self.net = nn.Sequential(*mods)
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


def macs():
    return 112 * 112 * WIDTH * 4 + N_LAYERS * 112 * 112 * WIDTH * WIDTH * 9 + 56 * 56 * WIDTH * 4


def build():
    import onnx
    torch.manual_seed(SEED)
    m = Slow().eval()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "model.onnx")
    torch.onnx.export(m, (torch.zeros(1, 1, P.SIZE, P.SIZE),), path, input_names=["input"], output_names=["mask"],
                      opset_version=17, dynamo=False, do_constant_folding=True)
    om = onnx.load(path)
    onnx.checker.check_model(om)
    om.producer_name, om.producer_version = "bedside-model-factory", "0.1.0"
    om.doc_string = f"us-slow-test: deliberately slow fp32 test model, random weights (seed {SEED}), {macs() / 1e9:.2f} GMAC"
    onnx.save(om, path)
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    toml = f'''[model]
id = "us-slow-test"
version = "0.1.0"
task = "segmentation"
file = "model.onnx"
sha256 = "{sha}"
quantization = "none: fp32"
description = "test model, deliberately slow (~{macs() / 1e9:.1f} GMAC, about 50 ms per frame in tract single-threaded); random weights, meaningless output; not a medical device"

[input]
name = "input"
shape = [1, 1, {P.SIZE}, {P.SIZE}]
layout = "NCHW"
frames = "all"

[preprocess]
window = {{ center = 128.0, width = 256.0 }}
resize = "bilinear-antialias"
mean = {P.MEAN}
std = {P.STD}

[output]
name = "mask"
activation = "sigmoid"

[[labels]]
name = "free_fluid"
threshold = 0.5
min_fraction = 0.05
'''
    with open(os.path.join(OUT, "model.toml"), "w") as f:
        f.write(toml)
    # the output depends on the input
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    a = s.run(None, {"input": np.zeros((1, 1, P.SIZE, P.SIZE), np.float32)})[0]
    b = s.run(None, {"input": np.random.default_rng(0).normal(size=(1, 1, P.SIZE, P.SIZE)).astype(np.float32)})[0]
    print("wrote", path, os.path.getsize(path), "bytes", f"{macs() / 1e9:.2f} GMAC", "output shape", a.shape,
          "max|out(noise) - out(zeros)|", float(np.abs(a - b).max()))
    assert a.shape == (1, 1, P.OUT, P.OUT) and np.abs(a - b).max() > 1e-3
    return path


def bench(path, n=30):
    bin_ = os.environ.get("TRACT_BENCH")
    if not bin_:
        return
    x = "/tmp/us-slow-input.f32"
    np.random.default_rng(1).normal(size=(1, 1, P.SIZE, P.SIZE)).astype("<f4").tofile(x)
    env = {**os.environ, "TRACT_CPU_ISA": os.environ.get("TRACT_CPU_ISA", "-amx-int8")}
    env.pop("TRACT_THREADS", None)
    p = subprocess.run([bin_, path, x, "/tmp/us-slow-out", str(n), f"--shape=1x1x{P.SIZE}x{P.SIZE}"],
                       capture_output=True, text=True, env=env)
    print(p.stdout.strip()[:400], p.stderr[-300:])


if __name__ == "__main__":
    torch.set_num_threads(1)
    p = build()
    bench(p)
