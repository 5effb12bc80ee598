"""The road for a real model nobody here wrote (issue 15 item 6), part 1: train and export.

torchvision ResNet-18 with a 1-channel conv1 (per_channel_study.resnet18_1ch, random init, no ImageNet weights),
trained briefly on the factory's synthetic chest phantoms (per_channel_study.train_resnet: data.py train split,
224x224, the cxr-tiny-cls preprocessing contract mean 0.34 / std 0.27, AdamW + one-cycle, 1 thread), BatchNorm
folded in eval mode (per_channel_study.fold_resnet), exported fp32 with train_export.export_onnx (opset 17, fixed
input `input` [1, 1, 224, 224], output `logits`). Also writes calibration PNGs from the factory's calib split
(seeds 300000.., never the eval set's test seeds), made as eval_sets.py makes the cxr-tiny-cls PNGs: the phantom's
stored image through its own VOI window (preprocess.display), the factory's antialiased resize to 224, rounded to
8 bits.

Driven by road_resnet18.sh (which goes on: bedside-model build, bedside eval, install into a running daemon).
Run standalone from anywhere with the factory's python (torch, torchvision, onnx, onnxruntime, pillow):

    python models/factory/road_resnet18.py --work /work/scratch/road [--n-calib 64]

Environment: RESNET_SECONDS (training budget, default here 300) or RESNET_STEPS (fixed steps), RESNET_BATCH (16),
RESNET_LR (2e-3), RETRAIN=1 (ignore a checkpoint in WORK/study/resnet18), CACHE (the data cache; data.py).
Writes WORK/resnet18.onnx, WORK/calib/calib-NNN.png, WORK/train.json. Everything 1 thread.
"""
import argparse
import json
import os
import sys
import time

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("RESNET_SECONDS", "300")
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=os.environ.get("WORK", "/work/scratch/road"))
    p.add_argument("--n-calib", type=int, default=64)
    p.add_argument("--summary", metavar="WORK", help="print the road's figures from WORK (road_resnet18.sh step 5)")
    p.add_argument("--step-seconds", default="{}", help="JSON {step: seconds} for the summary")
    return p.parse_args()


