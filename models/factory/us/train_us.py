"""Train the dense parent, prune it structurally (torch-pruning), fine-tune, export both fp32 ONNX forms.

  python train_us.py train   -> $CACHE_US/us-dense.pt        dense parent (BatchNorm unfolded)
  python train_us.py prune   -> $CACHE_US/us-pruned.pt       channels physically removed, fine-tuned
  python train_us.py export  -> models/us-fast-fluid/model.fp32.onnx (dense) and model.pruned.onnx (pruned),
                                BatchNorm folded, opset 17, standard ai.onnx ops only

Architecture (see the model card): a plain stack of Conv+BN+ReLU, no residual Adds, no Concat:
  4x4/4 patchify stem (56x56) -> 2x2/2 (28x28) -> 3x3 -> 3x3 dilation 2 -> 2x2/2 (14x14) -> 3x3 dilation 2
  -> 1x1 head with 16 channels -> DepthToSpace(4) (pixel shuffle) -> [1, 1, 56, 56] logits.
The 3x3 convolutions sit mostly at 28x28, where they carry 4x more multiply-accumulates per weight than at 14x14
(keeps the fp32 parent under 2 MB).
Why: tract runs int8 convolutions as an eager int8 im2col (~1 ns per element on this machine) + an int8
matmul; im2col costs out_hw*cin*k*k, the matmul that times cout. Non-overlapping k==s convs make im2col a
plain copy, the 3x3 convs sit at 28x28/14x14 where the tensors are small, and the 56x56 output comes from a
pixel shuffle instead of an upsampling path (no Resize/ConvTranspose, which tract ran slower in int8).
"""
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data_us as data
import preprocess_us as P

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "us-fast-fluid"))
DENSE_CKPT = os.path.join(data.CACHE, "us-dense.pt")
PRUNED_CKPT = os.path.join(data.CACHE, "us-pruned.pt")
SEED = 4321
EPOCHS = int(os.environ.get("EPOCHS", "14"))
FT_EPOCHS = int(os.environ.get("FT_EPOCHS", "10"))
PRUNE_RATIO = float(os.environ.get("PRUNE_RATIO", "0.5"))
BATCH = 32
THREADS = int(os.environ.get("TRAIN_THREADS", "1"))

# (kernel, stride, dilation) per conv; widths separately so the pruned model is the same class
KSD = [(4, 4, 1), (2, 2, 1), (3, 1, 1), (3, 1, 2), (2, 2, 1), (3, 1, 2)]
WIDTHS = [32, 64, 128, 128, 128, 128]
HEAD = 16   # = 4 x 4 sub-pixels per 14x14 cell -> 56x56


def pad(k, s, d):
    return 0 if k == s else d * (k // 2)


class FluidNet(nn.Module):
    def __init__(self, widths=WIDTHS, bn=True):
        super().__init__()
        mods, cin = [], 1
        for (k, s, d), c in zip(KSD, widths):
            mods.append(nn.Conv2d(cin, c, k, s, pad(k, s, d), dilation=d, bias=not bn))
            if bn:
                mods.append(nn.BatchNorm2d(c))
            mods.append(nn.ReLU())
            cin = c
        self.features = nn.Sequential(*mods)
        self.head = nn.Conv2d(cin, HEAD, 1)

    def forward(self, x):
        return F.pixel_shuffle(self.head(self.features(x)), 4)

    def widths(self):
        return [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)]


def fold_bn(model):
    """Equivalent eval-mode FluidNet(bn=False) with every BatchNorm folded into its Conv."""
    out = FluidNet(model.widths(), bn=False).eval()
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    oconvs = [m for m in out.features if isinstance(m, nn.Conv2d)]
    for c, b, o in zip(convs, bns, oconvs):
        scale = b.weight / torch.sqrt(b.running_var + b.eps)
        o.weight.data = c.weight.data * scale[:, None, None, None]
        bias = c.bias.data if c.bias is not None else torch.zeros_like(b.running_mean)
        o.bias.data = b.bias.data + (bias - b.running_mean) * scale
    out.head.load_state_dict(model.head.state_dict())
    return out


