"""Synthetic cine clip tests/data/us/fast-clip.dcm with a known free-fluid event, plus its metadata and the
int8 model's per-frame scores.

  python clip_us.py      -> tests/data/us/fast-clip.dcm, fast-clip.json, fast-clip.scores.json

Ultrasound Multi-frame Image (1.2.840.10008.5.1.4.1.1.3.1), 8-bit MONOCHROME2, JPEG Baseline
(1.2.840.10008.1.2.4.50, Pillow quality 85, pydicom encapsulate), 240 frames at 30 fps, 360 x 480.
One RUQ scene (synth_us), breathing (anatomy moves 5 mm caudally/2 mm deep, 4 s period) and a slow probe
rotation (+-3 deg over the clip); speckle is attached to the tissue so it moves with it. Free fluid in Morison's
pouch is present in frames 100..=160 only; the confounders (gallbladder, IVC-like tube, rib shadow) are there
throughout. Burned-in overlay (depth ticks, a text-like block, a grey bar) lies outside the sector's crop box.
Scores: every frame decoded back from the file with pydicom, preprocessed per the contract
(preprocess_us.preprocess with the crop), run through model.onnx (int8) in onnxruntime (1 thread).
"""
import io
import json
import math
import os

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

import preprocess_us as P
import synth_us

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
DATA_DIR = os.path.join(ROOT, "tests", "data", "us")
DCM = os.path.join(DATA_DIR, "fast-clip.dcm")
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
FRAMES, FPS = 240, 30
EVENT = (100, 160)           # inclusive
ROWS, COLS = 360, 480
MM = 0.6                     # pixel spacing (mm), both directions
CLIP_SEED = 777_001
QUALITY = int(os.environ.get("CLIP_JPEG_QUALITY", "85"))
ANGLE, R0, DEPTH = 66.0, 35.0, 130.0   # sector width (deg), apex-to-skin (mm), imaging depth (mm)


def clip_scene():
    rng = np.random.default_rng([CLIP_SEED, 1])
    s = synth_us.scene(rng, positive=True, fluid_mm=11.0)
    # fixed, readable acquisition for the clip
    s.update(angle=ANGLE, r0=R0, depth=DEPTH, n_lines=168, psf_ax=1.6, psf_lat=1.6, alpha=0.32, tgc_err=0.97,
             noise_db=-72.0, dr=58.0, grey=112.0, rev_amp=0.8, smooth=0.7, rot=-4.0, shift=(4.0, -6.0), scale=1.0)
    s["kidney"].update(c=(14.0, 96.0), a=50.0, b=25.0, psi=-14.0, cyst=None, fat_rim=None)
    s["liver_tip"], s["liver_wrap"], s["liver_slope"] = 0.8, 1.5, 1.0
    s["diaph"] = (-68.0 + 120.0, 80.0, 120.0)
    s["fluid"].update(t=11.0, phic=-112.0, half=62.0, sharp=0.8, echo=0.02)
    # confounders, always present: gallbladder (dark oval) away from the pouch, an IVC-like tube, a rib shadow
    s["gb"] = dict(near=False, phi=-75.0, off=25.0, a=20.0, b=9.0, rot=10.0, wall=2.5, sludge=False)
    s["vessels"] = [dict(kind="ivc", r=8.0, wall=True, rel=(-1.3, 0.7, 80.0, 8.0, -6.0)),
                    dict(kind="hv", r=3.5, wall=False, rel=(-0.2, -2.6, 45.0, 150.0, 8.0))]
    s["ribs"] = [(0.9, 0.08, 3.5)]
    s["gas"] = [(1.1, 1.5, 5.0)]
    return s


