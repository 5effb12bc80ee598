"""The output contract of cxr-tiny-det and its reference decoder (bedside's Rust decoder implements exactly this),
plus VOC-style mAP@0.5.

Output `det` float32 [1, 5 + C, 32, 32] (stride 8), raw:
  ch 0      objectness logit, p_obj = sigmoid
  ch 1, 2   centre offsets: cx = (gx + sigmoid(t1)) * 8, cy = (gy + sigmoid(t2)) * 8   (gx column, gy row)
  ch 3, 4   log sizes:      w = exp(t3) * 8, h = exp(t4) * 8
  ch 5..    class logits, class = argmax, p_class = softmax over the C channels
  score = p_obj * p_class(argmax)
Decoding: cells with score >= min_score (the lowest label threshold); boxes (x1,y1,x2,y2) = centre -/+ size/2;
order by score descending, ties by lower cell index gy*32+gx; per-class greedy NMS: a box is dropped when its IoU
(area = w*h, continuous, no +1) with an already kept box of the same class is > iou_threshold; then the survivors
(all classes, same order) are cut to max_detections.
"""
import numpy as np

LABELS = ["nodule", "foreign_body"]
STRIDE = 8


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def cells(out):
    """[5+C, G, G] (or [1, 5+C, G, G]) raw output -> per-cell (score, class, box[4], cell index), float64."""
    o = np.asarray(out, dtype=np.float64)
    o = o.reshape(o.shape[-3:])
    c, g, g2 = o.shape
    gy, gx = np.mgrid[0:g, 0:g2]
    p_obj = _sigmoid(o[0])
    cx = (gx + _sigmoid(o[1])) * STRIDE
    cy = (gy + _sigmoid(o[2])) * STRIDE
    w = np.exp(o[3]) * STRIDE
    h = np.exp(o[4]) * STRIDE
    cl = o[5:]
    e = np.exp(cl - cl.max(0, keepdims=True))
    pc = e / e.sum(0, keepdims=True)
    k = cl.argmax(0)  # first maximum on ties
    score = p_obj * np.take_along_axis(pc, k[None], 0)[0]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    return score.ravel(), k.ravel(), boxes.reshape(-1, 4), np.arange(g * g2)


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def decode(out, min_score, iou_threshold=0.45, max_detections=20):
    """-> list of (score, class, box[4], cell) in output order."""
    score, k, boxes, idx = cells(out)
    keep = np.where(score >= min_score)[0]
    order = keep[np.lexsort((idx[keep], -score[keep]))]  # score desc, then cell index asc
    kept = []
    for i in order:
        if all(k[j] != k[i] or iou(boxes[i], boxes[j]) <= iou_threshold for j in kept):
            kept.append(i)
    kept = kept[:max_detections]
    return [(float(score[i]), int(k[i]), boxes[i].copy(), int(idx[i])) for i in kept]


def decode_torchvision(out, min_score, iou_threshold=0.45, max_detections=20):
    """Independent reference with torchvision.ops.batched_nms (same result expected except for exact score ties)."""
    import torch
    from torchvision.ops import batched_nms
    score, k, boxes, idx = cells(out)
    keep = np.where(score >= min_score)[0]
    order = keep[np.lexsort((idx[keep], -score[keep]))]
    if len(order) == 0:
        return []
    sel = batched_nms(torch.from_numpy(boxes[order]), torch.from_numpy(score[order]), torch.from_numpy(k[order]),
                      iou_threshold).numpy()
    sel = order[np.sort(sel)]  # back to the contract's order
    sel = sel[np.lexsort((idx[sel], -score[sel]))][:max_detections]
    return [(float(score[i]), int(k[i]), boxes[i].copy(), int(idx[i])) for i in sel]


def as_json(dets, scale=1.0, nd=4):
    return [{"label": LABELS[c], "score": round(s, 6), "box": [round(float(v) * scale, nd) for v in b]}
            for s, c, b, _ in dets]


# ------------------------------------------------------------------------------------------------ mAP

def average_precision(dets, gts, cls, iou_thr=0.5):
    """VOC (2010+) all-point interpolated AP for one class. dets: per image list of (score, class, box, cell);
    gts: per image (boxes [n,4], labels [n]). Greedy matching by descending score, each GT matched at most once."""
    recs = []
    npos = 0
    for i, (d, (gb, gl)) in enumerate(zip(dets, gts)):
        g = gb[gl == cls]
        npos += len(g)
        for s, c, b, _ in d:
            if c == cls:
                recs.append((s, i, b))
    if npos == 0:
        return float("nan")
    recs.sort(key=lambda r: -r[0])
    used = {}
    tp = np.zeros(len(recs))
    for n, (s, i, b) in enumerate(recs):
        gb, gl = gts[i]
        g = gb[gl == cls]
        best, bj = 0.0, -1
        for j, gg in enumerate(g):
            o = iou(b, gg)
            if o > best:
                best, bj = o, j
        if best >= iou_thr and not used.get((i, bj)):
            used[(i, bj)] = True
            tp[n] = 1
    fp = 1 - tp
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, 1e-12)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    ch = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[ch + 1] - mrec[ch]) * mpre[ch + 1]))


EVAL_MIN_SCORE = 0.01   # mAP is computed from detections down to this score (max_detections 20, NMS 0.45)


def evaluate(outs, gts, min_score=EVAL_MIN_SCORE, iou_threshold=0.45, max_detections=20):
    dets = [decode(o, min_score, iou_threshold, max_detections) for o in outs]
    ap = {LABELS[c]: average_precision(dets, gts, c) for c in range(len(LABELS))}
    ap["mAP"] = float(np.mean([ap[l] for l in LABELS]))
    return ap, dets
