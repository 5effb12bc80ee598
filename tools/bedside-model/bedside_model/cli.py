"""`bedside-model build`: a checkpoint in, a bedside model folder out (or a refusal that says why).

Exit status: 0 built; 1 refused (tract cannot load it, parity fails, quantization incomplete); 2 bad arguments or
inputs (dynamic input shape, output that does not fit the labels, no calibration image); 3 refused by the eval gate
(the int8 model's main metric more than --max-drop below its fp32 parent's, as `bedside eval` exits)."""
import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from . import Refused, UsageError, __version__
from . import bedside as bs
from . import card, fixtures, manifest, quantize, source

# Files this tool writes in OUT (removed by --force before a rebuild).
OUTPUTS = ("model.onnx", "model.fp32.onnx", "model.toml", "MODEL_CARD.md", "REJECTED.txt", "fixtures", "eval")


def ints(text):
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers separated by commas, e.g. 1,1,224,224")


def floats(text):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas")


def window(text):
    if text == "dicom":
        return "dicom"
    v = floats(text)
    if len(v) != 2 or v[1] < 1:
        raise argparse.ArgumentTypeError(f"--window {text!r}: `dicom` or CENTER,WIDTH (width >= 1)")
    return (v[0], v[1])


def parser():
    p = argparse.ArgumentParser(prog="bedside-model", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"bedside-model {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a bedside model folder", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", metavar="FILE", help="fp32 ONNX model")
    src.add_argument("--monai-bundle", metavar="DIR",
                     help="MONAI bundle folder with model.onnx or models/model.onnx (+ metadata.json)")
    src.add_argument("--torch", metavar="MODULE:FACTORY",
                     help="PyTorch module factory, exported at opset 17 (needs the torch extra)")
    b.add_argument("--example-shape", type=ints, metavar="N,C,H,W", help="input shape for --torch export")
    b.add_argument("--prune", type=float, metavar="RATIO",
                   help="--torch: remove this fraction of every layer's channels (torch-pruning, L1), then quantize")
    b.add_argument("--prune-round-to", type=int, default=8, metavar="N", help="pruned widths a multiple of N (8)")
    b.add_argument("--finetune", metavar="MODULE:FUNC",
                   help="--prune: FUNC(model) fine-tunes the pruned model on your data (returns it, or None)")
    b.add_argument("--input-shape", type=ints, metavar="1,1,H,W", help="fix a dynamic input shape")
    b.add_argument("--task", required=True, choices=["classification", "segmentation", "detection"])
    b.add_argument("--labels", help="label names in output order, comma-separated (default: the bundle's)")
    b.add_argument("--label-code", action="append", default=[], metavar="LABEL=SCHEME:VALUE:MEANING",
                   help="the coded concept of a label for DICOM reports, e.g. pneumothorax=SCT:36118008:Pneumothorax "
                        "(repeat per label; without one a label is coded in bedside's private scheme 99BEDSIDE)")
    b.add_argument("--thresholds", type=floats, required=True,
                   help="per label (or one for all): probability for classification/detection, per-pixel "
                        "probability for segmentation")
    b.add_argument("--min-fraction", type=floats, help="segmentation: fraction of the image per label (or one)")
    b.add_argument("--activation", choices=["softmax", "sigmoid"],
                   help="default: softmax for classification with 2+ labels, else sigmoid")
    b.add_argument("--id", required=True, dest="model_id")
    b.add_argument("--version", required=True, dest="model_version")
    b.add_argument("--description", help="one line for model.toml")
    b.add_argument("--window", type=window, default="dicom", help="`dicom` (default) or CENTER,WIDTH")
    b.add_argument("--mean", type=float, required=True)
    b.add_argument("--std", type=float, required=True)
    b.add_argument("--calib", required=True, metavar="DIR", help="calibration images (DICOM, PNG, NIfTI)")
    b.add_argument("--out", required=True, metavar="DIR")
    b.add_argument("--eval-data", metavar="DIR", help="labelled folder for the eval gate (docs/eval.md)")
    b.add_argument("--max-drop", type=float, default=0.02, help="eval gate margin on the main metric (0.02)")
    b.add_argument("--bedside", metavar="PATH", help="bedside binary (default: $BEDSIDE, PATH, target/*/bedside)")
    b.add_argument("--exclude-head", action="store_true", help="keep the last Conv (a 1x1 head) in fp32")
    b.add_argument("--stride", type=int, help="detection: input pixels per grid cell")
    b.add_argument("--iou-threshold", type=float, help="detection: NMS IoU")
    b.add_argument("--max-detections", type=int, help="detection: boxes per image")
    b.add_argument("--min-mask-agreement", type=float, default=0.999, help="segmentation parity (0.999)")
    b.add_argument("--min-box-iou", type=float, default=0.9, help="detection parity (0.9)")
    b.add_argument("--fixtures", type=int, default=6, help="parity cases (4-6 of the calibration tensors)")
    b.add_argument("--parity-ceiling", type=float, default=1e-3,
                   help="refuse when max |tract - onnxruntime| on the int8 model exceeds this (1e-3)")
    b.add_argument("--fp32-parity-ceiling", type=float, default=1e-4,
                   help="the same for the fp32 parent (1e-4)")
    b.add_argument("--no-bench", action="store_true", help="skip `bedside bench`")
    b.add_argument("--force", action="store_true", help="rebuild into an OUT that already holds a model")
    b.add_argument("--keep-work", action="store_true", help="keep the temporary folder (calibration tensors)")
    b.add_argument("-v", "--verbose", action="store_true")
    return p


def say(msg):
    print(f"bedside-model: {msg}", flush=True)


def warn(msg):
    print(f"bedside-model: warning: {msg}", file=sys.stderr, flush=True)


def cpu_name():
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def per_label(values, labels, what):
    if values is None:
        return None
    if len(values) == 1:
        return values * len(labels)
    if len(values) != len(labels):
        raise UsageError(f"{what}: {len(values)} values for {len(labels)} labels {labels}")
    return values


def label_codes(given, labels):
    """--label-code LABEL=SCHEME:VALUE:MEANING, checked as bedside checks a manifest's `code`: a value
    of at most 64 characters, a scheme of at most 16 without spaces, a meaning; one per label."""
    codes = {}
    for g in given:
        name, _, rest = g.partition("=")
        parts = rest.split(":", 2)
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise UsageError(f"--label-code {g!r}: write LABEL=SCHEME:VALUE:MEANING, e.g. pneumothorax=SCT:36118008:Pneumothorax")
        scheme, value, meaning = (p.strip() for p in parts)
        if name not in labels:
            raise UsageError(f"--label-code {g!r}: {name!r} is not one of the labels {labels}")
        if name in codes:
            raise UsageError(f"--label-code: {name!r} is coded twice")
        if len(value) > 64 or len(scheme) > 16 or " " in scheme or len(meaning) > 64:
            raise UsageError(f"--label-code {g!r}: the value at most 64 characters, the scheme at most 16 without spaces, "
                             "the meaning at most 64")
        codes[name] = {"value": value, "scheme": scheme, "meaning": meaning}
    return codes


def spec_from_args(a, src):
    labels = [s.strip() for s in a.labels.split(",")] if a.labels else list(src.labels)
    if not labels or any(not l for l in labels):
        raise UsageError("--labels: give the label names in output order (the source names none)")
    if len(set(labels)) != len(labels):
        raise UsageError(f"--labels {labels}: names repeat")
    th = per_label(a.thresholds, labels, "--thresholds")
    if any(not 0 <= t <= 1 for t in th):
        raise UsageError(f"--thresholds {th}: each in [0, 1]")
    mf = per_label(a.min_fraction, labels, "--min-fraction")
    if a.task == "segmentation":
        if mf is None or any(not 0 <= v <= 1 for v in mf):
            raise UsageError("a segmentation model needs --min-fraction in [0, 1] (one per label, or one for all)")
    elif mf is not None:
        raise UsageError("--min-fraction is for segmentation models")
    det = None
    if a.task == "detection":
        if a.stride is None or a.iou_threshold is None or a.max_detections is None:
            raise UsageError("a detection model needs --stride, --iou-threshold and --max-detections")
        det = {"stride": a.stride, "iou_threshold": a.iou_threshold, "max_detections": a.max_detections}
    act = a.activation or ("softmax" if a.task == "classification" and len(labels) > 1 else "sigmoid")
    if not (a.std > 0 and np.isfinite(a.mean)):
        raise UsageError(f"--std {a.std} must be > 0 and --mean finite")
    desc = a.description or src.metadata.get("description")
    codes = label_codes(a.label_code, labels)
    return {"id": a.model_id, "version": a.model_version, "task": a.task, "labels": [
        {"name": n, "threshold": t, "min_fraction": None if mf is None else mf[i], "code": codes.get(n)}
        for i, (n, t) in enumerate(zip(labels, th))], "activation": act, "window": a.window,
        "mean": a.mean, "std": a.std, "detection": det, "description": desc}


def refuse_file(out, reason, status):
    if os.path.isdir(out):
        with open(os.path.join(out, "REJECTED.txt"), "w") as fh:
            fh.write(f"bedside-model {__version__} refused this folder "
                     f"({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, exit status {status}):\n\n"
                     f"{reason}\n\nThe files here are what was made up to that point; do not ship them.\n")


def build(a):
    out = os.path.abspath(a.out)
    if os.path.isdir(out) and os.listdir(out):
        if not a.force and os.path.exists(os.path.join(out, "model.toml")):
            raise UsageError(f"--out {a.out} already holds a model (model.toml); pass --force to rebuild it")
        for name in OUTPUTS:
            p = os.path.join(out, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    if a.calib and not os.path.exists(a.calib):
        raise UsageError(f"--calib {a.calib}: no such file or folder")
    if a.eval_data and not os.path.isdir(a.eval_data):
        raise UsageError(f"--eval-data {a.eval_data}: not a folder")
    if not 4 <= a.fixtures <= 64:
        raise UsageError("--fixtures: between 4 and 64 cases")
    if a.prune is not None and not a.torch:
        raise UsageError("--prune works on a PyTorch module (--torch MODULE:FACTORY): an ONNX file has no weights "
                         "to fine-tune after pruning")
    if a.finetune and a.prune is None:
        raise UsageError("--finetune is the hook run after --prune")
    binary = bs.find(a.bedside)
    bed = bs.Bedside(binary, verbose=a.verbose)
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bedside-model-")
    try:
        return _build(a, out, work, bed)
    except Refused as e:
        # OUT is left as it is, for a look; REJECTED.txt says it must not ship, and why.
        refuse_file(out, str(e), e.status)
        raise
    finally:
        if a.keep_work:
            say(f"kept the work folder {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _build(a, out, work, bed):
    # 1. the fp32 model: one input, fixed [1, 1, H, W]; its first output fits the labels.
    if a.onnx:
        src = source.from_onnx(a.onnx)
    elif a.monai_bundle:
        src = source.from_monai_bundle(a.monai_bundle)
    else:
        src = source.from_torch(a.torch, a.example_shape, work, a.prune, a.prune_round_to, a.finetune, say)
    spec = spec_from_args(a, src)
    fp32 = os.path.join(out, "model.fp32.onnx")
    override = a.input_shape or src.input_shape
    in_name, in_shape = source.fix_input(src.onnx_path, fp32, override)
    try:
        s32 = fixtures.session(fp32)
        out_name, out_shape, n_out = source.output_info(s32)
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors are plain exceptions
        raise Refused(f"onnxruntime cannot run the fp32 model on a zero {in_shape} input: {e}", status=2)
    if n_out > 1:
        warn(f"the model has {n_out} outputs; bedside reads only the first, `{out_name}` {out_shape}")
    source.check_output(a.task, out_shape, [l["name"] for l in spec["labels"]], in_shape[2:],
                        (spec["detection"] or {}).get("stride"))
    fp32_sha = manifest.sha256(fp32)
    m = {**spec, "file": "model.fp32.onnx", "sha256": fp32_sha, "input_name": in_name, "input_shape": in_shape,
         "output_name": out_name}
    say(f"fp32 model {fp32}: input `{in_name}` {in_shape}, output `{out_name}` {out_shape}")
    # The model that gets quantized: the pruned one when there is one, else the fp32 parent.
    base, pruned = fp32, None
    if src.pruned_path:
        pruned = os.path.join(out, "model.pruned.onnx")
        source.fix_input(src.pruned_path, pruned, override)
        p_shape = source.output_info(fixtures.session(pruned))[1]
        if p_shape != out_shape:
            raise Refused(f"the pruned model's output {p_shape} is not the parent's {out_shape}", status=2)
        m["pruned"] = {"file": "model.pruned.onnx", "sha256": manifest.sha256(pruned)}
        base = pruned
        say(f"pruned fp32 model {pruned}: {os.path.getsize(pruned):,} B (parent {os.path.getsize(fp32):,} B)")

    # 2. calibration tensors, made by bedside's own preparation (a draft manifest naming the fp32 file).
    manifest.write(os.path.join(out, "model.toml"), m)
    dump = os.path.join(work, "calib")
    r = bed.prepare(out, dump, [a.calib])
    index_path = os.path.join(dump, "index.json")
    if r.returncode not in (0, 2) or not os.path.exists(index_path):
        raise Refused(f"bedside prepare failed (exit {r.returncode}):\n{r.tail()}", status=2)
    index = json.load(open(index_path))["tensors"]
    good = [t for t in index if "tensor" in t]
    bad = [t for t in index if "error" in t]
    if not good:
        why = "; ".join(f"{t['image']}: {t['error']}" for t in bad[:3]) or "the folder holds no image files"
        raise Refused(f"no calibration image in {a.calib} could be prepared ({len(bad)} tried): {why}", status=2)
    if bad:
        warn(f"{len(bad)} of {len(index)} calibration images could not be prepared and are skipped "
             f"(first: {bad[0]['image']}: {bad[0]['error']})")
    x = np.stack([np.fromfile(os.path.join(dump, t["tensor"]), dtype="<f4").reshape(in_shape[1:]) for t in good])
    names = [os.path.relpath(t["image"], a.calib) if os.path.isdir(a.calib) else t["image"] for t in good]
    say(f"{len(good)} calibration tensors from {a.calib}")

    # 3. int8, the factory's recipe.
    int8 = os.path.join(out, "model.onnx")
    ops = quantize.quantize_int8(base, int8, in_name, x, work, exclude_head=a.exclude_head,
                                 producer_version=__version__, doc=f"{a.model_id} {a.model_version} int8")
    qconvs = sum(o == "ai.onnx:QLinearConv" for o in ops)
    say(f"int8 model {int8}: {qconvs} QLinearConv, {os.path.getsize(int8):,} B")

    # 4. the manifest of the folder.
    m.update(file="model.onnx", sha256=manifest.sha256(int8), parent={"file": "model.fp32.onnx", "sha256": fp32_sha},
             quantization=quantize.describe(len(good), a.exclude_head),
             parity={"max_abs": a.parity_ceiling, "fp32_max_abs": a.fp32_parity_ceiling,
                     "min_mask_agreement": a.min_mask_agreement, "min_box_iou": a.min_box_iou,
                     "note": "ceilings for the first measurement (bedside-model)"})

    # 5. parity fixtures from onnxruntime (int8 through its exact u8-weight form), then bedside parity.
    exact = quantize.u8_weights(int8, os.path.join(work, "model.u8w.onnx"))
    pick = fixtures.pick(len(x), a.fixtures if len(x) >= 4 else len(x))
    fixtures.write(os.path.join(out, "fixtures"), a.model_id, x[pick], [names[i] for i in pick], exact, fp32,
                   [l["name"] for l in m["labels"]], pruned=pruned)
    manifest.write(os.path.join(out, "model.toml"), m)
    r = bed.parity(out, os.path.join(out, "fixtures"))
    measured = bs.parse_parity(r.stdout)
    forms = {"int8", "fp32"} | ({"pruned"} if pruned else set())
    if r.returncode != 0 or set(measured) != forms or not all(v["ok"] for v in measured.values()):
        raise Refused("bedside refused the model or its parity with onnxruntime "
                      f"(`bedside parity`, exit {r.returncode}; ceilings int8 {a.parity_ceiling}, "
                      f"fp32 {a.fp32_parity_ceiling}):\n{r.tail()}")
    worst32 = max(measured[f]["max_abs"] for f in forms - {"int8"})
    tol8, tol32 = manifest.tolerance(measured["int8"]["max_abs"]), manifest.tolerance(worst32)
    m["parity"].update(max_abs=tol8, fp32_max_abs=tol32, note=(
        f"max |tract - onnxruntime| on fixtures/ ({len(pick)} calibration tensors), ~3x the measured (floor 1e-5):\n"
        + ", ".join(f"{f} {measured[f]['max_abs']:.2g}" for f in sorted(forms)) + " (bedside-model; MODEL_CARD.md)"))
    manifest.write(os.path.join(out, "model.toml"), m)
    r = bed.parity(out, os.path.join(out, "fixtures"))
    final = bs.parse_parity(r.stdout)
    if r.returncode != 0 or not final or not all(v["ok"] for v in final.values()):
        raise Refused(f"`bedside parity` failed with the measured tolerances (exit {r.returncode}):\n{r.tail()}")
    for k, v in final.items():
        say(f"parity {k}: max |tract - onnxruntime| {v['max_abs']:.3e}, tolerance {v['tolerance']:g}: ok")
    # [memory]: what bedside measures when it loads and runs the model (`bedside models measure`).
    r = bed.measure(out)
    working = bs.parse_measure(r.stdout) if r.returncode == 0 else None
    if working is None:
        raise Refused(f"`bedside models measure` could not measure the model (exit {r.returncode}):\n{r.tail()}")
    m["tract_working_bytes"] = working
    manifest.write(os.path.join(out, "model.toml"), m)
    say(f"memory: tract working memory {working} bytes (measured by bedside)")

    # 6. the eval gate.
    ev = None
    if a.eval_data:
        r = bed.eval(out, a.eval_data, os.path.join(out, "eval"), a.max_drop)
        if r.returncode == 3:
            line = next((l for l in r.stderr.splitlines() if l.startswith("bedside:")), r.tail(3))
            raise Refused(f"the eval gate (--max-drop {a.max_drop}) refused the int8 model: {line.removeprefix('bedside: ')}"
                          f"\n(report: {os.path.join(out, 'eval', 'report.md')})", status=3)
        if r.returncode != 0:
            raise Refused(f"bedside eval failed (exit {r.returncode}):\n{r.tail()}")
        summary = json.load(open(os.path.join(out, "eval", "summary.json")))
        run0 = summary["runs"][0]
        ev = {"data": a.eval_data, "max_drop": a.max_drop, "images": run0.get("images"),
              "skipped": run0.get("skipped"), "rows": card.eval_rows(summary)}
        say(f"eval: {ev['rows'][0][0]} int8 {ev['rows'][0][1]}, fp32 {ev['rows'][0][2]} ({ev['images']} images)")

    # 7. timing, memory (as bedside check reports it), the card.
    bench = None
    if not a.no_bench:
        r = bed.bench(out, 20)
        bench = bs.parse_bench(r.stdout) if r.returncode == 0 else None
        if not bench:
            warn(f"bedside bench failed (exit {r.returncode}); the card has no timing")
    mem = check_memory(bed, out, work, a.model_id)
    c = {"manifest": m, "output_shape": out_shape, "source_kind": src.kind, "source_origin": src.origin,
         "source_sha256": manifest.sha256(src.onnx_path), "source_metadata": src.metadata,
         "size_int8": os.path.getsize(int8), "size_fp32": os.path.getsize(fp32), "tool_version": __version__,
         "prune": src.prune_info, "size_pruned": os.path.getsize(pruned) if pruned else None,
         "onnx_version": onnx.__version__, "ort_version": ort.__version__, "bedside": bed.path,
         "window_text": "dicom" if m["window"] == "dicom" else f"center {m['window'][0]}, width {m['window'][1]}",
         "calib_count": len(good), "calib_skipped": len(bad), "calib_dir": a.calib, "qconv_count": qconvs,
         "ops": ops, "parity": final, "parity_cases": len(pick), "eval": ev, "bench": bench, "cpu": cpu_name(),
         "memory": mem, "command": "bedside-model " + " ".join(shlex.quote(v) for v in sys.argv[1:])}
    card.write(os.path.join(out, "MODEL_CARD.md"), c)
    say(f"built {out}: model.onnx, model.fp32.onnx, " + ("model.pruned.onnx, " if pruned else "")
        + "model.toml, fixtures/, MODEL_CARD.md"
        + (", eval/" if ev else "") + " — fill in the card's marked sections before shipping")
    return 0


def check_memory(bed, out, work, model_id):
    """`bedside check` on a board profile that holds only this model: it loads it as the daemon would and prints
    the measured memory (to 0.01 MiB). Informational: a failure is a warning."""
    board = os.path.join(work, "board.toml")
    with open(board, "w") as fh:
        fh.write(f'[device]\nid = "bedside-model"\nsite = "build"\nboard = "build"\n\n'
                 f'[paths]\ninbox = "inbox"\nstate = "state"\n\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n\n'
                 f'[[models]]\npath = {manifest.q(out)}\nsources = ["dicom"]\n')
    r = bed.check(board)
    if r.returncode != 0:
        warn(f"bedside check on a board profile with this model failed (exit {r.returncode}):\n{r.tail(5)}")
        return None
    return bs.parse_check_memory(r.stdout, model_id)


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        return build(a)
    except Refused as e:
        print(f"bedside-model: refused: {e}", file=sys.stderr)
        return e.status