def box_mm():
    """Raster of the sector: ROWS_S x COLS_S pixels of MM, covering the fan's bounding box."""
    h = math.radians(ANGLE / 2)
    rmax = R0 + DEPTH
    z0 = R0 * math.cos(h)
    cols_s = int(math.ceil(2 * rmax * math.sin(h) / MM))
    rows_s = int(math.ceil((rmax - z0) / MM))
    return (-cols_s * MM / 2, z0, cols_s * MM / 2, z0 + rows_s * MM), rows_s, cols_s


def overlay(frame, crop, t):
    """Burned-in marks outside the crop box: depth ticks (every 1 cm) right of the sector, a text-like block and a
    frame-counter-like block at the top, a grey bar on the left."""
    x, y, w, h = crop
    for cm in range(0, int(h * MM / 10) + 1):
        r = y + int(round(cm * 10 / MM))
        if r < ROWS:
            L = 10 if cm % 5 == 0 else 6
            frame[max(r - 1, 0):r + 1, x + w + 8:x + w + 8 + L] = 220
    rng = np.random.default_rng([CLIP_SEED, 2])
    glyphs = rng.random((2, 14, 3, 5)) < 0.55        # two lines of 14 fake 3x5 glyphs, scaled x2
    for line in range(2):
        for g in range(14):
            gy, gx = 6 + line * 13, 8 + g * 8
            frame[gy:gy + 10, gx:gx + 6] = np.kron(glyphs[line, g].T, np.ones((2, 2), np.uint8))[:10, :6] * 200
    # a clock-like block that changes every second (still outside the crop)
    sec = t // FPS
    bits = np.array([(sec >> i) & 1 for i in range(8)], bool)
    for i, b in enumerate(bits):
        frame[8:18, COLS - 90 + i * 10:COLS - 90 + i * 10 + 7] = 180 if b else 40
    frame[y + 20:y + h - 20, 8:18] = np.linspace(255, 0, h - 40).astype(np.uint8)[:, None]
    return frame


def render_frames():
    s = clip_scene()
    box, rows_s, cols_s = box_mm()
    x0 = (COLS - cols_s) // 2
    y0 = 44
    crop = [x0, y0, cols_s, rows_s]
    frames, masks = [], []
    for t in range(FRAMES):
        breathe = (5.0 * (0.5 - 0.5 * math.cos(2 * math.pi * t / 120.0)), 2.0 * (0.5 - 0.5 * math.cos(2 * math.pi * t / 120.0)))
        rot = 3.0 * math.sin(2 * math.pi * t / FRAMES)
        fs = 1.0 if EVENT[0] <= t <= EVENT[1] else 0.0
        img, mask, mm = synth_us.render(s, rows_s, box, breathe=breathe, probe_rot=rot, fluid_scale=fs,
                                        noise_key=CLIP_SEED * 1000 + t)
        assert img.shape == (rows_s, cols_s) and abs(mm - MM) < 1e-9, (img.shape, mm)
        f = np.zeros((ROWS, COLS), np.uint8)
        f[y0:y0 + rows_s, x0:x0 + cols_s] = img
        frames.append(overlay(f, crop, t))
        masks.append(mask)
    return frames, masks, crop


def jpeg_bytes(frame):
    b = io.BytesIO()
    Image.fromarray(frame).save(b, format="JPEG", quality=QUALITY, optimize=True)   # baseline, optimised Huffman
    return b.getvalue()


