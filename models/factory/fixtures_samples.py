"""Parity fixtures (tests/fixtures/cxr-tiny-cls/) and sample DICOM files (tests/data/).

Fixtures: 6 preprocessed held-out test inputs (2 per class) as raw little-endian f32 + parity.json with the
onnxruntime (CPUExecutionProvider, 1 thread) logits of the int8 and fp32 models.

Samples: Part-10 files, Explicit VR Little Endian, with fake identifiers on purpose (DOE^JANE / PID-0042-SYNTH):
  cxr-ptx-mono2.dcm      pneumothorax, DX, MONOCHROME2, 16/12/11, slope 1 intercept 0
  cxr-ptx-mono1.dcm      same image as MONOCHROME1: stored 4095-p, WindowCenter 4096-c (same width; exact LINEAR mirror)
  cxr-ptx-rescaled.dcm   same stored values, RescaleSlope 2, RescaleIntercept -1000, window c'=2c-1000.5, w'=2w-1
  cxr-normal-mono2.dcm   normal, like the first
  cxr-other-8bit.dcm     other, CR, 8-bit (8/8/7), window in 8-bit units
"""
import json
import os

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import data
import preprocess as P
import synth
from quantize_manifest import FP32, INT8, session, softmax

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIX_DIR = os.path.join(ROOT, "tests", "fixtures", "cxr-tiny-cls")
DATA_DIR = os.path.join(ROOT, "tests", "data")

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
SAMPLE_SEED0 = 900_000
MIN_PROB = 0.9  # each sample must be classified correctly with at least this softmax probability (fp32 and int8)
IMPL_UID = generate_uid(entropy_srcs=["bedside", "model-factory", "implementation"])


