"""The preprocessing contract of cxr-tiny-cls (bedside's Rust code implements exactly this).

1. Modality LUT   v = stored * slope + intercept
2. VOI LINEAR     DICOM PS3.3 C.11.2.1.2.1 with the first WindowCenter/WindowWidth, output [0,1];
                  no window -> min/max of v over the image
3. MONOCHROME1    y = 1 - y
4. resize         224x224 stretched, antialiased bilinear (Pillow BILINEAR semantics)
5. normalise      (y - MEAN) / STD
"""
import numpy as np
import torch
import torch.nn.functional as F

SIZE = 224
# chosen from the windowed training images (mean/std of y over the training set, rounded)
MEAN = 0.34
STD = 0.27


def window_linear(v, c=None, w=None):
    v = np.asarray(v, dtype=np.float64)
    if c is None or w is None:
        lo, hi = float(v.min()), float(v.max())
        return np.zeros_like(v) if hi <= lo else (v - lo) / (hi - lo)
    c, w = float(c), float(w)
    y = (v - (c - 0.5)) / (w - 1.0) + 0.5
    y = np.where(v <= c - 0.5 - (w - 1.0) / 2, 0.0, y)
    y = np.where(v > c - 0.5 + (w - 1.0) / 2, 1.0, y)
    return y


def display(stored, slope=1.0, intercept=0.0, c=None, w=None, monochrome1=False):
    """Steps 1-3: stored pixels -> y in [0,1], 0 displayed black."""
    v = np.asarray(stored, dtype=np.float64) * float(slope) + float(intercept)
    y = window_linear(v, c, w)
    return 1.0 - y if monochrome1 else y


def resize(y, size=SIZE):
    """Step 4 on a [H,W] (or [N,H,W]) array -> float32 [.., size, size] (224 for cxr-tiny-cls)."""
    t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    squeeze = t.ndim == 2
    t = t.reshape(-1, 1, *t.shape[-2:])
    r = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    r = r[:, 0].numpy()
    return r[0] if squeeze else r


def normalise(y, mean=MEAN, std=STD):
    return ((y - mean) / std).astype(np.float32)


def preprocess(stored, slope=1.0, intercept=0.0, c=None, w=None, monochrome1=False, size=SIZE, mean=MEAN, std=STD):
    """Steps 1-5 -> float32 [1,1,size,size] model input (another model's size, mean and std when given)."""
    y = display(stored, slope, intercept, c, w, monochrome1)
    return normalise(resize(y, size), mean, std).reshape(1, 1, size, size)


def preprocess_dataset(ds, **model):
    """Steps 1-5 from a pydicom Dataset (first window value if multi-valued); `model`: size, mean, std."""
    def first(x):
        if x is None:
            return None
        try:
            return float(x[0])
        except TypeError:
            return float(x)
    return preprocess(ds.pixel_array,
                      float(getattr(ds, "RescaleSlope", 1.0)), float(getattr(ds, "RescaleIntercept", 0.0)),
                      first(getattr(ds, "WindowCenter", None)), first(getattr(ds, "WindowWidth", None)),
                      ds.PhotometricInterpretation == "MONOCHROME1", **model)
