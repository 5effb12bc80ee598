"""The preprocessing contract of cxr-tiny-det: models/factory/preprocess.py (cxr-tiny-cls) steps 1-5, with the
resize to 256x256 and this model's mean/std.

1. Modality LUT   v = stored * slope + intercept
2. VOI LINEAR     DICOM PS3.3 C.11.2.1.2.1 with the first WindowCenter/WindowWidth, output [0,1];
                  no window -> min/max of v over the image
3. MONOCHROME1    y = 1 - y
4. resize         256x256 stretched, antialiased bilinear (Pillow BILINEAR semantics ==
                  torch interpolate(mode="bilinear", antialias=True, align_corners=False))
5. normalise      (y - MEAN) / STD
Boxes come back to the original image as x * cols / 256, y * rows / 256.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))
import preprocess as P0  # noqa: E402

SIZE = 256
STRIDE = 8
GRID = SIZE // STRIDE
# mean/std of y (after step 4) over 40 training images (0.342/0.272), rounded; the same as cxr-tiny-cls
MEAN = 0.34
STD = 0.27

display = P0.display


def resize(y):
    t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    squeeze = t.ndim == 2
    t = t.reshape(-1, 1, *t.shape[-2:])
    r = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)[:, 0].numpy()
    return r[0] if squeeze else r


def normalise(y):
    return ((y - MEAN) / STD).astype(np.float32)


def preprocess(stored, slope=1.0, intercept=0.0, c=None, w=None, monochrome1=False):
    """Steps 1-5 -> float32 [1,1,256,256]."""
    return normalise(resize(display(stored, slope, intercept, c, w, monochrome1))).reshape(1, 1, SIZE, SIZE)


def preprocess_dataset(ds):
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
                      ds.PhotometricInterpretation == "MONOCHROME1")
