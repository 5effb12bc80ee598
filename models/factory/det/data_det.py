"""Deterministic synthetic data sets for cxr-tiny-det, cached outside the repo ($CACHE_DET, default
/work/scratch/cache-det): y = preprocessing steps 1-4 (windowed, resized to 256x256, before mean/std) and the boxes
in 256-pixel input coordinates (512-pixel boxes / 2)."""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..")))
import preprocess_det as P  # noqa: E402
import synth_det  # noqa: E402

CACHE = os.environ.get("CACHE_DET", "/work/scratch/cache-det")
SPLITS = {"train": (0, int(os.environ.get("N_TRAIN", "2800"))), "val": (100_000, 400), "test": (200_000, 400),
          "calib": (300_000, 200)}


def one(seed):
    stored, c, w, boxes, labels, bg = synth_det.generate(seed)
    y = P.resize(P.display(stored, 1.0, 0.0, c, w))
    scale = P.SIZE / synth_det.W
    return y, boxes * scale, labels, bg


def _job(seed):
    import torch
    torch.set_num_threads(1)
    return one(seed)


def load(split, workers=2):
    """-> x float32 [N,1,256,256] (normalised model input), boxes list of float [n,4] (256-px coords),
    labels list of int [n], bg int [N] (synth background label)."""
    base, n = SPLITS[split]
    path = os.path.join(CACHE, f"det-{split}-{base}-{n}.npz")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        seeds = list(range(base, base + n))
        if workers > 1:
            import multiprocessing as mp
            with mp.get_context("fork").Pool(workers) as pool:
                res = pool.map(_job, seeds, chunksize=8)
        else:
            res = [_job(s) for s in seeds]
        y = np.stack([r[0] for r in res]).astype(np.float16 if split == "train" else np.float32)
        nb = np.array([len(r[2]) for r in res])
        np.savez(path, y=y, nb=nb, boxes=np.concatenate([r[1] for r in res]).reshape(-1, 4),
                 labels=np.concatenate([r[2] for r in res]).astype(np.int64), bg=np.array([r[3] for r in res]))
    z = np.load(path)
    x = P.normalise(z["y"].astype(np.float32))[:, None]
    ends = np.cumsum(z["nb"])
    boxes = np.split(z["boxes"], ends[:-1])
    labels = np.split(z["labels"], ends[:-1])
    return x, boxes, labels, z["bg"]


if __name__ == "__main__":
    import time
    for sp in sys.argv[1:] or list(SPLITS):
        t0 = time.time()
        x, b, l, bg = load(sp)
        y = x * P.STD + P.MEAN
        allb = np.concatenate(b)
        alll = np.concatenate(l)
        wh = allb[:, 2:] - allb[:, :2]
        print(sp, x.shape, "y mean/std %.4f/%.4f" % (y.mean(), y.std()), "empty %.3f" % np.mean([len(k) == 0 for k in l]),
              "objects", np.bincount(alll, minlength=2).tolist(),
              "w,h min %.1f max %.1f (256 px)" % (wh.min(), wh.max()), "%.0fs" % (time.time() - t0), flush=True)
