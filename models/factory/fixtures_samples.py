"""Parity fixtures (tests/fixtures/cxr-tiny-cls/) and the sample DICOM files (tests/data/).

Fixtures: 6 preprocessed held-out test inputs (2 per class, each classified correctly by all three forms) as raw
little-endian f32 + parity.json with the onnxruntime (CPUExecutionProvider, 1 thread) logits of the three forms,
rounded to 7 significant digits: `int8` (model.onnx), `pruned` (model.pruned.onnx), `fp32` (model.fp32.onnx).

Samples: Part-10 files, Explicit VR Little Endian, with fake identifiers on purpose (DOE^JANE / PID-0042-SYNTH):
  cxr-ptx-mono2.dcm      pneumothorax, DX, MONOCHROME2, 16/12/11, slope 1 intercept 0
  cxr-ptx-mono1.dcm      same image as MONOCHROME1: stored 4095-p, WindowCenter 4096-c (same width; exact LINEAR mirror)
  cxr-ptx-rescaled.dcm   same stored values, RescaleSlope 2, RescaleIntercept -1000, window c'=2c-1000.5, w'=2w-1
  cxr-normal-mono2.dcm   normal, like the first
  cxr-other-8bit.dcm     other, CR, 8-bit (8/8/7), window in 8-bit units
They were made for 0.1.0 and bedside's tests are written against them, so by default they are NOT rewritten:
`check` reads the committed files, runs the whole contract (pydicom -> preprocess.py -> onnxruntime) with every
form and the thresholds of model.toml, and fails unless the shipped int8 model puts exactly the expected label over
its threshold on each; with dcmtk installed it also checks the codec variants bedside's SCP tests send (JPEG
Extended 12/8-bit, JPEG Baseline 8-bit, JPEG-LS lossless and near-lossless; decoded by dcmtk here, bedside's
decoders may differ by a grey level). REGEN_SAMPLES=1 regenerates them (the 0.1.0 procedure, with all three
forms) - only for a deliberate change of the samples.

  python fixtures_samples.py [fixtures] [check]        (default: both)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib

import numpy as np
import onnxruntime as ort
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import data
import preprocess as P
import synth
import zoo
from quantize_manifest import FORMS, OUT_DIR, session, softmax

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIX_DIR = os.path.join(ROOT, "tests", "fixtures", "cxr-tiny-cls")
DATA_DIR = os.path.join(ROOT, "tests", "data")

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
SAMPLE_SEED0 = 900_000
MIN_PROB = 0.9  # each regenerated sample must be classified correctly with at least this probability (every form)
IMPL_UID = generate_uid(entropy_srcs=["bedside", "model-factory", "implementation"])
# what bedside's tests expect of the shipped model on each committed sample (tests/cli.rs, daemon.rs, scp.rs)
EXPECTED = {"cxr-ptx-mono2.dcm": ["pneumothorax"], "cxr-ptx-mono1.dcm": ["pneumothorax"],
            "cxr-ptx-rescaled.dcm": ["pneumothorax"], "cxr-normal-mono2.dcm": ["normal"],
            "cxr-other-8bit.dcm": ["other"]}


def fixtures():
    os.makedirs(FIX_DIR, exist_ok=True)
    sess = {name: session(path) for name, path in FORMS}
    xt, yt = data.load("test")
    cases = []
    for k in range(3):
        n = 0
        for i in np.where(yt == k)[0]:
            x = xt[i:i + 1]
            outs = {name: s.run(None, {"input": x})[0][0] for name, s in sess.items()}
            if any(o.argmax() != k for o in outs.values()):
                continue
            name = f"case{len(cases)}.f32"
            x.astype("<f4").tofile(os.path.join(FIX_DIR, name))
            c = {"input": name, "label": synth.LABELS[k], "test_index": int(i)}
            for form in ("int8", "pruned", "fp32"):
                c[form] = zoo.rounded7(outs[form])
            cases.append(c)
            n += 1
            if n == 2:
                break
    doc = {"model": "cxr-tiny-cls", "input_shape": [1, 1, P.SIZE, P.SIZE], "output_shape": [1, 3],
           "note": "inputs are after preprocessing step 5 (raw little-endian float32); outputs are logits "
                   f"(normal, pneumothorax, other) from onnxruntime {ort.__version__} CPUExecutionProvider, 1 thread, "
                   "rounded to 7 significant digits; int8 = model.onnx, pruned = model.pruned.onnx, "
                   "fp32 = model.fp32.onnx",
           "cases": cases}
    zoo.save_fixtures(FIX_DIR, doc)


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


def probs_of(v, sess):
    x = P.preprocess(v["pixels"], v["slope"], v["intercept"], v["c"], v["w"], v["photometric"] == "MONOCHROME1")
    return {name: softmax(s.run(None, {"input": x})[0])[0] for name, s in sess.items()}


def pick(label, sess, make):
    """First seed >= SAMPLE_SEED0 whose encodings are all classified as `label` with prob >= MIN_PROB (every form)."""
    for seed in range(SAMPLE_SEED0, SAMPLE_SEED0 + 200):
        stored, c, w = synth.generate(seed, label)
        vs = make(stored, c, w)
        ps = {k: probs_of(v, sess) for k, v in vs.items()}
        if all(p[label] >= MIN_PROB for pf in ps.values() for p in pf.values()):
            return seed, vs, ps
    raise RuntimeError(f"no clear sample for {synth.LABELS[label]}")


def regenerate_samples():
    os.makedirs(DATA_DIR, exist_ok=True)
    sess = {name: session(path) for name, path in FORMS}
    out = []
    seed, vs, ps = pick(1, sess, variants)
    for k in ("mono2", "mono1", "rescaled"):
        out.append((f"cxr-ptx-{k}.dcm", seed, vs[k], DX_FOR_PRESENTATION, "DX", 12))
    seed, vs, ps = pick(0, sess, lambda s, c, w: {"mono2": variants(s, c, w)["mono2"]})
    out.append(("cxr-normal-mono2.dcm", seed, vs["mono2"], DX_FOR_PRESENTATION, "DX", 12))

    def eight(s, c, w):
        return {"8bit": dict(pixels=np.clip(np.rint(s / 16.0), 0, 255).astype(np.uint8), photometric="MONOCHROME2",
                             slope=1, intercept=0, c=int(round(c / 16.0)), w=max(int(round(w / 16.0)), 2))}
    seed, vs, ps = pick(2, sess, eight)
    out.append(("cxr-other-8bit.dcm", seed, vs["8bit"], CR, "CR", 8))
    for name, seed, v, sop, mod, bits in out:
        write_dicom(os.path.join(DATA_DIR, name), v["pixels"], sop_class=sop, modality=mod,
                    photometric=v["photometric"], bits=bits, slope=v["slope"], intercept=v["intercept"],
                    c=v["c"], w=v["w"], key=name)
        print(f"wrote {name} (seed {seed}, c={v['c']} w={v['w']})")


def thresholds():
    man = tomllib.load(open(os.path.join(OUT_DIR, "model.toml"), "rb"))
    return [(l["name"], float(l["threshold"])) for l in man["labels"]]


def verdict(ds, sess, th):
    """Per form: (softmax probabilities, labels over their thresholds) for a pydicom Dataset."""
    x = P.preprocess_dataset(ds)
    out = {}
    for name, s in sess.items():
        p = softmax(s.run(None, {"input": x})[0])[0]
        out[name] = (p, [n for (n, t), v in zip(th, p) if v >= t])
    return out


def codec_variants(path, tmp):
    """The dcmtk conversions bedside's SCP tests make of the committed samples (tests/scp.rs), decoded back to
    Explicit VR Little Endian by dcmtk: {name: (file, rule)}; rule 'exact' = the verdict must equal the
    sample's, 'contains' = must contain its label (lossy 12-bit), 'no-ptx' = must not contain pneumothorax."""
    base = os.path.basename(path)
    if base == "cxr-ptx-mono2.dcm":
        todo = [("jpeg-lossless-sv1", "dcmcjpeg", "+e1", "dcmdjpeg", "exact"),
                ("jpeg-lossless-p14", "dcmcjpeg", "+el", "dcmdjpeg", "exact"),
                ("jpeg-extended-12bit", "dcmcjpeg", "+ee", "dcmdjpeg", "contains"),
                ("jpeg-ls-lossless", "dcmcjpls", "+el", "dcmdjpls", "exact"),
                ("jpeg-ls-near", "dcmcjpls", "+en", "dcmdjpls", "exact")]
    elif base == "cxr-other-8bit.dcm":
        todo = [("jpeg-extended-8bit", "dcmcjpeg", "+ee", "dcmdjpeg", "no-ptx"),
                ("jpeg-baseline-8bit", "dcmcjpeg", "+eb", "dcmdjpeg", "no-ptx")]
    else:
        return {}
    out = {}
    for name, enc, flag, dec, rule in todo:
        if not (shutil.which(enc) and shutil.which(dec)):
            continue
        a, b = os.path.join(tmp, f"{name}.enc.dcm"), os.path.join(tmp, f"{name}.dec.dcm")
        subprocess.run([enc, flag, path, a], check=True, capture_output=True)
        subprocess.run([dec, a, b], check=True, capture_output=True)
        out[f"{base[:-4]}+{name}"] = (b, rule)
    return out


