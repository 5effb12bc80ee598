"""Times the int8 benchmark's models (build_models.py) in tract, bedside and onnxruntime, interleaved.

  python benches/int8/run.py [--dir DIR] [--bedside target/release/bedside] [--models a,b] [--forms f,..]
      [--engines tract,bedside,ort] [--threads 1,2] [--rounds 3] [--runs 30] [--warmup 5] [--all-forms] [--skip-today] [--shipped]
      [--quick] [--seed 0] [--out PREFIX] [--profile [MODEL[:FORM]]] [--profile-only]

Cells: every (model, engine, form, threads). Default forms per engine:
  tract    fp32, int8-pt        `bedside bench --tract-only`: today's tract, no bedside ops
  bedside  int8-pt, int8-pc, int8-qop      `bedside bench`: tract with bedside's int8 ops
  ort      fp32, int8-pt, int8-qop         onnxruntime in this process (CPUExecutionProvider, intra_op_num_threads
                                           = threads, inter_op 1, sequential)
--all-forms runs every engine on every form (tract on int8-pc/int8-qop, bedside on fp32, ORT on int8-pc).
--forms / --engines / --models only narrow that set.

Each round visits every cell once, in a fresh random order (seeded), so drift and other load hit all cells
alike; a cell's value in a round is the median of --runs timed runs after warm-up (bedside/tract: the CLI's own
warm-up, in a fresh process per cell and round; ORT: --warmup runs on a session made for the cell). Reported:
the median of the round medians and their spread (min-max). A cell that fails (a form bedside or tract cannot
load: `{"error": ...}` and a nonzero exit) is recorded as failed and not retried in later rounds.

Writes PREFIX.md (the tables) and PREFIX.json (every round of every cell, the CLI's JSON lines, the machine);
PREFIX defaults to DIR/results/int8-<date>-<time>. --quick: 1 round, 3 runs, 1 warm-up run, 1 thread.
--profile: afterwards, `bedside bench --onnx FILE --shape ... --profile` on MODEL (default: the slowest bedside
int8 cell at 1 thread in this run; FORM default: that model's slowest bedside int8 form), pasted into the .md.
"""
import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FORMS = ("fp32", "int8-pt", "int8-pc", "int8-qop")
INT8 = ("int8-pt", "int8-pc", "int8-qop")
ENGINES = ("tract", "bedside", "ort")
DEFAULT_CELLS = {"tract": ("fp32", "int8-pt"), "bedside": INT8, "ort": ("fp32", "int8-pt", "int8-qop")}
LABEL = {"tract": "tract", "bedside": "bedside", "ort": "ORT"}


def default_dir():
    return os.environ.get("BEDSIDE_BENCH_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "bedside-bench")


def key(engine, form, threads):
    return f"{engine}/{form}/{threads}t"


# ------------------------------------------------------------------------------------------------ runners

def bedside_cmd(bin_path, path, shape, extra):
    return [bin_path, "bench", "--onnx", path, "--shape", ",".join(map(str, shape))] + extra


def bedside_run(bin_path, engine, path, shape, runs, threads, timeout):
    """One `bedside bench --json` process; its JSON object (with median_ms) or RuntimeError."""
    cmd = bedside_cmd(bin_path, path, shape, ["--runs", str(runs), "--threads", str(threads), "--json"])
    if engine == "tract":
        cmd.append("--tract-only")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout} s: {' '.join(cmd)}")
    objs = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                objs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    err = next((o["error"] for o in objs if "error" in o), None)
    ok = [o for o in objs if "median_ms" in o]
    if p.returncode != 0 or err is not None or not ok:
        why = err or (p.stderr.strip() or p.stdout.strip())[-1500:] or f"exit {p.returncode}, no JSON"
        raise RuntimeError(f"exit {p.returncode}: {why}")
    return ok[-1]


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_run(path, x, runs, warmup, threads):
    s = ort_session(path, threads)
    feed = {s.get_inputs()[0].name: x}
    for _ in range(warmup):
        s.run(None, feed)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feed)
        ts.append((time.perf_counter() - t) * 1e3)
    return {"engine": "ort", "threads": threads, "runs": runs, "median_ms": float(np.median(ts)),
            "p25_ms": float(np.percentile(ts, 25)), "p75_ms": float(np.percentile(ts, 75))}


