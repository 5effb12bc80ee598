"""MODEL_CARD.md: a skeleton filled with what bedside-model measured; what only a human can say is marked."""
import datetime

FILL = "**TO FILL IN (a person responsible for the model):**"


def _fmt(v, nd=4):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _bytes(n):
    return f"{n:,} B"


def eval_rows(summary):
    """Rows (metric, int8, fp32, int8 - fp32) from bedside eval's summary.json (runs[0] int8, runs[1] fp32)."""
    runs = summary.get("runs", [])
    if len(runs) < 2:
        return []
    a, b = runs[0], runs[1]
    rows = []

    def add(name, x, y, nd=4):
        d = (x - y) if isinstance(x, (int, float)) and isinstance(y, (int, float)) else None
        rows.append((name, _fmt(x, nd), _fmt(y, nd), "n/a" if d is None else f"{d:+.{nd}f}"))

    add(a.get("primary_metric", "main metric"), a.get("primary"), b.get("primary"))
    for key, name in (("accuracy", "accuracy (argmax)"), ("balanced_accuracy", "balanced accuracy"),
                      ("mean_dice", "mean Dice"), ("mean_iou", "mean IoU"), ("map50", "mAP@0.5"),
                      ("map50_95", "mAP@0.5:0.95")):
        if a.get(key) is not None or b.get(key) is not None:
            add(name, a.get(key), b.get(key))
    la, lb = {l["label"]: l for l in a.get("labels", [])}, {l["label"]: l for l in b.get("labels", [])}
    for lab, x in la.items():
        y = lb.get(lab, {})
        for key in ("auc", "sensitivity", "specificity"):
            if x.get(key) is not None or y.get(key) is not None:
                add(f"`{lab}` {key}" + (f" at {x.get('threshold')}" if key != "auc" else ""), x.get(key), y.get(key))
    ta, tb = a.get("timing", {}), b.get("timing", {})
    add("median inference ms", ta.get("median_infer_ms"), tb.get("median_infer_ms"), 2)
    return rows


