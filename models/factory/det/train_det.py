"""Train the dense parent, prune it structurally (torch-pruning), fine-tune, export both fp32 ONNX forms.

  python train_det.py train   -> $CACHE_DET/det-dense.pt        dense parent (BatchNorm unfolded)
  python train_det.py prune   -> $CACHE_DET/det-pruned.pt       channels physically removed, fine-tuned
  python train_det.py export  -> models/cxr-tiny-det/model.fp32.onnx (dense), model.pruned.onnx (pruned);
                                 BatchNorm folded, opset 17, standard ai.onnx ops only (Conv, Relu)

Architecture: a plain stack of Conv+BN+ReLU (no residual Add, no Concat, no upsampling), single-scale stride-8 head:
  4x4/4 patchify stem (64x64) -> 3x3 -> 3x3 -> 2x2/2 (32x32) -> 3x3 -> 3x3 dilation 2 -> 3x3 dilation 4
  -> 1x1 head with 5 + C = 7 raw channels (objectness, 2 offsets, 2 log sizes, 2 class logits).
  Receptive field 136x136 input pixels. No layer runs at 128x128 or 256x256: a 3x3 conv there costs a lot of
  training time (memory traffic) and, in tract's int8 path, an eager im2col of out_hw * c_in * 9 elements.
Loss (YOLO-like, one positive cell per object = the cell holding its centre): objectness focal loss (alpha 0.25,
gamma 2) over all cells, offsets BCE on sigmoid, log-size smooth-L1, class cross-entropy, each normalised by the
number of objects in the batch.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data_det as data  # noqa: E402
import decode_det as Dd  # noqa: E402
import preprocess_det as P  # noqa: E402

OUT_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "cxr-tiny-det"))
DENSE_CKPT = os.path.join(data.CACHE, "det-dense.pt")
PRUNED_CKPT = os.path.join(data.CACHE, "det-pruned.pt")
SEED = 5150
EPOCHS = int(os.environ.get("EPOCHS", "10"))
FT_EPOCHS = int(os.environ.get("FT_EPOCHS", "6"))
PRUNE_RATIO = float(os.environ.get("PRUNE_RATIO", "0.3"))
BATCH = 32
THREADS = int(os.environ.get("TRAIN_THREADS", "1"))
C = len(Dd.LABELS)
HEAD = 5 + C

KSD = [(4, 4, 1), (3, 1, 1), (3, 1, 1), (2, 2, 1), (3, 1, 1), (3, 1, 2), (3, 1, 4)]
WIDTHS = [24, 32, 32, 64, 64, 64, 96]


def pad(k, s, d):
    return 0 if k == s else d * (k // 2)


class DetNet(nn.Module):
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
        return self.head(self.features(x))

    def widths(self):
        return [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)]


def fold_bn(model):
    out = DetNet(model.widths(), bn=False).eval()
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


# ------------------------------------------------------------------------------------------------ targets / loss

def build_targets(boxes, labels):
    """-> obj [N,G,G] (0/1), reg [N,4,G,G] (offset x,y in [0,1), log w/8, log h/8), cls [N,G,G] (-1 = none)."""
    n, g = len(boxes), P.GRID
    obj = np.zeros((n, g, g), np.float32)
    reg = np.zeros((n, 4, g, g), np.float32)
    cls = np.full((n, g, g), -1, np.int64)
    for i, (b, l) in enumerate(zip(boxes, labels)):
        # larger objects first so that a smaller one sharing the cell wins (rare)
        for j in np.argsort(-(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])):
            x1, y1, x2, y2 = b[j]
            cx, cy = (x1 + x2) / 2 / P.STRIDE, (y1 + y2) / 2 / P.STRIDE
            gx, gy = min(max(int(np.floor(cx)), 0), g - 1), min(max(int(np.floor(cy)), 0), g - 1)
            obj[i, gy, gx] = 1
            reg[i, :, gy, gx] = [np.clip(cx - gx, 1e-3, 1 - 1e-3), np.clip(cy - gy, 1e-3, 1 - 1e-3),
                                 np.log(max(x2 - x1, 0.5) / P.STRIDE), np.log(max(y2 - y1, 0.5) / P.STRIDE)]
            cls[i, gy, gx] = l[j]
    return torch.from_numpy(obj), torch.from_numpy(reg), torch.from_numpy(cls)


def det_loss(out, obj, reg, cls):
    npos = max(float(obj.sum()), 1.0)
    lo = out[:, 0]
    p = torch.sigmoid(lo)
    ce = F.binary_cross_entropy_with_logits(lo, obj, reduction="none")
    pt = p * obj + (1 - p) * (1 - obj)
    at = 0.25 * obj + 0.75 * (1 - obj)
    l_obj = (at * (1 - pt) ** 2 * ce).sum() / npos
    m = obj > 0.5
    if m.any():
        o = out.permute(0, 2, 3, 1)[m]            # [npos, 5+C]
        t = reg.permute(0, 2, 3, 1)[m]            # [npos, 4]
        l_off = F.binary_cross_entropy_with_logits(o[:, 1:3], t[:, :2], reduction="sum") / npos
        l_size = F.smooth_l1_loss(o[:, 3:5], t[:, 2:], reduction="sum", beta=0.2) / npos
        l_cls = F.cross_entropy(o[:, 5:], cls[m], reduction="sum") / npos
    else:
        l_off = l_size = l_cls = out.sum() * 0
    return l_obj + l_off + l_size + l_cls, (l_obj.item(), l_off.item(), l_size.item(), l_cls.item())


def predict(model, x, bs=50):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(x[i:i + bs])) for i in range(0, len(x), bs)]).numpy()


def val_map(model, xva, bva, lva):
    ap, _ = Dd.evaluate(predict(model, xva), list(zip(bva, lva)))
    return {k: round(v, 4) for k, v in ap.items()}


def fit(model, epochs, lr, tag, xtr, btr, ltr, xva, bva, lva, teacher=None, kd=1.0):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    nb = len(xtr) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * nb, pct_start=0.15)
    g = torch.Generator().manual_seed(SEED + len(tag))
    obj_all, reg_all, cls_all = build_targets(btr, ltr)
    # horizontally flipped targets (the image is mirrored left-right)
    bflip = [np.stack([P.SIZE - b[:, 2], b[:, 1], P.SIZE - b[:, 0], b[:, 3]], 1) if len(b) else b for b in btr]
    objf, regf, clsf = build_targets(bflip, ltr)
    xt = torch.from_numpy(xtr)
    t0 = time.time()
    best = None
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        tot, parts = 0.0, np.zeros(4)
        for b in range(nb):
            idx = perm[b * BATCH:(b + 1) * BATCH]
            flip = torch.rand(BATCH, generator=g) < 0.5
            a = 1 + 0.2 * (torch.rand(BATCH, 1, 1, 1, generator=g) - 0.5)
            c = 0.2 * (torch.rand(BATCH, 1, 1, 1, generator=g) - 0.5)
            xb = xt[idx].float()
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb) * a + c
            f3 = flip[:, None, None]
            obj = torch.where(f3, objf[idx], obj_all[idx])
            reg = torch.where(f3[:, None], regf[idx], reg_all[idx])
            cls = torch.where(f3, clsf[idx], cls_all[idx])
            opt.zero_grad()
            out = model(xb)
            loss, pr = det_loss(out, obj, reg, cls)
            if teacher is not None:
                with torch.no_grad():
                    tout = teacher(xb)
                # distillation: the parent's objectness probabilities (all cells) and its box/class outputs on the
                # cells it finds likely
                npos = max(float(obj.sum()), 1.0)
                tp = torch.sigmoid(tout[:, 0])
                kd_obj = F.binary_cross_entropy_with_logits(out[:, 0], tp, reduction="sum") / npos \
                    - F.binary_cross_entropy_with_logits(tout[:, 0], tp, reduction="sum") / npos
                wgt = tp[:, None]
                kd_rest = (wgt * (out[:, 1:] - tout[:, 1:]) ** 2).sum() / npos
                loss = loss + kd * (kd_obj + 0.5 * kd_rest)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
            parts += pr
        m = val_map(model, xva, bva, lva)
        print(f"[{tag}] epoch {ep} loss {tot / nb:.4f} parts {np.round(parts / nb, 4).tolist()} val {json.dumps(m)} "
              f"({time.time() - t0:.0f}s)", flush=True)
    return model


def load_split(name):
    x, b, l, bg = data.load(name)
    return x, b, l


def train():
    setup()
    xtr, btr, ltr = load_split("train")
    xva, bva, lva = load_split("val")
    model = DetNet()
    print("dense widths", model.widths(), "MACs %.1fM params %d" % (macs(model) / 1e6, params(model)), flush=True)
    # objectness bias prior ~ 1.5 objects / 1024 cells
    nn.init.constant_(model.head.bias[0], -6.0)
    fit(model, EPOCHS, 3e-3, "dense", xtr, btr, ltr, xva, bva, lva)
    torch.save(model.state_dict(), DENSE_CKPT)
    print("saved", DENSE_CKPT, hashlib.sha256(open(DENSE_CKPT, "rb").read()).hexdigest())


def prune():
    import torch_pruning as tp
    setup()
    xtr, btr, ltr = load_split("train")
    xva, bva, lva = load_split("val")
    model = DetNet()
    model.load_state_dict(torch.load(DENSE_CKPT))
    model.eval()
    print("dense val", json.dumps(val_map(model, xva, bva, lva)), flush=True)
    example = torch.zeros(1, 1, P.SIZE, P.SIZE)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=PRUNE_RATIO,
                                  ignored_layers=[model.head], round_to=8)
    base = macs(model)
    pruner.step()
    w = model.widths()
    print(f"pruned widths {w} MACs {macs(model) / 1e6:.1f}M ({100 * (1 - macs(model) / base):.1f}% fewer) "
          f"params {params(model)}", flush=True)
    pruned = DetNet(w)
    pruned.load_state_dict(model.state_dict())
    print("pruned (before fine-tune) val", json.dumps(val_map(pruned, xva, bva, lva)), flush=True)
    teacher = DetNet()
    teacher.load_state_dict(torch.load(DENSE_CKPT))
    teacher.eval()
    fit(pruned, FT_EPOCHS, 1.5e-3, "finetune", xtr, btr, ltr, xva, bva, lva, teacher=teacher)
    torch.save({"widths": w, "state": pruned.state_dict()}, PRUNED_CKPT)
    print("saved", PRUNED_CKPT, hashlib.sha256(open(PRUNED_CKPT, "rb").read()).hexdigest())


def load_models():
    dense = DetNet()
    dense.load_state_dict(torch.load(DENSE_CKPT))
    ck = torch.load(PRUNED_CKPT)
    pruned = DetNet(ck["widths"])
    pruned.load_state_dict(ck["state"])
    return dense.eval(), pruned.eval()


def export_onnx(model, path, doc):
    import onnx
    dummy = torch.zeros(1, 1, P.SIZE, P.SIZE)
    torch.onnx.export(model, (dummy,), path, input_names=["input"], output_names=["det"], opset_version=17,
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
    xte, _, _ = load_split("test")
    info = {}
    for name, m, fname in (("fp32", dense, "model.fp32.onnx"), ("pruned", pruned, "model.pruned.onnx")):
        f = fold_bn(m)
        l1, l2 = predict(m, xte[:50]), predict(f, xte[:50])
        print(f"{name}: BN fold max|diff| {np.abs(l1 - l2).max():.2e}")
        export_onnx(f, os.path.join(OUT_DIR, fname),
                    f"cxr-tiny-det {name} ({'dense parent' if name == 'fp32' else 'structurally pruned'}), synthetic data")
        info[name] = {"widths": m.widths(), "macs": macs(m), "params": params(f)}
    with open(os.path.join(data.CACHE, "arch.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    {"train": train, "prune": prune, "export": export}[sys.argv[1]]()
