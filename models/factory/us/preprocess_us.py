"""The preprocessing contract of us-fast-fluid (bedside's Rust code implements exactly this).

1. luma        8-bit grey frame v in 0..255 (colour frames: BT.601 full-range luma, 0.299 R + 0.587 G + 0.114 B)
2. crop        to the sector's bounding box [x, y, w, h] in pixels (given per clip / per board)
3. window      y = v / 255  (== DICOM VOI LINEAR with center 128, width 256: (v - 127.5) / 255 + 0.5)
4. resize      to SIZE x SIZE, stretched, antialiased bilinear (Pillow BILINEAR semantics ==
               torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False))
5. normalise   (y - MEAN) / STD
Output of the model: `mask`, float32 [1, 1, OUT, OUT] logits; sigmoid + threshold per pixel.
"""
import numpy as np
import torch
import torch.nn.functional as F

SIZE = 224          # model input H = W
OUT = 56            # model output h = w (stride 4)
# mean/std of y over the synthetic training inputs (after step 4), rounded; see train_us.py stats
MEAN = 0.22
STD = 0.22


def luma(frame):
    """uint8 [H, W] grey or [H, W, 3] RGB -> float64 luma 0..255 (BT.601 full range)."""
    f = np.asarray(frame)
    if f.ndim == 3:
        f = f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114
    return f.astype(np.float64)


def window(v):
    """DICOM LINEAR, center 128, width 256 -> exactly v / 255 for v in 0..255."""
    c, w = 128.0, 256.0
    y = (np.asarray(v, np.float64) - (c - 0.5)) / (w - 1.0) + 0.5
    return np.clip(y, 0.0, 1.0)


def resize(y, size=SIZE):
    t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    squeeze = t.ndim == 2
    t = t.reshape(-1, 1, *t.shape[-2:])
    r = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[:, 0].numpy()
    return r[0] if squeeze else r


def normalise(y):
    return ((y - MEAN) / STD).astype(np.float32)


def crop(frame, box):
    x, y, w, h = box
    return np.asarray(frame)[y:y + h, x:x + w]


def preprocess(frame, box=None):
    """Steps 1-5: frame (uint8 grey or RGB), optional crop box [x, y, w, h] -> float32 [1, 1, SIZE, SIZE]."""
    v = luma(frame)
    if box is not None:
        v = crop(v, box)
    return normalise(resize(window(v))).reshape(1, 1, SIZE, SIZE)


def mask_target(mask):
    """Ground-truth mask (bool, crop raster) -> soft target [OUT, OUT] (fraction of fluid per output cell,
    the same antialiased bilinear resampling as the input)."""
    return resize(mask.astype(np.float32), OUT)
