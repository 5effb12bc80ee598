#!/usr/bin/env bash
# One-command rebuild of models/cxr-tiny-cls in its three forms (dense fp32 parent model.fp32.onnx, structurally
# pruned fp32 model.pruned.onnx, int8 of the pruned model model.onnx), model.toml and tests/fixtures/cxr-tiny-cls;
# checks the committed tests/data/cxr-*.dcm samples against the shipped model (REGEN_SAMPLES=1 rewrites them).
# Deterministic on one machine (see MODEL_CARD.md, "Reproducibility").
#
#   models/factory/build.sh            # full: data, dense training, pruning + fine-tune, export, int8, fixtures
#   SKIP_TRAIN=1 models/factory/build.sh   # reuse $CACHE/cxr-tiny-cls.pt and cxr-tiny-cls-pruned.pt (export onwards)
#   TRACT_BENCH=/path/to/tract-bench models/factory/build.sh   # also tract parity (-> [parity] tolerances) and
#                                                              # bench_all.py timings of the three forms
#
# Environment: VENV (default /work/venv), CACHE (default /work/scratch/cache: generated data + checkpoints, kept
# outside the repo), EPOCHS (dense, default 30), TRAIN_THREADS (dense, default 2: the published parent was trained
# with 2 threads and a full rebuild reproduces its bytes), FT_EPOCHS (fine-tune after pruning, default 12),
# FT_THREADS (default 1), PRUNE_RATIO (default 0.5).
# tract-bench: CARGO_TARGET_DIR=/work/scratch/tract-bench-cls cargo build --release \
#                --manifest-path models/factory/tract-bench/Cargo.toml
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-/work/venv}"
export CACHE="${CACHE:-/work/scratch/cache}"
export TRAIN_THREADS="${TRAIN_THREADS:-2}" FT_THREADS="${FT_THREADS:-1}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
PY="$VENV/bin/python"
cd "$HERE"
threads() { OMP_NUM_THREADS="$1" MKL_NUM_THREADS="$1" "${@:2}"; }

if [ -z "${SKIP_TRAIN:-}" ] || [ ! -f "$CACHE/cxr-tiny-cls.pt" ]; then
  threads "$TRAIN_THREADS" "$PY" train_export.py train                 # dense parent
  rm -f "$CACHE/cxr-tiny-cls-pruned.pt"                               # its pruned child is stale now
fi
if [ -z "${SKIP_TRAIN:-}" ] || [ ! -f "$CACHE/cxr-tiny-cls-pruned.pt" ]; then
  threads "$FT_THREADS" "$PY" train_export.py prune                   # structured pruning + fine-tune
fi
threads 1 "$PY" train_export.py export                                # model.fp32.onnx, model.pruned.onnx
threads 1 "$PY" quantize_manifest.py quantize evaluate manifest       # model.onnx (int8 of pruned), metrics, model.toml
threads 1 "$PY" fixtures_samples.py fixtures check                    # fixtures; verdicts on tests/data/cxr-*.dcm
if [ -n "${TRACT_BENCH:-}" ]; then
  threads 1 "$PY" tract_check.py                                      # tract vs onnxruntime -> $CACHE/tract.json
  threads 1 "$PY" quantize_manifest.py manifest                       # [parity] tolerances from the measurement
  "$PY" bench_all.py --tract-bench "$TRACT_BENCH" --models cxr-tiny-cls --json "$CACHE/bench.json"
fi
sha256sum "$HERE/../cxr-tiny-cls/model.onnx" "$HERE/../cxr-tiny-cls/model.pruned.onnx" \
  "$HERE/../cxr-tiny-cls/model.fp32.onnx"