def shipped_models():
    """models.json-style entries for the models bedside ships: the int8 file as int8-pt (it is the factory's
    per-tensor QOperator recipe) and its pruned fp32 parent as fp32, with absolute paths."""
    import tomllib
    sys.path.insert(0, os.path.join(ROOT, "models", "factory"))
    from bench_all import onnx_macs
    out = {}
    for name in ("cxr-tiny-cls", "cxr-tiny-det", "us-fast-fluid"):
        d = os.path.join(ROOT, "models", name)
        with open(os.path.join(d, "model.toml"), "rb") as f:
            shape = tomllib.load(f)["input"]["shape"]
        files = {"fp32": os.path.join(d, "model.pruned.onnx"), "int8-pt": os.path.join(d, "model.onnx")}
        out[name] = {"input": "input", "shape": shape, "gmac": round(onnx_macs(files["fp32"], shape) / 1e9, 4),
                     "files": {f: {"file": p, "bytes": os.path.getsize(p), "nodes": None, "com_microsoft_ops": {}}
                               for f, p in files.items()}}
    return out


# ------------------------------------------------------------------------------------------------ tables

def fmt_ms(c, spread):
    if c is None or not (c.get("rounds") or "error" in c):
        return "–"
    if not c.get("rounds"):
        return "fail"
    m = c["median_ms"]
    s = f"{m:.3g}" if m < 10 else f"{m:.1f}"
    if spread and len(c["rounds"]) > 1:
        lo, hi = c["min_ms"], c["max_ms"]
        s += f" ({lo:.3g}–{hi:.3g})" if hi < 10 else f" ({lo:.1f}–{hi:.1f})"
    return s


def ms(cells, engine, form, t):
    c = cells.get(key(engine, form, t))
    return c["median_ms"] if c and c.get("rounds") else None


def ratio(a, b, digits=2):
    return f"{a / b:.{digits}f}" if a is not None and b is not None else "–"


def best_int8(cells, engine, t, forms=INT8):
    """(form, ms) of the fastest int8 form of `engine` at `t` threads that ran, or (None, None)."""
    got = [(f, ms(cells, engine, f, t)) for f in forms]
    got = [(f, v) for f, v in got if v is not None]
    return min(got, key=lambda fv: fv[1]) if got else (None, None)


def table(res, t, spread):
    # the spec's columns first, then any other measured (engine, form); a column nothing was measured for is left out
    cols = [("tract", "fp32"), ("tract", "int8-pt"), ("bedside", "int8-pt"), ("bedside", "int8-pc"),
            ("bedside", "int8-qop"), ("ort", "fp32"), ("ort", "int8-pt"), ("ort", "int8-qop")]
    cols += [(e, f) for e in ENGINES for f in FORMS if (e, f) not in cols]
    has = lambda e, f, tt=t: any(key(e, f, tt) in m["cells"] for m in res["models"].values())  # noqa: E731
    cols = [(e, f) for e, f in cols if has(e, f)]
    head = ["model", "GMAC"] + [f"{LABEL[e]} {f}" + (" (today)" if (e, f) == ("tract", "int8-pt") else "")
                                for e, f in cols]
    ratios = []   # (title, function of the model's cells -> str)
    if has("bedside", "int8-pt") and has("ort", "int8-pt"):
        ratios.append(("bedside pt / ORT pt", lambda c: ratio(ms(c, "bedside", "int8-pt", t), ms(c, "ort", "int8-pt", t))))
    if has("bedside", "int8-qop") and has("ort", "int8-qop"):
        ratios.append(("bedside qop / ORT qop",
                       lambda c: ratio(ms(c, "bedside", "int8-qop", t), ms(c, "ort", "int8-qop", t))))
    if has("tract", "fp32") and any(has("bedside", f) for f in INT8):
        def vs_tract(c):
            bf, bv = best_int8(c, "bedside", t)
            return f"{ratio(bv, ms(c, 'tract', 'fp32', t))} ({bf[5:]})" if bf and ms(c, "tract", "fp32", t) else "–"
        ratios.append(("bedside int8 / tract fp32", vs_tract))
    if has("bedside", "int8-pc") and has("bedside", "int8-pt"):
        ratios.append(("bedside pc/pt", lambda c: ratio(ms(c, "bedside", "int8-pc", t), ms(c, "bedside", "int8-pt", t))))
    if t != 1:
        for eng in ("bedside", "ort"):
            if any(has(eng, f) for f in INT8) and any(has(eng, f, 1) for f in INT8):
                def speedup(c, eng=eng):
                    f1, _ = best_int8(c, eng, 1)
                    return f"{ratio(ms(c, eng, f1, 1), ms(c, eng, f1, t))} ({f1[5:]})" if f1 and ms(c, eng, f1, t) else "–"
                ratios.append((f"{LABEL[eng]} int8 1t/{t}t", speedup))
    head += [title for title, _ in ratios]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in res["models"].items():
        c = m["cells"]
        r = [name, f"{m['gmac']:.3f}"] + [fmt_ms(c.get(key(e, f, t)), spread) for e, f in cols]
        r += [fn(c) for _, fn in ratios]
        rows.append("| " + " | ".join(r) + " |")
    return "\n".join(rows)


