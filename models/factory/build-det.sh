#!/usr/bin/env bash
# One-command rebuild of models/cxr-tiny-det (int8 model, pruned fp32, dense fp32 parent, manifest),
# tests/fixtures/cxr-tiny-det and tests/data/cxr-det-*.dcm + cxr-det.json.
# Deterministic on one machine from fixed seeds (see models/cxr-tiny-det/README.md, "Reproducibility").
#
#   models/factory/build-det.sh                       # full: data, training, pruning, export, int8, fixtures, samples
#   SKIP_TRAIN=1 models/factory/build-det.sh          # reuse $CACHE_DET/det-dense.pt and det-pruned.pt (export onwards)
#   TRACT_BENCH=/path/to/tract-bench models/factory/build-det.sh   # also tract parity/timings (-> [parity] tolerances)
#
# Environment: VENV (default /work/venv), CACHE_DET (default /work/scratch/cache-det: generated data + checkpoints,
# outside the repo), EPOCHS (dense, default 10), FT_EPOCHS (after pruning, default 6), PRUNE_RATIO (default 0.3),
# TRAIN_THREADS (default 1; the published model was trained with 1 thread).
# tract-bench: CARGO_TARGET_DIR=/work/scratch/tract-bench-det cargo build --release \
#                --manifest-path models/factory/tract-bench/Cargo.toml
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-/work/venv}"
export CACHE_DET="${CACHE_DET:-/work/scratch/cache-det}"
export TRAIN_THREADS="${TRAIN_THREADS:-1}"
export EPOCHS="${EPOCHS:-10}" FT_EPOCHS="${FT_EPOCHS:-6}" PRUNE_RATIO="${PRUNE_RATIO:-0.3}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0 OMP_NUM_THREADS="$TRAIN_THREADS" MKL_NUM_THREADS="$TRAIN_THREADS"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
PY="$VENV/bin/python"
cd "$HERE/det"

"$PY" data_det.py                                     # train/val/test/calib splits (cached)
if [ -z "${SKIP_TRAIN:-}" ] || [ ! -f "$CACHE_DET/det-dense.pt" ]; then
  "$PY" train_det.py train
fi
if [ -z "${SKIP_TRAIN:-}" ] || [ ! -f "$CACHE_DET/det-pruned.pt" ]; then
  "$PY" train_det.py prune
fi
"$PY" train_det.py export
"$PY" quantize_det.py quantize evaluate fixtures manifest
if [ -n "${TRACT_BENCH:-}" ]; then
  "$PY" bench_det.py 100                              # tract vs onnxruntime parity + timings -> $CACHE_DET/tract.json
  "$PY" quantize_det.py manifest                      # [parity] tolerances from the measurement
fi
"$PY" samples_det.py
sha256sum "$HERE/../cxr-tiny-det/model.onnx" "$HERE/../cxr-tiny-det/model.pruned.onnx" \
  "$HERE/../cxr-tiny-det/model.fp32.onnx" "$HERE/../../tests/data/cxr-det-"*.dcm
