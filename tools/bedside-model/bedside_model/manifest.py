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
MEMORY_NOTE = "measured by bedside when it loads the model, with its int8 ops"


def memory_toml(tract_working_bytes=None, note=MEMORY_NOTE):
    if tract_working_bytes is None:
        return ""
    return f"[memory]\n# {note}\ntract_working_bytes = {int(tract_working_bytes)}\n\n"


def kept_working_bytes(path):
    """The `[memory] tract_working_bytes` of the manifest at `path` (None when there is no manifest or no figure):
    a rebuild that does not re-measure keeps the figure bedside measured (the factory's builds; tests/memory.rs
    checks it against a fresh measurement)."""
    import os
    import tomllib
    if not os.path.exists(path):
        return None
    with open(path, "rb") as fh:
        return tomllib.load(fh).get("memory", {}).get("tract_working_bytes") or None


def render(m):
    """The manifest text for the spec `m`, a dict: id, version, task, file, sha256, quantization, description,
    parent / pruned ({file, sha256}), input_name, input_shape, frames, window ("dicom" or (center, width)), mean,
    std, output_name, activation, detection ({stride, iou_threshold, max_detections}), parity ({note, max_abs,
    fp32_max_abs, min_mask_agreement, min_box_iou}), tract_working_bytes, memory_note, labels ([{name, threshold,
    min_fraction, code: {value, scheme, meaning}}]). Written by cli.build and by the factory's three builds (models/factory)."""
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
    for table in ("parent", "pruned"):  # the fp32 parent; the pruned fp32 form between it and the int8 file
        if m.get(table):
            out += ["", f"[model.{table}]", f"file = {q(m[table]['file'])}", f"sha256 = {q(m[table]['sha256'])}"]
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
    text = "\n".join(out) + "\n" + memory_toml(m.get("tract_working_bytes"), m.get("memory_note", MEMORY_NOTE))
    labels = []
    for lab in m["labels"]:
        labels += ["[[labels]]", f"name = {q(lab['name'])}", f"threshold = {f(lab['threshold'])}"]
        if lab.get("min_fraction") is not None:
            labels.append(f"min_fraction = {f(lab['min_fraction'])}")
        if lab.get("code"):
            c = lab["code"]
            labels.append(f"code = {{ value = {q(c['value'])}, scheme = {q(c['scheme'])}, meaning = {q(c['meaning'])} }}")
    return text + "\n".join(labels) + "\n"


def write(path, m):
    with open(path, "w") as fh:
        fh.write(render(m))