def coverage(res):
    """bedside's own JSON fields per model and form: how many nodes bedside's ops took, how many quantized
    nodes were left to tract."""
    rows = ["| model | form | nodes_bedside | nodes_tract_quant | com.microsoft ops in the file |", "|---|---|---|---|---|"]
    any_row = False
    for name, m in res["models"].items():
        for f in INT8:
            got = [c for k, c in m["cells"].items() if k.startswith(f"bedside/{f}/") and c.get("last")]
            if not got:
                continue
            last = got[0]["last"]
            any_row = True
            ms_ops = m["forms"].get(f, {}).get("com_microsoft_ops", {})
            rows.append(f"| {name} | {f} | {last.get('nodes_bedside', '–')} | {last.get('nodes_tract_quant', '–')} | "
                        + (", ".join(f"{k} {v}" for k, v in ms_ops.items()) or "none") + " |")
    return "\n".join(rows) if any_row else ""


# ------------------------------------------------------------------------------------------------ main

def git_head():
    try:
        h = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return h + ("-dirty" if dirty else "")
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--dir", default=default_dir(), help="build_models.py's folder (models.json)")
    ap.add_argument("--bedside", default=os.path.join(ROOT, "target", "release", "bedside"))
    ap.add_argument("--models", help="comma-separated model names (default: all in models.json)")
    ap.add_argument("--forms", help="comma-separated subset of " + ",".join(FORMS))
    ap.add_argument("--engines", default="tract,bedside,ort", help="comma-separated subset of tract,bedside,ort")
    ap.add_argument("--all-forms", action="store_true", help="every engine on every form")
    ap.add_argument("--shipped", action="store_true",
                    help="also the shipped models (models/*/): int8-pt = model.onnx, fp32 = its pruned fp32 parent")
    ap.add_argument("--skip-today", action="store_true",
                    help="leave out tract's own int8 path (the 'today' column: seconds per run on the big models, "
                         "and bedside's changes do not touch it)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=30, help="timed runs per cell and round")
    ap.add_argument("--warmup", type=int, default=5, help="ORT warm-up runs per cell and round")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 3 runs, 1 warm-up, 1 thread")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=900, help="seconds allowed to one bedside process")
    ap.add_argument("--out", help="output prefix (.md, .json); default DIR/results/int8-<date>-<time>")
    ap.add_argument("--profile", nargs="?", const="auto", metavar="MODEL[:FORM]",
                    help="profile one model's bedside int8 run per op (no value: the slowest bedside int8 cell)")
    ap.add_argument("--profile-only", action="store_true", help="skip the timing, only --profile MODEL[:FORM]")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.runs, a.warmup, a.threads = 1, 3, 1, "1"
    threads = [int(t) for t in a.threads.split(",")]
    engines = [e for e in a.engines.split(",") if e]
    forms = a.forms.split(",") if a.forms else list(FORMS)
    for bad, known, what in ((engines, ENGINES, "engine"), (forms, FORMS, "form")):
        if set(bad) - set(known):
            sys.exit(f"unknown {what}(s) {sorted(set(bad) - set(known))}; known: {', '.join(known)}")
    index_path = os.path.join(a.dir, "models.json")
    if not os.path.exists(index_path):
        sys.exit(f"no {index_path}: run benches/int8/build_models.py (or benches/int8/run.sh) first")
    index = json.load(open(index_path))
    if a.shipped:
        index["models"].update(shipped_models())
    models = {n: m for n, m in index["models"].items() if not a.models or n in a.models.split(",")}
    if a.models and set(a.models.split(",")) - set(models):
        sys.exit(f"not in models.json: {sorted(set(a.models.split(',')) - set(models))}")
    need_bin = a.profile or any(e in engines for e in ("tract", "bedside"))
    if need_bin and not os.access(a.bedside, os.X_OK):
        sys.exit(f"no bedside binary at {a.bedside} (cargo build --release), or leave tract,bedside out of --engines")
    if need_bin:
        h = subprocess.run([a.bedside, "bench", "--help"], capture_output=True, text=True)
        if "--onnx" not in h.stdout:
            sys.exit(f"{a.bedside} bench has no --onnx option (yet): rebuild bedside, or time onnxruntime alone "
                     "with --engines ort")
    if a.profile_only and (not a.profile or a.profile == "auto"):
        sys.exit("--profile-only needs --profile MODEL[:FORM]")

    import onnxruntime as ort
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = a.out or os.path.join(a.dir, "results", f"int8-{stamp}")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    res = {"date": stamp, "rounds": a.rounds, "runs": a.runs, "ort_warmup": a.warmup, "threads": threads,
           "seed": a.seed, "engines": engines, "git": git_head(), "bedside": os.path.abspath(a.bedside),
           "bedside_mtime": (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(a.bedside)))
                             if os.path.exists(a.bedside) else None),
           "onnxruntime": ort.__version__, "build_versions": index.get("versions"), "cpu": cpu,
           "nproc": os.cpu_count(), "loadavg_start": open("/proc/loadavg").read().split()[:3], "models": {}}
    cells = []
    for name, m in models.items():
        entry = {"gmac": m["gmac"], "shape": m["shape"], "input": m["input"], "cells": {},
                 "forms": {f: {"file": v["file"], "bytes": v["bytes"], "nodes": v["nodes"],
                               "com_microsoft_ops": v["com_microsoft_ops"]} for f, v in m["files"].items()}}
        res["models"][name] = entry
        for e in engines:
            for f in (FORMS if a.all_forms else DEFAULT_CELLS[e]):
                if f not in forms or f not in m["files"] or (a.skip_today and (e, f) == ("tract", "int8-pt")):
                    continue
                for t in threads:
                    cells.append((name, e, f, t))
                    entry["cells"][key(e, f, t)] = {"rounds": [], "p25_ms": [], "p75_ms": []}
    xs = {n: np.random.default_rng(1).standard_normal(m["shape"]).astype(np.float32) for n, m in models.items()}

    t0 = time.time()
    if not a.profile_only:
        rng = random.Random(a.seed)
        print(f"{len(cells)} cells x {a.rounds} rounds, {a.runs} runs each", file=sys.stderr, flush=True)
        for r in range(a.rounds):
            order = cells[:]
            rng.shuffle(order)
            for i, (name, e, f, t) in enumerate(order):
                c = res["models"][name]["cells"][key(e, f, t)]
                if "error" in c:
                    continue
                path = os.path.join(a.dir, models[name]["files"][f]["file"])
                try:
                    if e == "ort":
                        out = ort_run(path, xs[name], a.runs, a.warmup, t)
                    else:
                        out = bedside_run(a.bedside, e, path, models[name]["shape"], a.runs, t, a.timeout)
                except Exception as ex:  # one failing cell must not end the run
                    c["error"] = str(ex)[-1500:]
                    print(f"  {name} {key(e, f, t)} failed: {str(ex)[-300:]}", file=sys.stderr, flush=True)
                    continue
                c["rounds"].append(out["median_ms"])
                c["p25_ms"].append(out.get("p25_ms"))
                c["p75_ms"].append(out.get("p75_ms"))
                c["last"] = out
                print(f"  [{r + 1}/{a.rounds} {i + 1}/{len(order)}] {name} {key(e, f, t)} {out['median_ms']:.3f} ms",
                      file=sys.stderr, flush=True)
            print(f"round {r + 1}/{a.rounds} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    for m in res["models"].values():
        for c in m["cells"].values():
            if c["rounds"]:
                c["median_ms"] = float(np.median(c["rounds"]))
                c["min_ms"], c["max_ms"] = float(min(c["rounds"])), float(max(c["rounds"]))
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    res["wall_s"] = round(time.time() - t0, 1)

    md = [f"# int8 benchmark {stamp}", "", "## Models (benches/int8/build_models.py: random weights, batch 1)", "",
          "| model | input | GMAC | MB fp32 / pt / pc / qop | nodes fp32 / pt / pc / qop | com.microsoft ops in int8-qop |",
          "|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        fo = m["forms"]
        md.append(f"| {name} | {'x'.join(map(str, m['shape']))} | {m['gmac']:.3f} | "
                  + " / ".join(f"{fo[f]['bytes'] / 1e6:.1f}" if f in fo else "–" for f in FORMS) + " | "
                  + " / ".join(str(fo[f]["nodes"]) if fo.get(f, {}).get("nodes") is not None else "–" for f in FORMS) + " | "
                  + (", ".join(f"{k} {v}" for k, v in fo.get("int8-qop", {}).get("com_microsoft_ops", {}).items())
                     or "none") + " |")
    md.append("")
    spread = a.rounds > 1
    if not a.profile_only:
        for t in threads:
            md += [f"## {t} thread{'s' if t > 1 else ''}: median ms" + (" (min–max of the round medians)" if spread else ""),
                   "", table(res, t, spread), ""]
        md += ["Ratios are of median times (below 1: the numerator is faster). bedside int8 = the fastest of "
               "bedside's int8 forms (named); bedside / ORT int8 1t/Nt = the speed-up from N threads of the "
               "engine's int8 form fastest at 1 thread (named). 'fail': the engine could not load or run the form (errors below); "
               "'–': not measured.", ""]
        cov = coverage(res)
        if cov:
            md += ["## bedside coverage (from `bedside bench --json`)", "", cov, ""]
        fails = [(n, k, c["error"]) for n, m in res["models"].items() for k, c in m["cells"].items() if "error" in c]
        if fails:
            md += ["## Failures", ""] + [f"- {n} {k}: `{e.strip().splitlines()[-1][:300] if e.strip() else e}`"
                                          for n, k, e in fails] + [""]
    md += [f"{a.runs} timed runs per cell and round, {a.rounds} round(s) in random order (seed {a.seed}); "
           f"ORT warm-up {a.warmup}. {cpu}, {res['nproc']} CPUs, load {' '.join(res['loadavg_start'])} -> "
           f"{' '.join(res['loadavg_end'])}; onnxruntime {res['onnxruntime']}; bedside {res['git']} "
           f"(binary {res['bedside_mtime']}); {res['wall_s']} s.", ""]

    if a.profile:
        target, pform = a.profile, None
        if ":" in target:
            target, pform = target.split(":", 1)
        if target == "auto":
            cand = [(c["median_ms"], n, k.split("/")[1]) for n, m in res["models"].items()
                    for k, c in m["cells"].items() if k.startswith("bedside/int8") and k.endswith("/1t")
                    and c.get("median_ms") is not None]
            if not cand:
                md += ["## Profile", "", "no bedside int8 cell ran at 1 thread: nothing to profile", ""]
                target = None
            else:
                _, target, pform = max(cand)
        if target is not None:
            if target not in models:
                sys.exit(f"--profile: {target} not in models.json")
            if pform is None:
                c = res["models"][target]["cells"]
                got = [(c[key("bedside", f, 1)]["median_ms"], f) for f in INT8
                       if c.get(key("bedside", f, 1), {}).get("median_ms") is not None]
                pform = max(got)[1] if got else "int8-pt"
            path = os.path.join(a.dir, models[target]["files"][pform]["file"])
            cmd = bedside_cmd(a.bedside, path, models[target]["shape"], ["--profile"])
            print("profiling:", " ".join(cmd), file=sys.stderr, flush=True)
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                text, rc = (p.stdout + ("\n" + p.stderr if p.stderr.strip() else "")).rstrip(), p.returncode
            except subprocess.TimeoutExpired:
                text, rc = f"timed out after {a.timeout} s", None
            res["profile"] = {"model": target, "form": pform, "cmd": cmd, "rc": rc, "output": text}
            md += [f"## Profile: {target} {pform} (bedside, 1 thread, exit {rc})", "",
                   f"`{' '.join(os.path.relpath(x, ROOT) if x.startswith(ROOT) else x for x in cmd)}`", "",
                   "```", text, "```", ""]

    text = "\n".join(md)
    print(text)
    open(prefix + ".md", "w").write(text)
    json.dump(res, open(prefix + ".json", "w"), indent=1)
    print(f"wrote {prefix}.md and {prefix}.json", file=sys.stderr)


if __name__ == "__main__":
    main()
