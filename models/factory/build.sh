#!/usr/bin/env bash
# One-command rebuild of models/cxr-tiny-cls (model, fp32 parent, manifest), tests/fixtures/cxr-tiny-cls and
# tests/data/*.dcm.  Deterministic on one machine (see MODEL_CARD.md, "Reproducibility").
#
#   models/factory/build.sh            # full: data, training, export, quantization, manifest, fixtures, samples
#   SKIP_TRAIN=1 models/factory/build.sh   # reuse $CACHE/cxr-tiny-cls.pt (export onwards)
#   TRACT_BENCH=/path/to/tract-bench models/factory/build.sh   # also run tract parity/timing at the end
#
# Environment: VENV (default /work/venv), CACHE (default /work/scratch/cache: generated data + checkpoint,
# kept outside the repo), EPOCHS, TRAIN_THREADS.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-/work/venv}"
export CACHE="${CACHE:-/work/scratch/cache}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0 OMP_NUM_THREADS="${TRAIN_THREADS:-2}" MKL_NUM_THREADS="${TRAIN_THREADS:-2}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
PY="$VENV/bin/python"
cd "$HERE"

if [ -z "${SKIP_TRAIN:-}" ] || [ ! -f "$CACHE/cxr-tiny-cls.pt" ]; then
  "$PY" train_export.py train
fi
"$PY" train_export.py export
"$PY" quantize_manifest.py
"$PY" fixtures_samples.py
if [ -n "${TRACT_BENCH:-}" ]; then
  "$PY" tract_check.py 100
fi
sha256sum "$HERE/../cxr-tiny-cls/model.onnx" "$HERE/../cxr-tiny-cls/model.fp32.onnx"
