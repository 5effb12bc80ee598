"""Deterministic synthetic data sets for us-fast-fluid (preprocessed model inputs + 56x56 soft targets),
cached as .npz outside the repo ($CACHE, default /work/scratch/cache-us)."""
import io
import os

import numpy as np

import preprocess_us as P
import synth_us

CACHE = os.environ.get("CACHE_US", "/work/scratch/cache-us")
# disjoint seed ranges per split; positive = odd index (balanced)
SPLITS = {"train": (0, 3200), "val": (100_000, 400), "test": (200_000, 800), "calib": (300_000, 200)}
JPEG_P = 0.5   # fraction of images passed through a JPEG round trip (quality 60-95), like a compressed cine clip


def jpeg(img, q):
    from PIL import Image
    b = io.BytesIO()
    Image.fromarray(img).save(b, format="JPEG", quality=int(q))
    return np.asarray(Image.open(io.BytesIO(b.getvalue())).convert("L"))


def one(seed, positive):
    img, mask, s = synth_us.sample(seed, positive)
    rng = np.random.default_rng([seed, 7])
    q = int(rng.integers(60, 96)) if rng.random() < JPEG_P else 0
    if q:
        img = jpeg(img, q)
    x = P.preprocess(img)[0, 0]
    t = P.mask_target(mask)
    f = s["fluid"]
    meta = (float(f["t"]) if f else 0.0, float(mask.mean()), q, int(s["gb"] is not None and s["gb"]["near"]))
    return x, t.astype(np.float16), meta


def _job(a):
    import torch
    torch.set_num_threads(1)
    return one(*a)


def load(split, workers=2):
    """-> x float32 [N,1,224,224], t float16 [N,56,56] soft target, y int64 [N] (image label),
    meta float64 [N, 4] (fluid max thickness mm, fluid fraction of the crop, jpeg quality or 0, gallbladder next to kidney)."""
    base, n = SPLITS[split]
    path = os.path.join(CACHE, f"us-{split}-{base}-{n}-m{P.MEAN}-s{P.STD}.npz")
    if os.path.exists(path):
        z = np.load(path)
        return z["x"], z["t"], z["y"], z["meta"]
    os.makedirs(CACHE, exist_ok=True)
    jobs = [(base + i, i % 2 == 1) for i in range(n)]
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(workers) as pool:
            res = pool.map(_job, jobs, chunksize=8)
    else:
        res = [_job(j) for j in jobs]
    x = np.stack([r[0] for r in res])[:, None].astype(np.float32)
    t = np.stack([r[1] for r in res])
    y = np.array([j[1] for j in jobs], dtype=np.int64)
    meta = np.array([r[2] for r in res], dtype=np.float64)
    np.savez(path, x=x, t=t, y=y, meta=meta)
    return x, t, y, meta


if __name__ == "__main__":
    import sys
    import time
    for sp in sys.argv[1:] or list(SPLITS):
        t0 = time.time()
        x, t, y, meta = load(sp)
        print(sp, x.shape, "y mean/std (raw, before normalise) %.4f/%.4f" % ((x * P.STD + P.MEAN).mean(), (x * P.STD + P.MEAN).std()),
              "positives", int(y.sum()), "mean fluid frac (pos) %.4f" % meta[y == 1, 1].mean(), "%.0fs" % (time.time() - t0), flush=True)