def macs(model_or_widths):
    w = model_or_widths.widths() if isinstance(model_or_widths, nn.Module) else model_or_widths
    tot, hw, cin = 0, P.SIZE, 1
    for (k, s, d), c in zip(KSD, w):
        hw = (hw + 2 * pad(k, s, d) - d * (k - 1) - 1) // s + 1
        tot += hw * hw * c * cin * k * k
        cin = c
    return tot + hw * hw * HEAD * cin


def params(model):
    return sum(p.numel() for p in model.parameters())


def setup():
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)


def loss_fn(logits, t):
    bce = F.binary_cross_entropy_with_logits(logits, t)
    p = torch.sigmoid(logits)
    inter = (p * t).sum()
    dice = 1 - (2 * inter + 1) / (p.sum() + t.sum() + 1)
    return bce + 0.5 * dice


def predict(model, x, bs=64):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(x[i:i + bs])) for i in range(0, len(x), bs)]).numpy()[:, 0]


def quick_metrics(logits, t, y):
    pred = logits > 0
    gt = t.astype(np.float32) >= 0.5
    pos = y == 1
    inter = (pred & gt)[pos].sum()
    dice = 2 * inter / max(pred[pos].sum() + gt[pos].sum(), 1)
    frac = pred.reshape(len(pred), -1).mean(1)
    auc = auc_score(frac, y)
    return {"dice_pos": float(dice), "auc": float(auc), "neg_fp_frac": float(frac[~pos].mean())}


def auc_score(score, y):
    """Mann-Whitney AUC with ties counted half."""
    s1, s0 = score[y == 1], score[y == 0]
    order = np.argsort(np.concatenate([s1, s0]), kind="mergesort")
    allv = np.concatenate([s1, s0])[order]
    ranks = np.empty(len(allv))
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(allv))
    r[order] = ranks
    return (r[:len(s1)].sum() - len(s1) * (len(s1) + 1) / 2) / (len(s1) * len(s0))