def render(c):
    """c: a dict of everything measured (see cli.build)."""
    m = c["manifest"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {m['id']} {m['version']} — model card", "",
             "**Decision support, not a diagnosis.** This model's findings are for a clinician to weigh; it does "
             "not diagnose, and nothing below is a clinical validation. The figures were measured by "
             f"`bedside-model` on {now} on the data named here, and describe only that.", "",
             "| | |", "|---|---|",
             f"| Task | {m['task']} |",
             f"| Labels (output order) | {', '.join('`%s`' % l['name'] for l in m['labels'])} |",
             f"| Thresholds | " + ", ".join(
                 f"`{l['name']}` {l['threshold']}" + (f" (min fraction {l['min_fraction']})"
                                                     if l.get('min_fraction') is not None else "")
                 for l in m["labels"]) + " |",
             f"| Input | `{m['input_name']}`, float32 `{m['input_shape']}`, NCHW |",
             f"| Output | `{m['output_name']}`, float32 `{c['output_shape']}`; bedside applies {m['activation']} |",
             f"| Source | {c['source_kind']}: `{c['source_origin']}` (sha256 `{c['source_sha256']}`) |",
             f"| Files | `model.onnx` int8 {_bytes(c['size_int8'])}, sha256 `{m['sha256']}` · `model.fp32.onnx` fp32 "
             f"parent {_bytes(c['size_fp32'])}, sha256 `{m['parent']['sha256']}`"
             + (f" · `model.pruned.onnx` pruned fp32 {_bytes(c['size_pruned'])}, sha256 `{m['pruned']['sha256']}`"
                if m.get("pruned") else "") + " |",
             f"| Built with | bedside-model {c['tool_version']}, onnx {c['onnx_version']}, onnxruntime "
             f"{c['ort_version']}, bedside `{c['bedside']}` |", ""]
    if c.get("source_metadata"):
        lines += ["Source metadata: " + ", ".join(f"{k}: {v}" for k, v in c["source_metadata"].items()
                                                   if isinstance(v, (str, int, float))), ""]
    lines += ["## Intended use", "", FILL + " the clinical question, the patients and devices it is meant for, "
              "who reads its findings and what they do with them, and what it must not be used for.", "",
              "## Training data", "", FILL + " where the training images came from, how many, which "
              "sites/devices/populations, how they were labelled and by whom, and how the test data was kept apart.",
              "", "## Limitations", "", FILL + " known failure modes, populations and acquisitions it was not "
              "tested on, and what a user must check. Measured below: only the calibration and evaluation sets "
              "named here.", "",
              "## Preprocessing contract", "",
              f"bedside prepares every image (DICOM, PNG, NIfTI) the same way before the model sees it: window "
              f"`{c['window_text']}`, resize to {m['input_shape'][3]}x{m['input_shape'][2]} with antialiased bilinear, "
              f"then `(x - {m['mean']}) / {m['std']}`. The training pipeline must have done the same; "
              f"{FILL} confirm it.", "",
              *prune_lines(c.get("prune")),
              "## Quantization", "",
              f"{m['quantization']}. Recipe: onnxruntime {c['ort_version']} `quantize_static`, QOperator, Conv+Relu "
              "only, u8 activations, s8 weights per-tensor, MinMax (the model factory's, `bedside_model/quantize.py`). "
              f"Calibration: {c['calib_count']} tensors made by `bedside prepare` from `{c['calib_dir']}`"
              + (f" ({c['calib_skipped']} images skipped: could not be prepared)" if c['calib_skipped'] else "")
              + f". Int8 graph: {c['qconv_count']} QLinearConv, ops {', '.join(sorted(set(c['ops'])))}.", "",
              "## tract vs onnxruntime parity", "",
              f"`bedside parity --model . --fixtures fixtures` on {c['parity_cases']} of the calibration tensors. "
              "onnxruntime's int8 reference is the same model with its s8 weights re-encoded as u8 (exact integer "
              "arithmetic; onnxruntime's own u8×s8 kernel saturates on x86 without VNNI).", "",
              "| form | max \\|tract − onnxruntime\\| | tolerance in model.toml | decisions agree |",
              "|---|---|---|---|"]
    for key, r in c["parity"].items():
        lines.append(f"| {key} | {r['max_abs']:.3e} | {r['tolerance']:g} | {r['agreement']:.4f} |")
    lines += ["", "Tolerances: ~3x the measured difference, floor 1e-5.", ""]
    lines += ["## Evaluation", ""]
    if c.get("eval"):
        e = c["eval"]
        lines += [f"`bedside eval --model . --data {e['data']} --compare parent --max-drop {e['max_drop']}`: "
                  f"{e['images']} images ({e['skipped']} not evaluated); report in `eval/report.md`.", "",
                  "| metric | int8 (`model.onnx`) | fp32 parent | int8 − fp32 |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {d} | {x} |" for a, b, d, x in e["rows"]]
        lines += ["", f"{FILL} whether this set represents the intended use; a small set gives wide intervals "
                  "(see the report's 95 % intervals).", ""]
    else:
        lines += ["Not evaluated: no `--eval-data` was given. " + FILL + " run `bedside eval --model DIR --data "
                  "LABELLED --compare parent --max-drop 0.02` on a labelled set from the intended use, on the board.",
                  ""]
    lines += ["## Runtime", ""]
    b = c.get("bench") or {}
    if "int8" in b and "fp32" in b:
        lines += [f"`bedside bench --model . --runs 20` on this build machine ({c.get('cpu', 'unknown CPU')}), one "
                  f"thread, all-zero input: int8 median {b['int8']['median_ms']:.3f} ms, fp32 median "
                  f"{b['fp32']['median_ms']:.3f} ms. Indicative only: measure on the board.", ""]
    else:
        lines += ["Not timed.", ""]
    mem = c.get("memory") or {}
    lines += ["## Memory", ""]
    working = c["manifest"].get("tract_working_bytes")
    lines += [f"`bedside models measure` (the model loaded and run as the daemon does, under its counting "
              f"allocator): tract's working memory {working} bytes, written to model.toml's `[memory]`"
              + (f"; with weights, plan and state, `bedside check` plans {mem['working_mib'] + mem.get('resident_mib', 0):.2f} MiB "
                 "for it" if mem.get("working_mib") is not None else "")
              + ". bedside measures its own plan again at every start.", ""]
    lines += ["## Reproduce", "", "```", c["command"], "```", ""]
    return "\n".join(lines)


def prune_lines(p):
    """The card's pruning section (none without --prune)."""
    if not p:
        return []
    tuned = (f"fine-tuned afterwards with `{p['finetune']}`" if p.get("finetuned") else
             "**not fine-tuned** afterwards (no `--finetune` hook): the evaluation below says what that cost")
    return ["## Pruning", "",
            f"Structured: {p['ratio']:.0%} of the channels of every prunable layer removed by torch-pruning "
            f"(L1 magnitude over each dependency group, widths rounded to multiples of {p['round_to']}, the output "
            f"layer kept), {tuned}. The int8 model is quantized from the pruned one; `model.fp32.onnx` is the dense "
            "parent.", "",
            "| | dense parent | pruned |", "|---|---|---|",
            f"| MACs | {p['macs_before'] / 1e6:.2f} M | {p['macs_after'] / 1e6:.2f} M |",
            f"| parameters | {p['params_before']:,} | {p['params_after']:,} |",
            f"| conv widths | {p['widths_before']} | {p['widths_after']} |", ""]


def write(path, c):
    with open(path, "w") as fh:
        fh.write(render(c))
