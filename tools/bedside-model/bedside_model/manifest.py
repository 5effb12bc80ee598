"""model.toml, as bedside reads it (src/model/manifest.rs; every table `deny_unknown_fields`: write no other key)."""
import hashlib
import json


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def q(s):
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(str(s), ensure_ascii=False)


def f(v):
    """A TOML float (always with a dot or an exponent)."""
    return repr(float(v))


def window_toml(window):
    if window == "dicom":
        return '"dicom"'
    c, w = window
    return f"{{ center = {f(c)}, width = {f(w)} }}"


def tolerance(measured):
    """[parity] tolerance from a measured max |tract - onnxruntime|: ~3x, floor 1e-5, two significant digits
    (models/factory/quantize_manifest.py tolerances())."""
    return float(f"{max(3 * measured, 1e-5):.2g}")


# [memory] tract_working_bytes: measured by bedside itself (`bedside models measure`, under the counting
# allocator the binary installs), the figure the daemon's memory plan uses; never estimated here.
def memory_toml(tract_working_bytes=None):
    if tract_working_bytes is None:
        return ""
    return ("[memory]\n# measured by bedside when it loads the model, with its int8 ops\n"
            f"tract_working_bytes = {int(tract_working_bytes)}\n\n")


def render(m):
    """The manifest text for the spec `m` (a dict: see cli.build)."""
    out = ["[model]",
           f"id = {q(m['id'])}",
           f"version = {q(m['version'])}",
           f"task = {q(m['task'])}",
           f"file = {q(m['file'])}",
           f"sha256 = {q(m['sha256'])}"]
    if m.get("quantization"):
        out.append(f"quantization = {q(m['quantization'])}")
    if m.get("description"):
        out.append(f"description = {q(m['description'])}")
    if m.get("parent"):
        out += ["", "[model.parent]", f"file = {q(m['parent']['file'])}", f"sha256 = {q(m['parent']['sha256'])}"]
    out += ["", "[input]", f"name = {q(m['input_name'])}",
            f"shape = [{', '.join(str(int(d)) for d in m['input_shape'])}]", 'layout = "NCHW"']
    if m.get("frames"):
        fr = m["frames"]
        out.append(f"frames = {q(fr)}" if isinstance(fr, str) else f"frames = [{', '.join(map(str, fr))}]")
    out += ["", "[preprocess]", f"window = {window_toml(m['window'])}", 'resize = "bilinear-antialias"',
            f"mean = {f(m['mean'])}", f"std = {f(m['std'])}"]
    out += ["", "[output]", f"name = {q(m['output_name'])}", f"activation = {q(m['activation'])}"]
    if m["task"] == "detection":
        d = m["detection"]
        out += ["", "[detection]", f"stride = {int(d['stride'])}", f"iou_threshold = {f(d['iou_threshold'])}",
                f"max_detections = {int(d['max_detections'])}"]
    p = m.get("parity")
    if p:
        out += ["", "[parity]"]
        if p.get("note"):
            out += [f"# {line}" for line in p["note"].splitlines()]
        out += [f"max_abs = {f(p['max_abs'])}", f"fp32_max_abs = {f(p['fp32_max_abs'])}"]
        if m["task"] == "segmentation" and p.get("min_mask_agreement") is not None:
            out.append(f"min_mask_agreement = {f(p['min_mask_agreement'])}")
        if m["task"] == "detection" and p.get("min_box_iou") is not None:
            out.append(f"min_box_iou = {f(p['min_box_iou'])}")
    out.append("")
    text = "\n".join(out) + "\n" + memory_toml(m.get("tract_working_bytes"))
    labels = []
    for lab in m["labels"]:
        labels += ["[[labels]]", f"name = {q(lab['name'])}", f"threshold = {f(lab['threshold'])}"]
        if lab.get("min_fraction") is not None:
            labels.append(f"min_fraction = {f(lab['min_fraction'])}")
    return text + "\n".join(labels) + "\n"


def write(path, m):
    with open(path, "w") as fh:
        fh.write(render(m))