def fixtures():
    os.makedirs(FIX_DIR, exist_ok=True)
    s32, s8 = session(FP32), session(INT8)
    xt, yt = data.load("test")
    cases = []
    for k in range(3):
        n = 0
        for i in np.where(yt == k)[0]:
            x = xt[i:i + 1]
            l8, l32 = s8.run(None, {"input": x})[0][0], s32.run(None, {"input": x})[0][0]
            if l8.argmax() != k or l32.argmax() != k:
                continue
            name = f"case{len(cases)}.f32"
            x.astype("<f4").tofile(os.path.join(FIX_DIR, name))
            cases.append({"input": name, "label": synth.LABELS[k], "test_index": int(i),
                          "ort_int8": [float(v) for v in l8], "ort_fp32": [float(v) for v in l32]})
            n += 1
            if n == 2:
                break
    doc = {"model": "cxr-tiny-cls", "input_shape": [1, 1, P.SIZE, P.SIZE],
           "note": "inputs are after preprocessing step 5; logits from onnxruntime "
                   f"{__import__('onnxruntime').__version__} CPUExecutionProvider, 1 thread",
           "cases": cases}
    with open(os.path.join(FIX_DIR, "parity.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("wrote", len(cases), "fixtures to", FIX_DIR)


def write_dicom(path, pixels, *, sop_class, modality, photometric, bits, slope, intercept, c, w, key):
    uid = lambda what: generate_uid(entropy_srcs=["bedside", "cxr-tiny-cls-samples", key, what])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPL_UID
    meta.ImplementationVersionName = "BEDSIDE_FACTORY"
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240611"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = "ACC-SYNTH-0001"
    ds.Modality = modality
    ds.Manufacturer = "bedside model factory (synthetic phantom)"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC CHEST PHANTOM"
    ds.SeriesDescription = f"synthetic {key}"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "PID-0042-SYNTH"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.RescaleType = "US"
        ds.ImagerPixelSpacing = [0.8, 0.8]
    ds.PixelSpacing = [0.8, 0.8]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = f"{slope:g}"
    ds.WindowCenter = f"{c:g}"
    ds.WindowWidth = f"{w:g}"
    ds.VOILUTFunction = "LINEAR"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if bits == 8:
        ds.PixelData = pixels.astype(np.uint8).tobytes()
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)


def variants(stored, c, w):
    """The three displays-identically encodings of one 12-bit image (pneumothorax sample)."""
    return {
        "mono2": dict(pixels=stored, photometric="MONOCHROME2", slope=1, intercept=0, c=c, w=w),
        # Exact mirrors under the DICOM LINEAR function y = (x - (c - 0.5)) / (w - 1) + 0.5: its -0.5 and -1
        # offsets do not scale or flip with the pixels, so the naive 4095-c and (2c-1000, 2w) are off by a
        # fraction of a grey level. Inverting x -> 4095-x needs c' = 4096-c; x -> 2x-1000 needs
        # c' = 2c-1000.5 and w' = 2w-1. Then a viewer (and bedside) shows all three identically.
        "mono1": dict(pixels=4095 - stored, photometric="MONOCHROME1", slope=1, intercept=0, c=4096 - c, w=w),
        "rescaled": dict(pixels=stored, photometric="MONOCHROME2", slope=2, intercept=-1000, c=2 * c - 1000.5, w=2 * w - 1),
    }


def probs_of(v, s32, s8):
    x = P.preprocess(v["pixels"], v["slope"], v["intercept"], v["c"], v["w"], v["photometric"] == "MONOCHROME1")
    return softmax(s32.run(None, {"input": x})[0])[0], softmax(s8.run(None, {"input": x})[0])[0]


def pick(label, s32, s8, make):
    """First seed >= SAMPLE_SEED0 whose encodings are all classified as `label` with prob >= MIN_PROB."""
    for seed in range(SAMPLE_SEED0, SAMPLE_SEED0 + 200):
        stored, c, w = synth.generate(seed, label)
        vs = make(stored, c, w)
        ps = {k: probs_of(v, s32, s8) for k, v in vs.items()}
        if all(p32[label] >= MIN_PROB and p8[label] >= MIN_PROB for p32, p8 in ps.values()):
            return seed, vs, ps
    raise RuntimeError(f"no clear sample for {synth.LABELS[label]}")


def samples():
    os.makedirs(DATA_DIR, exist_ok=True)
    s32, s8 = session(FP32), session(INT8)
    out = []
    seed, vs, ps = pick(1, s32, s8, variants)
    for k in ("mono2", "mono1", "rescaled"):
        out.append((f"cxr-ptx-{k}.dcm", "pneumothorax", seed, vs[k], ps[k], DX_FOR_PRESENTATION, "DX", 12))
    seed, vs, ps = pick(0, s32, s8, lambda s, c, w: {"mono2": variants(s, c, w)["mono2"]})
    out.append(("cxr-normal-mono2.dcm", "normal", seed, vs["mono2"], ps["mono2"], DX_FOR_PRESENTATION, "DX", 12))

    def eight(s, c, w):
        return {"8bit": dict(pixels=np.clip(np.rint(s / 16.0), 0, 255).astype(np.uint8), photometric="MONOCHROME2",
                             slope=1, intercept=0, c=int(round(c / 16.0)), w=max(int(round(w / 16.0)), 2))}
    seed, vs, ps = pick(2, s32, s8, eight)
    out.append(("cxr-other-8bit.dcm", "other", seed, vs["8bit"], ps["8bit"], CR, "CR", 8))

    for name, label, seed, v, (p32, p8), sop, mod, bits in out:
        path = os.path.join(DATA_DIR, name)
        write_dicom(path, v["pixels"], sop_class=sop, modality=mod, photometric=v["photometric"], bits=bits,
                    slope=v["slope"], intercept=v["intercept"], c=v["c"], w=v["w"], key=name)
        # re-read the file and run the whole contract from the DICOM attributes
        ds = pydicom.dcmread(path)
        x = P.preprocess_dataset(ds)
        q32 = softmax(s32.run(None, {"input": x})[0])[0]
        q8 = softmax(s8.run(None, {"input": x})[0])[0]
        assert q32.argmax() == synth.LABELS.index(label) and q8.argmax() == synth.LABELS.index(label), name
        print(f"{name:24s} {label:12s} seed {seed} c={v['c']} w={v['w']} fp32 {np.round(q32, 4)} int8 {np.round(q8, 4)} "
              f"{os.path.getsize(path)} bytes")


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    fixtures()
    samples()
