"""The reference Python pipeline that bedside is benchmarked against.

What it models: the script a clinic engineer would write to run a model on X-ray DICOM files
with the usual Python stack, doing what bedside does for each image:

  decode   pydicom.dcmread + .pixel_array (pylibjpeg-libjpeg for JPEG Lossless and JPEG-LS,
           pydicom's own handler for RLE Lossless); the first frame of a multi-frame object
  prepare  Modality LUT (rescale), VOI (the manifest's window: "dicom" is the object's own
           VOI LUT or first window, else its full range; or a fixed window), MONOCHROME1
           inverted, Pixel Padding shown black, scaled to [0, 1]; resized to the model's
           input H x W with PIL's antialiased bilinear; normalised with the manifest's
           mean/std; shaped (1, C, H, W)
  infer    onnxruntime, CPU provider, --threads intra-op threads, one inter-op thread

and timing each stage with time.perf_counter. It follows src/prepare.rs (bedside prepares
in one fused pass; the result is the same tensor up to float rounding). Grey images only.

Usage: pipeline.py --model DIR [--rounds N] [--threads 1] [--dump DIR] FILE...

Prints one JSON line per image and round: {"file", "round", "decode_ms", "prepare_ms",
"infer_ms", "total_ms", "scores"}; "scores" is the model's first output flattened, raw (for
cxr-tiny-cls the logits: bedside's findings report them after the manifest's activation).
--dump DIR writes each prepared tensor as DIR/<file name>.npy (first round, outside the
timing), to compare with `bedside prepare --dump`.

Set up with benches/python/setup.sh. Not part of the tests; the figures depend on the machine.
"""

import argparse
import json
import os
import time
import tomllib

import numpy as np
import onnxruntime
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut


def load_model(model_dir, threads):
    """The manifest (model.toml) and an onnxruntime session for its ONNX file."""
    with open(os.path.join(model_dir, "model.toml"), "rb") as f:
        manifest = tomllib.load(f)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        os.path.join(model_dir, manifest["model"]["file"]),
        sess_options=options,
        providers=["CPUExecutionProvider"],
    )
    return manifest, session


def decode(path):
    """The dataset and its stored pixel values (the first frame)."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    return ds, pixels


def window_linear(x, center, width):
    """The DICOM LINEAR window function (PS3.3 C.11.2.1.2.1) onto [0, 1]."""
    if width <= 1:
        return (x > center - 0.5).astype(np.float64)  # width 1: a threshold
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def window_linear_exact(x, center, width):
    """The DICOM LINEAR_EXACT window function (PS3.3 C.11.2.1.3.2) onto [0, 1]."""
    return np.clip((x - center) / width + 0.5, 0.0, 1.0)


def voi_output_range(ds):
    """The range pydicom's apply_voi_lut maps a window onto: the stored range, rescaled."""
    if "ModalityLUTSequence" in ds:
        lo, hi = 0, 2 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    elif ds.PixelRepresentation == 0:
        lo, hi = 0, 2**ds.BitsStored - 1
    else:
        lo, hi = -(2 ** (ds.BitsStored - 1)), 2 ** (ds.BitsStored - 1) - 1
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return lo, hi


def padding_mask(ds, stored):
    """Pixels whose stored value is Pixel Padding (up to Pixel Padding Range Limit)."""
    if "PixelPaddingValue" not in ds:
        return None
    pad = int(ds.PixelPaddingValue)
    limit = int(ds.get("PixelPaddingRangeLimit", pad))
    return (stored >= min(pad, limit)) & (stored <= max(pad, limit))


def display(ds, stored, window):
    """The image as a viewer shows it, in [0, 1] with 0 black (src/prepare.rs `display`)."""
    values = apply_modality_lut(stored, ds).astype(np.float64)
    padding = padding_mask(ds, stored)
    if isinstance(window, dict):
        # A fixed window from the manifest, in modality units, LINEAR.
        shown = window_linear(values, window["center"], window["width"])
    elif "VOILUTSequence" in ds:
        # The object's VOI LUT wins over its windows; its entries span 0..2^bits-1.
        bits = ds.VOILUTSequence[0].LUTDescriptor[2]
        entries = apply_voi_lut(np.rint(values).astype(np.int64), ds)  # it indexes by integers
        shown = np.minimum(entries / (2**bits - 1), 1.0)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        # The object's first window (pydicom applies its VOI LUT Function).
        lo, hi = voi_output_range(ds)
        shown = (apply_voi_lut(values, ds, index=0) - lo) / (hi - lo)
    else:
        # No VOI: the image's full range (padding aside), LINEAR_EXACT.
        present = values if padding is None else values[~padding]
        lo, hi = (present.min(), present.max()) if present.size else (0.0, 0.0)
        shown = window_linear_exact(values, (lo + hi) / 2, max(hi - lo, 1.0))
    if ds.PhotometricInterpretation == "MONOCHROME1":
        shown = 1.0 - shown
    if padding is not None:
        shown[padding] = 0.0  # no image there: black
    return shown


def prepare(ds, stored, manifest):
    """The model's input tensor, float32 (1, C, H, W)."""
    _, channels, height, width = manifest["input"]["shape"]
    spec = manifest["preprocess"]
    shown = display(ds, stored, spec["window"])
    # Antialiased bilinear: PIL widens the triangle filter by the scale when shrinking.
    image = Image.fromarray(shown.astype(np.float32), mode="F")
    resized = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32)
    normalised = (resized - np.float32(spec["mean"])) / np.float32(spec["std"])
    return np.repeat(normalised[None, None], channels, axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder (model.toml and its ONNX file)")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the files (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--dump", help="write each prepared tensor as DIR/<file name>.npy")
    parser.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args()

    manifest, session = load_model(args.model, args.threads)
    input_name = manifest["input"]["name"]
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)

    for r in range(args.rounds):
        for path in args.files:
            name = os.path.basename(path)
            t0 = time.perf_counter()
            ds, stored = decode(path)
            t1 = time.perf_counter()
            tensor = prepare(ds, stored, manifest)
            t2 = time.perf_counter()
            outputs = session.run(None, {input_name: tensor})
            t3 = time.perf_counter()
            if args.dump and r == 0:
                np.save(os.path.join(args.dump, name + ".npy"), tensor)
            line = {
                "file": name,
                "round": r,
                "decode_ms": (t1 - t0) * 1e3,
                "prepare_ms": (t2 - t1) * 1e3,
                "infer_ms": (t3 - t2) * 1e3,
                "total_ms": (t3 - t0) * 1e3,
                "scores": [float(s) for s in np.ravel(outputs[0])],
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
