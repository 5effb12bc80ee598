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
    return P0.resize(y, SIZE)


def normalise(y):
    return P0.normalise(y, MEAN, STD)


def preprocess(stored, slope=1.0, intercept=0.0, c=None, w=None, monochrome1=False):
    """Steps 1-5 -> float32 [1,1,256,256]."""
    return P0.preprocess(stored, slope, intercept, c, w, monochrome1, size=SIZE, mean=MEAN, std=STD)


def preprocess_dataset(ds):
    return P0.preprocess_dataset(ds, size=SIZE, mean=MEAN, std=STD)