def calib_pngs(out_dir, n):
    """n PNGs from the factory's calib split, label i % 3 as data.py, 8-bit grey 224x224 as eval_sets.gen_cls."""
    import numpy as np
    from PIL import Image
    import data
    import preprocess as P
    import synth
    base, avail = data.SPLITS["calib"]
    assert n <= avail, f"--n-calib {n} > the calib split's {avail}"
    os.makedirs(out_dir, exist_ok=True)
    for i in range(n):
        stored, c, w = synth.generate(base + i, i % 3)
        y = P.resize(P.display(stored, 1.0, 0.0, c, w), 224)
        png = np.clip(np.rint(np.asarray(y, np.float64) * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(np.ascontiguousarray(png), mode="L").save(os.path.join(out_dir, f"calib-{i:03d}.png"))
    return n


def _section(text, title):
    import re
    m = re.search(r"^## " + re.escape(title) + r"\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    return m.group(1).strip() if m else "(no such section)"


def summary(work, step_seconds):
    """The figures for the note, from what the steps left in WORK: markdown on stdout, WORK/summary.json."""
    import re
    import tomllib
    out = os.path.join(work, "resnet18-cxr")
    tr = json.load(open(os.path.join(work, "train.json")))
    with open(os.path.join(out, "model.toml"), "rb") as fh:
        man = tomllib.load(fh)
    card = open(os.path.join(out, "MODEL_CARD.md")).read()
    ev_path = os.path.join(work, "eval", "summary.json")
    ev = json.load(open(ev_path if os.path.exists(ev_path) else os.path.join(out, "eval", "summary.json")))
    dm_path = os.path.join(work, "daemon.json")
    dm = json.load(open(dm_path)) if os.path.exists(dm_path) else None
    runs = {("int8" if r["file"] == "model.onnx" else "fp32"): r for r in ev["runs"]}
    i8, f32 = runs["int8"], runs["fp32"]
    L = []
    L.append("## Road: torchvision ResNet-18 (1-ch) -> bedside-model -> bedside eval -> running daemon\n")
    L.append("Step wall times (s): " + ", ".join(f"{k} {v}" for k, v in sorted(step_seconds.items())))
    L.append(f"\nTraining: {tr['steps']} steps x batch {tr['batch']} = {tr['images_seen']} images "
             f"({tr['epochs']:.2f} epochs of the 3000-image train split) in {tr['train_seconds']:.0f} s, 1 thread; "
             f"{tr['params']:,} parameters; val accuracy (torch, BN folded, 300 images) "
             f"{100 * tr['val_acc_torch_folded']:.2f} %; fold |dlogit| {tr['fold_max_abs_logit_diff']:.1e}, "
             f"onnxruntime vs torch {tr['onnx_vs_torch_max_abs_logit_diff']:.1e}; fp32 ONNX {tr['onnx_bytes']:,} B"
             + (f" (reused checkpoint {tr['reused_checkpoint']})" if tr.get("reused_checkpoint") else ""))
    L.append(f"Loss log (step, mean loss over the last 20): {tr.get('loss_log')}")
    L.append(f"\nModel folder: {out} (id {man['model']['id']}, version {man['model']['version']}); int8 "
             f"{os.path.getsize(os.path.join(out, 'model.onnx')):,} B, fp32 "
             f"{os.path.getsize(os.path.join(out, 'model.fp32.onnx')):,} B")
    L.append(f"Quantization: {man['model'].get('quantization')}")
    L.append("\n### Parity (bedside parity, tract vs onnxruntime)\n" + _section(card, "tract vs onnxruntime parity"))
    L.append(f"\n### Memory\nmodel.toml [memory] tract_working_bytes = {man.get('memory', {}).get('tract_working_bytes')}\n"
             + _section(card, "Memory"))
    if dm:
        L.append(f"Running daemon after the update: VmRSS {dm['daemon_rss_kib_after'] / 1024:.1f} MiB, "
                 f"VmHWM {dm['daemon_peak_rss_kib'] / 1024:.1f} MiB")
    L.append("\n### Timing\n" + _section(card, "Runtime"))
    L.append(f"bedside eval per image (48 PNGs, 1 thread): int8 median {i8['timing']['median_infer_ms']:.1f} ms "
             f"(p95 {i8['timing']['p95_infer_ms']:.1f}), fp32 median {f32['timing']['median_infer_ms']:.1f} ms "
             f"(p95 {f32['timing']['p95_infer_ms']:.1f}); prepare median {i8['timing']['median_prepare_ms']:.2f} ms")
    L.append(f"\n### Eval on {ev['data']} ({i8['images']} images, {i8['skipped']} skipped)\n")
    L.append("| metric | int8 | fp32 | int8 - fp32 |\n|---|---|---|---|")

    def row(name, a, b):
        if a is None or b is None:
            L.append(f"| {name} | {a} | {b} | n/a |")
        else:
            L.append(f"| {name} | {a:.4f} | {b:.4f} | {a - b:+.4f} |")
    row(i8["primary_metric"], i8["primary"], f32["primary"])
    row("accuracy (argmax)", i8["accuracy"], f32["accuracy"])
    row("balanced accuracy", i8["balanced_accuracy"], f32["balanced_accuracy"])
    for la, lb in zip(i8["labels"], f32["labels"]):
        n = la["label"]
        row(f"`{n}` AUC", la["auc"], lb["auc"])
        row(f"`{n}` sensitivity @ {la['threshold']} ({la['tp']}/{la['positives']} int8, {lb['tp']}/{lb['positives']} fp32)",
            la["sensitivity"], lb["sensitivity"])
        row(f"`{n}` specificity @ {la['threshold']} ({la['tn']}/{la['negatives']} int8, {lb['tn']}/{lb['negatives']} fp32)",
            la["specificity"], lb["specificity"])
    L.append(f"Confusion (rows truth, cols argmax; label order {[l['label'] for l in i8['labels']]}): "
             f"int8 {i8['confusion']}, fp32 {f32['confusion']}")
    csvs = [f for f in os.listdir(os.path.join(work, "eval")) if f.endswith(".csv")] if os.path.isdir(os.path.join(work, "eval")) else []
    L.append(f"Report: {os.path.join(work, 'eval', 'report.md')} (CSV {', '.join(csvs) or '-'})")
    if dm:
        L.append("\n### Running daemon (cxr-tiny-cls 0.2.0 -> signed update -> SIGHUP)\n")
        for k in ("before", "after"):
            f = dm[k]
            sc = {s["label"]: round(s["score"], 4) for s in f["scores"]}
            L.append(f"- {k}: model {f['model']['id']} {f['model']['version']} (sha256 {f['model']['sha256'][:12]}...), "
                     f"over_threshold {f['over_threshold']}, scores {sc}, timings_ms {f.get('timings_ms')}")
        L.append(f"- `bedside models install` {dm['install_seconds']} s; update taken {dm['take_seconds_after_sighup']} s "
                 f"after SIGHUP (status model_update.state = taken)")
    text = "\n".join(L)
    print(text)
    with open(os.path.join(work, "summary.json"), "w") as fh:
        json.dump({"step_seconds": step_seconds, "train": tr, "manifest": man, "eval_int8": i8, "eval_fp32": f32,
                   "daemon": dm}, fh, indent=1, default=str)


def main():
    a = parse()
    if a.summary:
        return summary(os.path.abspath(a.summary), json.loads(a.step_seconds))
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    # per_channel_study keeps its checkpoint under STUDY_DIR/resnet18: put it in the work dir, not ~/.cache.
    os.environ["STUDY_DIR"] = os.path.join(work, "study")
    os.environ.setdefault("CACHE", "/work/scratch/cache")   # else per_channel_study would default it under STUDY_DIR
    import numpy as np
    import onnx
    import torch
    import per_channel_study as S   # sets torch to 1 thread, imports zoo
    import data
    import train_export as TE
    import zoo
    torch.set_num_threads(1)
    print(f"[road] data cache {data.CACHE}; torch {torch.__version__}, 1 thread", flush=True)

    t0 = time.time()
    if os.path.exists(S.RESNET_CKPT) and os.environ.get("RETRAIN") != "1":
        ck = torch.load(S.RESNET_CKPT)
        model = S.resnet18_1ch()
        model.load_state_dict(ck["state"])
        info = dict(ck["info"], reused_checkpoint=S.RESNET_CKPT)
        print(f"[road] reusing {S.RESNET_CKPT} (RETRAIN=1 to train again)", flush=True)
    else:
        model, info = S.train_resnet()
    t_train = time.time() - t0

    model.eval()
    fused = S.fold_resnet(model)
    xva, yva = data.load("val", workers=1)
    with torch.no_grad():
        a_, b_ = model(torch.from_numpy(xva[:8])), fused(torch.from_numpy(xva[:8]))
    info["fold_max_abs_logit_diff"] = float((a_ - b_).abs().max())
    info["val_acc_torch_folded"], _ = TE.evaluate(fused, xva, yva)
    onnx_path = os.path.join(work, "resnet18.onnx")
    TE.export_onnx(fused, onnx_path, "ResNet-18 (torchvision, 1-channel conv1, random init, BatchNorm folded) "
                                     "trained briefly on cxr-tiny-cls synthetic phantoms (road_resnet18.py; not shipped)")
    m = onnx.load(onnx_path)
    ops = [n.op_type for n in m.graph.node]
    assert "BatchNormalization" not in ops, ops
    ins = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in m.graph.input]
    outs = [(o.name, [d.dim_value for d in o.type.tensor_type.shape.dim]) for o in m.graph.output]
    assert ins == [("input", [1, 1, 224, 224])], ins
    assert outs == [("logits", [1, 3])], outs
    assert m.opset_import[0].version == 17, m.opset_import
    o = zoo.run(zoo.session(onnx_path), xva[:8])
    info["onnx_vs_torch_max_abs_logit_diff"] = float(np.abs(o - a_.numpy()).max())
    info["onnx_ops"] = {k: ops.count(k) for k in sorted(set(ops))}
    info["onnx_bytes"] = os.path.getsize(onnx_path)
    info["loss_log"] = info.get("loss_log", [])
    print(f"[road] exported {onnx_path} ({info['onnx_bytes']:,} B); fold |dlogit| "
          f"{info['fold_max_abs_logit_diff']:.1e}, onnxruntime vs torch |dlogit| "
          f"{info['onnx_vs_torch_max_abs_logit_diff']:.1e}; val acc (torch, {len(yva)} images) "
          f"{info['val_acc_torch_folded']:.4f}", flush=True)

    t1 = time.time()
    n = calib_pngs(os.path.join(work, "calib"), a.n_calib)
    info["calib_pngs"] = n
    info["calib_seconds"] = time.time() - t1
    info["train_step_seconds_total"] = t_train
    print(f"[road] {n} calibration PNGs in {os.path.join(work, 'calib')} ({info['calib_seconds']:.0f} s)", flush=True)
    with open(os.path.join(work, "train.json"), "w") as fh:
        json.dump(info, fh, indent=1)


if __name__ == "__main__":
    main()