def fit(model, epochs, lr, tag, xtr, ttr, xva, tva, yva, teacher=None, kd=1.0):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(xtr) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(SEED + len(tag))
    xt, tt = torch.from_numpy(xtr), torch.from_numpy(ttr.astype(np.float32))[:, None]
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        tot = 0.0
        for b in range(len(xtr) // BATCH):
            idx = perm[b * BATCH:(b + 1) * BATCH]
            # brightness / contrast jitter in normalised units (gain and dynamic range vary between scanners)
            a = 1 + 0.2 * (torch.rand(BATCH, 1, 1, 1, generator=g) - 0.5)
            c = 0.2 * (torch.rand(BATCH, 1, 1, 1, generator=g) - 0.5)
            xb = xt[idx] * a + c
            opt.zero_grad()
            out = model(xb)
            loss = loss_fn(out, tt[idx])
            if teacher is not None:
                # distillation: the dense parent's probabilities as soft per-pixel targets
                with torch.no_grad():
                    soft = torch.sigmoid(teacher(xb))
                loss = loss + kd * F.binary_cross_entropy_with_logits(out, soft)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        m = quick_metrics(predict(model, xva), tva, yva)
        print(f"[{tag}] epoch {ep} loss {tot / (len(xtr) // BATCH):.4f} val {json.dumps(m)} ({time.time() - t0:.0f}s)", flush=True)
    return model


def train():
    setup()
    xtr, ttr, ytr, _ = data.load("train")
    xva, tva, yva, _ = data.load("val")
    y = xtr * P.STD + P.MEAN
    print(f"train {xtr.shape}: y (before normalise) mean {y.mean():.4f} std {y.std():.4f}; "
          f"fluid pixels {(ttr >= 0.5).mean():.4f}", flush=True)
    del y
    model = FluidNet()
    print("dense widths", model.widths(), "MACs %.1fM params %d" % (macs(model) / 1e6, params(model)), flush=True)
    fit(model, EPOCHS, 3e-3, "dense", xtr, ttr, xva, tva, yva)
    torch.save(model.state_dict(), DENSE_CKPT)
    print("saved", DENSE_CKPT, hashlib.sha256(open(DENSE_CKPT, "rb").read()).hexdigest())


def prune():
    import torch_pruning as tp
    setup()
    xtr, ttr, ytr, _ = data.load("train")
    xva, tva, yva, _ = data.load("val")
    model = FluidNet()
    model.load_state_dict(torch.load(DENSE_CKPT))
    model.eval()
    print("dense val", json.dumps(quick_metrics(predict(model, xva), tva, yva)), flush=True)
    example = torch.zeros(1, 1, P.SIZE, P.SIZE)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=PRUNE_RATIO,
                                  ignored_layers=[model.head], round_to=8)
    base = macs(model)
    pruner.step()
    w = model.widths()
    print(f"pruned widths {w} MACs {macs(model) / 1e6:.1f}M ({100 * (1 - macs(model) / base):.1f}% fewer) "
          f"params {params(model)}", flush=True)
    # rebuild as a plain FluidNet with the pruned widths (same module names, physically smaller tensors)
    pruned = FluidNet(w)
    pruned.load_state_dict(model.state_dict())
    print("pruned (before fine-tune) val", json.dumps(quick_metrics(predict(pruned, xva), tva, yva)), flush=True)
    teacher = FluidNet()
    teacher.load_state_dict(torch.load(DENSE_CKPT))
    teacher.eval()
    fit(pruned, FT_EPOCHS, 1.5e-3, "finetune", xtr, ttr, xva, tva, yva, teacher=teacher)
    torch.save({"widths": w, "state": pruned.state_dict()}, PRUNED_CKPT)
    print("saved", PRUNED_CKPT, hashlib.sha256(open(PRUNED_CKPT, "rb").read()).hexdigest())


def load_models():
    dense = FluidNet()
    dense.load_state_dict(torch.load(DENSE_CKPT))
    ck = torch.load(PRUNED_CKPT)
    pruned = FluidNet(ck["widths"])
    pruned.load_state_dict(ck["state"])
    return dense.eval(), pruned.eval()


def export_onnx(model, path, doc):
    import onnx
    dummy = torch.zeros(1, 1, P.SIZE, P.SIZE)
    torch.onnx.export(model, (dummy,), path, input_names=["input"], output_names=["mask"], opset_version=17,
                      dynamo=False, do_constant_folding=True)
    m = onnx.load(path)
    onnx.checker.check_model(m)
    m.producer_name, m.producer_version, m.doc_string = "bedside-model-factory", "0.1.0", doc
    onnx.save(m, path)
    ops = sorted({(n.domain or "ai.onnx") + ":" + n.op_type for n in m.graph.node})
    assert all(o.startswith("ai.onnx:") for o in ops), ops
    print("exported", path, ops, os.path.getsize(path), "bytes")


def export():
    setup()
    dense, pruned = load_models()
    os.makedirs(OUT_DIR, exist_ok=True)
    xte, tte, yte, _ = data.load("test")
    info = {}
    for name, m, fname in (("fp32", dense, "model.fp32.onnx"), ("pruned", pruned, "model.pruned.onnx")):
        f = fold_bn(m)
        l1, l2 = predict(m, xte[:64]), predict(f, xte[:64])
        print(f"{name}: BN fold max|diff| {np.abs(l1 - l2).max():.2e}")
        export_onnx(f, os.path.join(OUT_DIR, fname),
                    f"us-fast-fluid {name} ({'dense parent' if name == 'fp32' else 'structurally pruned'}), synthetic data")
        info[name] = {"widths": m.widths(), "macs": macs(m), "params": params(f)}
    with open(os.path.join(data.CACHE, "arch.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    {"train": train, "prune": prune, "export": export}[sys.argv[1]]()
