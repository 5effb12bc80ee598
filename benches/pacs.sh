#!/usr/bin/env bash
# Results to PACS, objects per second: bedside's durable DICOM outbox and C-STORE sender
# (`bedside bench-dicom-send`) against DCMTK's storescu sending the same files, both to one
# DCMTK storescp that receives without storing (--ignore), rounds interleaved.
#
# The objects are what the daemon sends for an X-ray: for each of N distinct copies of
# tests/data/cxr-ptx-mono2.dcm, the TID 1500 report and the Secondary Capture of two models
# (`bedside infer --structured-report --secondary-capture`).
#
# Usage: benches/pacs.sh [N_IMAGES=40] [ROUNDS=7]. Needs .ci/install-deps. Not part of the
# tests; the figures depend on the machine and its disk. Uses 127.0.0.1 only.
# BEDSIDE_BENCH_PROFILE=dev uses the test build (bedside at opt-level 2) instead of release.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-40}
ROUNDS=${2:-7}
PROFILE=${BEDSIDE_BENCH_PROFILE:-release}
if [ "$PROFILE" = dev ]; then
  cargo build --quiet --bin bedside
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug/bedside
else
  cargo build --release --quiet --bin bedside
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/bedside
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== making $((2 * N)) results ($PROFILE build) from $N distinct X-rays"
mkdir -p "$WORK/out"
for i in $(seq 1 "$N"); do
  cp tests/data/cxr-ptx-mono2.dcm "$WORK/src.dcm"
  dcmodify -nb -i "(0008,0018)=2.25.$RANDOM$RANDOM$i" -i "(0020,000e)=2.25.$RANDOM$i" "$WORK/src.dcm" >/dev/null
  "$BIN" infer "$WORK/src.dcm" --model models/cxr-tiny-cls --model models/cxr-tiny-det \
    --structured-report "$WORK/out/sr-$i.dcm" --secondary-capture "$WORK/out/sc-$i.dcm" >/dev/null 2>&1
done
echo "   one report $(stat -c %s "$WORK/out/sr-1.dcm") bytes, one capture $(stat -c %s "$WORK/out/sc-1.dcm") bytes"

# DCMTK leaves Nagle's algorithm on unless TCP_NODELAY is set: with it on, each C-STORE
# exchange waits for a delayed ACK (measured here: 20 reports of 5 KB took 1.8 s, 47 ms with
# TCP_NODELAY=1). Set for storescp and storescu, as a PACS tuned for throughput would be.
export TCP_NODELAY=1
PORT=$(free_port)
storescp --ignore --max-pdu 131072 -aet PACS "$PORT" & PIDS+=($!)
python3 - "$PORT" <<'PY'
import socket, sys, time
for _ in range(300):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close(); break
    except OSError:
        time.sleep(0.1)
PY
echo "== $ROUNDS rounds to storescp --ignore on 127.0.0.1:$PORT (outbox on $(df --output=source "$WORK" | tail -1))"
RUST_LOG=warn "$BIN" bench-dicom-send --port "$PORT" --ae-title PACS --rounds "$ROUNDS" --dir "$WORK" "$WORK"/out/*.dcm
