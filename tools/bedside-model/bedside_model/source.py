"""Where the fp32 model comes from (an ONNX file, a MONAI bundle, a PyTorch module), and the checks bedside would
make of it: one input, a fixed [1, 1, H, W] shape, an output whose size fits the labels for the task."""
import importlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import Refused, UsageError


@dataclass
class Source:
    """The fp32 model as found: its path, what it says about itself, where it came from."""
    onnx_path: str
    kind: str  # "onnx", "monai-bundle", "torch"
    origin: str  # what the user named
    labels: list = field(default_factory=list)  # from a bundle's metadata, when any
    input_shape: list | None = None  # from a bundle's metadata, when fixed there
    metadata: dict = field(default_factory=dict)  # name, version, description ... of a bundle
    pruned_path: str | None = None  # --prune: the pruned (and fine-tuned) fp32 export
    prune_info: dict | None = None  # --prune: MACs, parameters, widths before and after


def from_onnx(path):
    if not os.path.isfile(path):
        raise UsageError(f"--onnx {path}: no such file")
    return Source(os.path.abspath(path), "onnx", path)


def _first(dirpath, names):
    for n in names:
        p = os.path.join(dirpath, n)
        if os.path.isfile(p):
            return p
    return None


def from_monai_bundle(dirpath):
    """A MONAI bundle folder exported to ONNX: `model.onnx` or `models/model.onnx`, and `metadata.json` or
    `configs/metadata.json` (network_data_format: the input's channels and spatial shape, the output's channel_def
    as labels)."""
    if not os.path.isdir(dirpath):
        raise UsageError(f"--monai-bundle {dirpath}: not a folder")
    model = _first(dirpath, ["model.onnx", os.path.join("models", "model.onnx")])
    if not model:
        raise UsageError(f"--monai-bundle {dirpath}: no model.onnx or models/model.onnx (export the bundle's network "
                         "to ONNX first, e.g. `python -m monai.bundle ckpt_export ... --use_trace` then torch.onnx, "
                         "or pass --onnx)")
    src = Source(os.path.abspath(model), "monai-bundle", dirpath)
    meta_path = _first(dirpath, ["metadata.json", os.path.join("configs", "metadata.json")])
    if not meta_path:
        return src
    try:
        meta = json.load(open(meta_path))
    except (OSError, ValueError) as e:
        raise UsageError(f"{meta_path}: {e}")
    src.metadata = {k: meta[k] for k in ("name", "version", "description", "authors", "copyright", "license",
                                         "data_source", "intended_use") if k in meta}
    src.metadata["metadata_file"] = os.path.relpath(meta_path, dirpath)
    ndf = meta.get("network_data_format", {})
    inputs = ndf.get("inputs", {})
    if len(inputs) == 1:
        spec = next(iter(inputs.values()))
        spatial = spec.get("spatial_shape", [])
        ch = spec.get("num_channels")
        if (isinstance(ch, int) and len(spatial) == 2 and all(isinstance(d, int) and d > 0 for d in spatial)):
            src.input_shape = [1, ch, *spatial]
    outputs = ndf.get("outputs", {})
    if len(outputs) >= 1:
        cdef = next(iter(outputs.values())).get("channel_def", {})
        try:
            src.labels = [str(cdef[k]) for k in sorted(cdef, key=int)]
        except (ValueError, TypeError):
            src.labels = []
    return src


def export(model, example_shape, out):
    """torch.onnx.export at opset 17 on a zero tensor of `example_shape`, input "input", output "output"."""
    import torch
    x = torch.zeros(*example_shape, dtype=torch.float32)
    kwargs = dict(opset_version=17, input_names=["input"], output_names=["output"], do_constant_folding=True)
    with torch.no_grad():
        try:
            # The TorchScript exporter where the installed torch has both (fixed shapes, plain opset-17 ops).
            torch.onnx.export(model, (x,), out, dynamo=False, **kwargs)
        except TypeError:
            torch.onnx.export(model, (x,), out, **kwargs)


def from_torch(spec, example_shape, work, prune_ratio=None, round_to=8, finetune=None, say=print):
    """`MODULE:FACTORY`: FACTORY() returns a torch.nn.Module; exported with torch.onnx.export at opset 17 on a zero
    tensor of `example_shape`, input named "input", output "output". Needs the `torch` extra. With `prune_ratio`
    the model is then pruned (bedside_model.prune, `finetune` the hook spec) and exported again: the dense export
    is the fp32 parent, the pruned one what gets quantized."""
    try:
        import torch
    except ImportError:
        raise UsageError("--torch needs PyTorch: pip install 'bedside-model[torch]' (or export to ONNX yourself and "
                         "pass --onnx)")
    if ":" not in spec:
        raise UsageError(f"--torch {spec!r}: give MODULE:FACTORY, e.g. mynet:build")
    if not example_shape:
        raise UsageError("--torch needs --example-shape, e.g. 1,1,224,224")
    mod_name, fn_name = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"--torch {spec}: {e}")
    finally:
        sys.path.pop(0)
    model = factory()
    model.eval()
    out = os.path.join(work, "exported.fp32.onnx")
    export(model, example_shape, out)
    src = Source(out, "torch", spec, input_shape=list(example_shape))
    if prune_ratio:
        from . import prune
        try:
            hook = prune.load_hook(finetune) if finetune else None
            model, src.prune_info = prune.prune(model, example_shape, prune_ratio, round_to, hook, say)
        except prune.PruneError as e:
            raise UsageError(str(e))
        src.prune_info["finetune"] = finetune
        src.pruned_path = os.path.join(work, "exported.pruned.onnx")
        export(model, example_shape, src.pruned_path)
    return src


