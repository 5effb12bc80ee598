"""Train cxr-tiny-cls on synthetic phantoms and export the fp32 ONNX parent.

  python train_export.py train   -> $CACHE/cxr-tiny-cls.pt   (weights, BatchNorm unfolded)
  python train_export.py export  -> models/cxr-tiny-cls/model.fp32.onnx (BatchNorm folded, opset 17)
"""
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

import data
import preprocess as P

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "cxr-tiny-cls")
CKPT = os.path.join(data.CACHE, "cxr-tiny-cls.pt")
SEED = 1234
EPOCHS = int(os.environ.get("EPOCHS", "30"))
BATCH = 32
THREADS = int(os.environ.get("TRAIN_THREADS", "2"))

# (in, out, kernel, stride): a plain strided Conv+ReLU stack (no pooling between convs, no residual adds,
# no Concat) so that onnxruntime's QOperator output is one chain of QLinearConv that tract runs in int8.
# tract runs QLinearConv as an eager int8 im2col + int8 matmul; im2col costs ~hw*cin*k*k, the matmul ~hw*cin*k*k*cout,
# so int8 only beats tract's fp32 (lazy im2col) on layers with a wide output. Non-overlapping 4x4/4 and 2x2/2
# convs do the downsampling (cheap im2col, no Pad), the 48->192 3x3 layer carries most MACs (see MODEL_CARD.md).
LAYERS = [(1, 32, 4, 4), (32, 48, 2, 2), (48, 192, 3, 1), (192, 128, 2, 2)]


def pad(k, s):
    return 0 if k == s else k // 2


class TinyCls(nn.Module):
    def __init__(self, layers=LAYERS, n_classes=3):
        super().__init__()
        mods = []
        for cin, cout, k, s in layers:
            mods += [nn.Conv2d(cin, cout, k, s, pad(k, s), bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*mods)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(layers[-1][1], n_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def fold_bn(model):
    """Return an equivalent eval-mode model with every BatchNorm folded into the preceding Conv."""
    mods, feats = [], list(model.features)
    for i in range(0, len(feats), 3):
        conv, bn = feats[i], feats[i + 1]
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.data = conv.weight.data * scale[:, None, None, None]
        fused.bias.data = bn.bias.data - bn.running_mean * scale
        mods += [fused, nn.ReLU()]
    out = nn.Module()
    out.features, out.pool, out.fc = nn.Sequential(*mods), model.pool, model.fc
    out.forward = lambda x: out.fc(torch.flatten(out.pool(out.features(x)), 1))
    return out.eval()


def setup():
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)


def macs_params(layers=LAYERS, size=P.SIZE):
    macs, hw = 0, size
    for cin, cout, k, s in layers:
        hw = (hw + 2 * pad(k, s) - k) // s + 1
        macs += hw * hw * cout * cin * k * k
    params = sum(cout * cin * k * k + cout for cin, cout, k, s in layers) + layers[-1][1] * 3 + 3
    return macs, params


def evaluate(model, x, y, bs=100):
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x[i:i + bs])) for i in range(0, len(x), bs)])
    return float((logits.argmax(1).numpy() == y).mean()), logits.numpy()


def train():
    setup()
    xtr, ytr = data.load("train")
    xva, yva = data.load("val")
    print(f"train {xtr.shape} y-mean/std after step 5: {xtr.mean():.3f}/{xtr.std():.3f}", flush=True)
    model = TinyCls()
    print("MACs %.1fM params %d" % (macs_params()[0] / 1e6, macs_params()[1]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = EPOCHS * (len(xtr) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(SEED)
    lossf = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    t0 = time.time()
    for ep in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        tot = 0.0
        for b in range(len(xtr) // BATCH):
            idx = perm[b * BATCH:(b + 1) * BATCH]
            xb = xt[idx]
            # light augmentation: global brightness/contrast jitter in normalised units
            a = 1 + 0.1 * (torch.rand(BATCH, 1, 1, 1, generator=g) - 0.5)
            c = 0.1 * (torch.rand(BATCH, 1, 1, 1, generator=g) - 0.5)
            opt.zero_grad()
            loss = lossf(model(xb * a + c), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        acc, _ = evaluate(model, xva, yva)
        print(f"epoch {ep} loss {tot / (len(xtr) // BATCH):.4f} val acc {acc:.4f} ({time.time() - t0:.0f}s)", flush=True)
    torch.save(model.state_dict(), CKPT)
    h = hashlib.sha256(open(CKPT, "rb").read()).hexdigest()
    print("saved", CKPT, "sha256", h)
    return h


def export():
    setup()
    model = TinyCls()
    model.load_state_dict(torch.load(CKPT))
    model.eval()
    fused = fold_bn(model)
    xte, yte = data.load("test")
    acc_bn, l1 = evaluate(model, xte, yte)
    acc_f, l2 = evaluate(fused, xte, yte)
    print(f"test acc torch {acc_bn:.4f}, folded {acc_f:.4f}, max|diff| {np.abs(l1 - l2).max():.2e}")
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, "model.fp32.onnx")
    dummy = torch.zeros(1, 1, P.SIZE, P.SIZE)
    torch.onnx.export(fused, (dummy,), path, input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamo=False, do_constant_folding=True)
    import onnx
    m = onnx.load(path)
    onnx.checker.check_model(m)
    m.producer_name, m.producer_version, m.doc_string = "bedside-model-factory", "0.1.0", "cxr-tiny-cls fp32 (synthetic)"
    onnx.save(m, path)
    print("exported", path, sorted({n.op_type for n in m.graph.node}), os.path.getsize(path), "bytes")
    with open(os.path.join(data.CACHE, "torch-test-acc.json"), "w") as f:
        json.dump({"torch_test_acc": acc_bn}, f)


if __name__ == "__main__":
    {"train": train, "export": export}[sys.argv[1]]()