def check():
    """The committed samples through the whole contract with every form; the shipped int8 must match EXPECTED."""
    sess = {name: session(path) for name, path in FORMS}
    th = thresholds()
    print("thresholds", dict(th))
    res, ok = {}, True
    with tempfile.TemporaryDirectory() as tmp:
        for fname, want in EXPECTED.items():
            path = os.path.join(DATA_DIR, fname)
            v = verdict(pydicom.dcmread(path), sess, th)
            res[fname] = {f: {"probs": [round(float(q), 5) for q in p], "over": o} for f, (p, o) in v.items()}
            for form, (p, over) in v.items():
                good = over == want
                if form == "int8" and not good:
                    ok = False
                print(f"{fname:24s} {form:6s} probs {np.round(p, 4)} over {over} "
                      f"{'ok' if good else ('FAILED' if form == 'int8' else 'differs (not shipped)')}")
            for vname, (vpath, rule) in codec_variants(path, tmp).items():
                v2 = verdict(pydicom.dcmread(vpath), {"int8": sess["int8"]}, th)
                p, over = v2["int8"]
                good = {"exact": over == want, "contains": want[0] in over,
                        "no-ptx": "pneumothorax" not in over}[rule]
                ok &= good
                res[vname] = {"int8": {"probs": [round(float(q), 5) for q in p], "over": over}, "rule": rule}
                print(f"  {vname:40s} int8 probs {np.round(p, 4)} over {over} ({rule}) {'ok' if good else 'FAILED'}")
    with open(os.path.join(data.CACHE, "samples.json"), "w") as f:
        json.dump(res, f, indent=1)
    if not ok:
        sys.exit("the shipped model does not give the expected verdicts on the committed samples")
    print("samples: the shipped int8 model gives every expected verdict")


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    what = sys.argv[1:] or ["fixtures", "check"]
    if "fixtures" in what:
        fixtures()
    if os.environ.get("REGEN_SAMPLES") == "1":
        regenerate_samples()
    if "check" in what:
        check()