# ------------------------------------------------------------------------------------------------ checks

def graph_inputs(model):
    """The real inputs (older exporters also list initializers as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def dims(value_info):
    """A value's dims: ints where fixed, the symbol (or '?') where not."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in t.shape.dim]


def fix_input(src_path, dst_path, override=None):
    """Copies the fp32 model to `dst_path` (byte for byte when it needs no change) and returns (input name, shape).
    Refuses a model with more than one input, or whose input is not a fixed [1, 1, H, W] (after `override`, which
    replaces the dims of a dynamic input and must agree with its fixed ones)."""
    model = onnx.load(src_path)
    ins = graph_inputs(model)
    if len(ins) != 1:
        raise Refused(f"bedside feeds a model one tensor; this one has {len(ins)} inputs: "
                      + ", ".join(f"{i.name!r} {dims(i)}" for i in ins), status=2)
    inp = ins[0]
    shape = dims(inp)
    if shape is None:
        raise Refused(f"input {inp.name!r} has no shape in the graph: pass --input-shape 1,1,H,W", status=2)
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise Refused(f"input {inp.name!r} is {onnx.TensorProto.DataType.Name(inp.type.tensor_type.elem_type)}; "
                      "bedside feeds float32", status=2)
    changed = False
    if override:
        if len(override) != len(shape):
            raise Refused(f"--input-shape {override} has {len(override)} dims; input {inp.name!r} has "
                          f"{len(shape)}: {shape}", status=2)
        for k, (have, want) in enumerate(zip(shape, override)):
            if isinstance(have, int) and have != want:
                raise Refused(f"--input-shape {override}: dim {k} of input {inp.name!r} is fixed at {have} "
                              f"(shape {shape})", status=2)
        if shape != list(override):
            for d, v in zip(inp.type.tensor_type.shape.dim, override):
                d.Clear()
                d.dim_value = v
            changed = True
            shape = list(override)
    dynamic = [k for k, d in enumerate(shape) if not isinstance(d, int)]
    if dynamic:
        raise Refused(f"input {inp.name!r} has a dynamic shape {shape} (dims {dynamic} not fixed); bedside plans "
                      "each model for one fixed NCHW shape: pass --input-shape 1,1,H,W", status=2)
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 1:
        raise Refused(f"input {inp.name!r} has shape {shape}; bedside feeds one grey image, NCHW [1, 1, H, W]",
                      status=2)
    if changed:
        # Intermediate shapes were inferred for the dynamic input: onnxruntime infers them again. (Outputs keep
        # their symbolic dims; the output is checked by running the model.)
        del model.graph.value_info[:]
        onnx.save(model, dst_path)
    elif os.path.abspath(src_path) != os.path.abspath(dst_path):
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            onnx.save(model, dst_path)  # external data folded into one file
        else:
            shutil.copyfile(src_path, dst_path)
    try:
        onnx.checker.check_model(dst_path)
    except onnx.checker.ValidationError as e:
        raise Refused(f"the fp32 model is not valid ONNX: {e}", status=2)
    return inp.name, shape


def output_info(session):
    """(name, shape) of the first output (the one bedside reads) from a zero run of the onnxruntime session."""
    inp = session.get_inputs()[0]
    x = np.zeros([int(d) for d in inp.shape], dtype=np.float32)
    out = session.run(None, {inp.name: x})
    return session.get_outputs()[0].name, list(out[0].shape), len(out)


def check_output(task, shape, labels, input_hw, stride=None):
    """What Engine::load checks after its dry run (src/infer.rs): the first output's size fits the labels."""
    n = int(np.prod(shape))
    L = len(labels)
    if task == "classification":
        ok, want = n == L, f"{L} values (one logit per label)"
    elif task == "segmentation":
        ok, want = n >= L and n % L == 0, f"[1, {L}, h, w] (a map per label)"
    else:
        h, w = input_hw
        if not stride or h % stride or w % stride:
            raise Refused(f"--stride {stride} does not divide the input {h}x{w}", status=2)
        exp = (5 + L) * (h // stride) * (w // stride)
        ok, want = n == exp, f"[1, 5 + {L}, {h // stride}, {w // stride}] = {exp} values"
    if not ok:
        raise Refused(f"the first output has shape {shape} ({n} values); a {task} model with labels {labels} "
                      f"needs {want}", status=2)
