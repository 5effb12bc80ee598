"""Parity fixtures: onnxruntime's outputs on a few of the tensors `bedside prepare` made, in the format
`bedside parity` reads (src/model/parity.rs; tests/fixtures/<model>/parity.json): parity.json + caseN.f32."""
import json
import os

import numpy as np
import onnxruntime as ort


def session(path, threads=1):
    """onnxruntime on the CPU, one intra-op thread, sequential (the factory's reference settings)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def first_output(sess, x):
    """The first output (the one bedside reads), one image per run."""
    name = sess.get_inputs()[0].name
    return np.stack([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def pick(n_total, n_cases):
    """Evenly spread indices: 4-6 cases when there are that many tensors."""
    k = min(n_total, n_cases)
    return sorted({int(round(i * (n_total - 1) / max(k - 1, 1))) for i in range(k)})


def exact_f32(a):
    """Values that parse back to the same float32: the shortest float32 repr, as a JSON number."""
    return [float(str(np.float32(v))) for v in np.asarray(a, dtype=np.float32).ravel()]


def rounded7(a):
    """Values rounded to 7 significant digits (the factory's fixtures: shorter files; every tolerance is far above
    the 6e-8 relative error this adds)."""
    return [float(f"{v:.7g}") for v in np.asarray(a, dtype=np.float32).ravel()]


def save(out_dir, doc):
    """parity.json in `out_dir`: compact JSON, one line."""
    with open(os.path.join(out_dir, "parity.json"), "w") as fh:
        fh.write(json.dumps(doc, separators=(",", ":")))
        fh.write("\n")


def write(out_dir, model_id, x, names, int8_exact, fp32, labels, pruned=None):
    """Writes caseN.f32 and parity.json for the inputs x[i] (named names[i]) with onnxruntime's first output of the
    int8 model through its exact form `int8_exact` (u8 weights) under "int8", the fp32 parent under "fp32" and,
    when given, the pruned fp32 model under "pruned". Returns (int8 outputs, fp32 outputs)."""
    os.makedirs(out_dir, exist_ok=True)
    s8, s32 = session(int8_exact), session(fp32)
    y8, y32 = first_output(s8, x), first_output(s32, x)
    yp = first_output(session(pruned), x) if pruned else None
    cases = []
    for i in range(len(x)):
        fname = f"case{i}.f32"
        x[i:i + 1].astype("<f4").tofile(os.path.join(out_dir, fname))
        cases.append({"input": fname, "image": names[i], "int8": exact_f32(y8[i]), "fp32": exact_f32(y32[i])})
        if yp is not None:
            cases[-1]["pruned"] = exact_f32(yp[i])
    doc = {"model": model_id, "input_shape": [1, *x.shape[1:]],
           "output_shape": list(y8.shape[1:]),
           "labels": list(labels),
           "note": (f"inputs: tensors made by `bedside prepare` from calibration images (raw little-endian float32, "
                    f"NCHW); outputs: the first output from onnxruntime {ort.__version__} CPUExecutionProvider, "
                    "1 thread, as exact float32; int8 = model.onnx run with its s8 weights re-encoded as u8 "
                    "(exact integer arithmetic, as bedside computes; onnxruntime's own u8 x s8 kernel saturates on "
                    "x86 without VNNI), fp32 = model.fp32.onnx, pruned (when present) = model.pruned.onnx. "
                    "Written by bedside-model."),
           "cases": cases}
    save(out_dir, doc)
    return y8, y32
