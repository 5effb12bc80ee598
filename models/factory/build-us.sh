#!/usr/bin/env bash
# One-command rebuild of models/us-fast-fluid (int8 model, pruned fp32, dense fp32 parent, manifest, card figures),
# tests/fixtures/us-fast-fluid, tests/data/us/fast-clip.{dcm,json,scores.json} and tests/fixtures/models/us-slow.
# Deterministic on one machine from fixed seeds (see models/us-fast-fluid/README.md, "Reproducibility").
#
#   models/factory/build-us.sh                       # full: data, training, pruning, export, int8, fixtures, clip
#   SKIP_TRAIN=1 models/factory/build-us.sh          # reuse $CACHE_US/us-dense.pt and us-pruned.pt (export onwards)
#   TRACT_BENCH=/path/to/tract-bench models/factory/build-us.sh   # also tract parity/timings (-> [parity] tolerances)
#
# Environment: VENV (default /work/venv), CACHE_US (default /work/scratch/cache-us: generated data + checkpoints,
# outside the repo), EPOCHS (dense, default 14), FT_EPOCHS (after pruning, default 8), PRUNE_RATIO (default 0.5),
# TRAIN_THREADS (default 1; the published model was trained with 1 thread).
# tract-bench: CARGO_TARGET_DIR=/work/scratch/tract-bench-us cargo build --release \
#                --manifest-path models/factory/tract-bench/Cargo.toml
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-/work/venv}"
export CACHE_US="${CACHE_US:-/work/scratch/cache-us}"
export TRAIN_THREADS="${TRAIN_THREADS:-1}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0 OMP_NUM_THREADS="$TRAIN_THREADS" MKL_NUM_THREADS="$TRAIN_THREADS"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
PY="$VENV/bin/python"
cd "$HERE/us"

"$PY" data_us.py                                     # train/val/test/calib splits (cached)
if [ -z "${SKIP_TRAIN:-}" ] || [ ! -f "$CACHE_US/us-dense.pt" ]; then
  "$PY" train_us.py train
fi
if [ -z "${SKIP_TRAIN:-}" ] || [ ! -f "$CACHE_US/us-pruned.pt" ]; then
  "$PY" train_us.py prune
fi
"$PY" train_us.py export
"$PY" quantize_us.py quantize evaluate fixtures manifest
if [ -n "${TRACT_BENCH:-}" ]; then
  "$PY" bench_us.py 100                               # tract vs onnxruntime parity + timings -> $CACHE_US/tract.json
  "$PY" quantize_us.py manifest                       # [parity] tolerances from the measurement
fi
"$PY" clip_us.py
"$PY" slow_us.py
sha256sum "$HERE/../us-fast-fluid/model.onnx" "$HERE/../us-fast-fluid/model.pruned.onnx" \
  "$HERE/../us-fast-fluid/model.fp32.onnx" "$HERE/../../tests/data/us/fast-clip.dcm"