def write_dicom(frames, crop):
    uid = lambda what: generate_uid(entropy_srcs=["bedside", "us-fast-fluid", "fast-clip", str(CLIP_SEED), what])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_MULTIFRAME
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["bedside", "model-factory", "implementation"])
    meta.ImplementationVersionName = "BEDSIDE_FACTORY"
    ds = FileDataset(DCM, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY", "ABDOMINAL", ""]
    ds.SOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240611"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = ""
    ds.Modality = "US"
    ds.Manufacturer = "bedside model factory (synthetic phantom)"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC FAST PHANTOM"
    ds.SeriesDescription = "RUQ Morison pouch, synthetic cine"
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = "SYNTH-US-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "ABDOMEN"
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = len(frames)
    ds.FrameTime = "33.33"
    ds.CineRate = FPS
    ds.RecommendedDisplayFrameRate = FPS
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x0018, 0x1063)
    ds.PixelSpacing = [f"{MM:.2f}", f"{MM:.2f}"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    x, y, w, h = crop
    region = pydicom.Dataset()
    region.RegionSpatialFormat = 1          # 2D
    region.RegionDataType = 1               # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = x, y
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x + w - 1, y + h - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3   # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = MM / 10.0
    ds.SequenceOfUltrasoundRegions = [region]
    blobs = [jpeg_bytes(f) for f in frames]
    raw = sum(f.size for f in frames)
    ds.LossyImageCompressionRatio = f"{raw / sum(len(b) for b in blobs):.2f}"
    ds.PixelData = encapsulate(blobs)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(DCM, enforce_file_format=True)
    return os.path.getsize(DCM)


def scores(crop):
    import onnxruntime as ort
    from quantize_us import INT8, session, THRESHOLD
    mf = None
    toml = os.path.join(ROOT, "models", "us-fast-fluid", "model.toml")
    for line in open(toml):
        if line.startswith("min_fraction"):
            mf = float(line.split("=")[1])
    ds = pydicom.dcmread(DCM)
    arr = ds.pixel_array                    # [frames, rows, cols] uint8, decoded by pydicom (Pillow)
    s = session(INT8)
    frac = []
    for t in range(arr.shape[0]):
        logits = s.run(None, {"input": P.preprocess(arr[t], crop)})[0]
        frac.append(float((logits > 0).mean()))
    present = [f >= mf for f in frac]
    area = [f * crop[2] * crop[3] * MM * MM for f in frac]
    on = [t for t, p in enumerate(present) if p]
    doc = {"model": "us-fast-fluid", "form": "int8 (model.onnx)",
           "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider, 1 thread",
           "decoder": f"pydicom {pydicom.__version__} pixel_array (Pillow {Image.__version__ if hasattr(Image, '__version__') else ''})",
           "threshold": THRESHOLD, "min_fraction": mf,
           "fraction": [round(f, 6) for f in frac], "area_mm2": [round(a, 2) for a in area], "present": present,
           "present_frames": on}
    with open(os.path.join(DATA_DIR, "fast-clip.scores.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    inside = [t for t in range(EVENT[0], EVENT[1] + 1)]
    missed = [t for t in inside if not present[t]]
    extra = [t for t in on if not EVENT[0] <= t <= EVENT[1]]
    print(f"present frames {len(on)}: first {on[0] if on else None} last {on[-1] if on else None}; "
          f"event frames missed {missed}; present outside the event {extra}")
    print("fraction inside event min %.4f, outside event max %.4f (min_fraction %.5f)" %
          (min(frac[t] for t in inside), max(frac[t] for t in range(FRAMES) if t not in inside), mf))
    return doc


def main():
    os.makedirs(DATA_DIR, exist_ok=True)
    frames, masks, crop = render_frames()
    size = write_dicom(frames, crop)
    print("wrote", DCM, size, "bytes; crop", crop)
    assert size <= 4 * 1024 * 1024, size
    meta = {"frames": FRAMES, "fps": FPS, "event_first": EVENT[0], "event_last": EVENT[1], "crop": crop,
            "pixel_spacing_mm": [MM, MM], "model": "us-fast-fluid"}
    with open(os.path.join(DATA_DIR, "fast-clip.json"), "w") as f:
        json.dump(meta, f)
        f.write("\n")
    gt = [float(m.mean()) for m in masks]
    print("ground-truth fluid fraction of the crop: event frames min %.4f, outside max %.4f" %
          (min(gt[EVENT[0]:EVENT[1] + 1]), max(gt[:EVENT[0]] + gt[EVENT[1] + 1:])))
    scores(crop)


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    main()
