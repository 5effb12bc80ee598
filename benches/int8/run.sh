#!/usr/bin/env bash
# int8 inference benchmark on real architectures: how long one batch-1 inference takes in
#   - tract as bedside uses it today (`bedside bench --tract-only`), fp32 and int8 (Conv+Relu QLinearConv, per-tensor),
#   - bedside's own int8 ops inside tract (`bedside bench`), on three int8 forms: per-tensor and per-channel
#     QLinearConv, and onnxruntime's full QOperator output (com.microsoft QLinearAdd/Concat/Mul/Sigmoid/...),
#   - onnxruntime 1.32 (the reference), fp32 and int8,
# at 1 and 2 threads, for ResNet-18 (1-channel, 224), MobileNetV3-Small and EfficientNet-B0 (224), MONAI UNet and
# BasicUNet (1x256x256) and YOLOv8n (320), all with random weights (only the speed is measured). Every cell is
# measured in each of 3 rounds, in a fresh random order per round; the median of 30 runs per round, the median of
# the round medians reported with the min-max spread. Prints markdown tables (ms, bedside/ORT, bedside/tract fp32,
# per-channel/per-tensor, 2-thread speed-up) and writes them with the raw JSON to $BEDSIDE_BENCH_DIR/results/.
#
# Usage: benches/int8/run.sh [run.py options], e.g. --quick (1 round, 3 runs, 1 thread: about a minute),
#        --models yolov8n,resnet18-1ch, --engines ort, --profile (per-op times of the slowest bedside int8 model);
#        see `python benches/int8/run.py --help`. REBUILD_MODELS=1 rebuilds the ONNX files.
# Time on a 2-core x86-64 VM: onnxruntime's 36 cells take ~40 s a round; with tract's and bedside's 60 cells (a fresh
# process, model load and optimisation each) the default run is estimated at 15-30 minutes, mostly tract's own
# fp32/int8 cells (3-5x onnxruntime's times in the earlier spike). The first run adds the venv (~2 min, a ~6 GB
# download: torch from PyPI is the CUDA-linked wheel), the models (~1.5 min) and `cargo build --release`.
# Where things go (all outside the repository): the venv in ${BEDSIDE_BENCH_VENV:-~/.cache/bedside-bench-venv},
# the models (~200 MB), models.json and results in ${BEDSIDE_BENCH_DIR:-~/.cache/bedside-bench}.
# ultralytics (AGPL-3.0) is installed only into that venv and used only to build YOLOv8n's ONNX file from its
# yolov8n.yaml (no weights are downloaded); it never enters the repository, bedside's dependencies or the package.
# Not part of CI or the tests; the figures depend on the machine and on its load (run it on an otherwise idle one).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${BEDSIDE_BENCH_VENV:-$HOME/.cache/bedside-bench-venv}
export BEDSIDE_BENCH_DIR=${BEDSIDE_BENCH_DIR:-$HOME/.cache/bedside-bench}
REQ=benches/int8/requirements.txt
case "$(realpath -m "$VENV")/ $(realpath -m "$BEDSIDE_BENCH_DIR")/" in
  *"$(pwd -P)/"*) echo "the venv and the work folder must be outside the repository" >&2; exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  echo "== venv $VENV" >&2
  python3 -m venv "$VENV"
fi
STAMP="$VENV/.bedside-bench-requirements.sha256"
WANT=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "== pip install -r $REQ (first time: ~6 GB)" >&2
  "$VENV/bin/pip" install -q -r "$REQ"
  echo "$WANT" > "$STAMP"
fi

# build_models.py keeps every model already built (and listed in models.json); REBUILD_MODELS=1 redoes them
echo "== models in $BEDSIDE_BENCH_DIR" >&2
"$VENV/bin/python" benches/int8/build_models.py --out "$BEDSIDE_BENCH_DIR" ${REBUILD_MODELS:+--force} \
  2> >(grep -v -e '^WARNING:root' -e 'Warning' >&2)

echo "== cargo build --release" >&2
cargo build --release --quiet --bin bedside

echo "== timing" >&2
exec "$VENV/bin/python" benches/int8/run.py --dir "$BEDSIDE_BENCH_DIR" --bedside target/release/bedside "$@"
