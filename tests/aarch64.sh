#!/usr/bin/env bash
# bedside on aarch64, without the boards: cross-build the binary with Debian's rustc-web
# (rustup cannot add targets here) and run it under qemu-user. The build uses the
# `cross-check` profile (release without fat LTO, see Cargo.toml) unless
# BEDSIDE_CROSS_PROFILE names another (`release` for the shipped one).
#
#  1. `bedside infer` on every sample DICOM and on compressed copies (JPEG-LS through CharLS,
#     12-bit JPEG Extended through libjpeg-turbo, JPEG lossless, RLE, JPEG 2000), on a CPU
#     with dotprod (neoverse-n1, like the Jetson Orin's A78AE and the Pi 5's A76) and one
#     without (cortex-a72): the scores must match the x86 build's within the model
#     manifest's parity tolerance, with the same id and the same labels over threshold.
#  2. `bedside parity` for every model's forms, and `bedside parity-ops` (bedside's int8 ops
#     on their onnxruntime fixtures with every int8 kernel the CPU runs: SDOT and SMLAL on
#     neoverse-n1, SMLAL on cortex-a72).
#  3. `bedside check` on the dev board profile (loads and verifies the model).
#  4. `bedside run` for real: a multi-thread tokio runtime, inotify and the notify socket
#     under qemu; a dropped file and an object pushed by DCMTK's storescu to its C-STORE
#     SCP must be processed, and SIGTERM must stop it cleanly.
#
# Needs `.ci/install-deps aarch64`. Timings under qemu are printed for information only.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

export RUSTC=/usr/bin/rustc   # Debian's rustc-web, which has the arm64 std
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++   # CharLS (JPEG-LS) is C++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# A separate target dir: another rustc must not churn the host build's artifacts.
export CARGO_TARGET_DIR=target/cross

echo "== cross-building bedside for $TARGET with $($RUSTC --version)"
PROFILE="${BEDSIDE_CROSS_PROFILE:-cross-check}"
# With cargo-auditable (tools/sbom/sbom.sh installs it) the binary carries its dependency
# list, as the amd64 one in the .deb does.
BUILD=(build)
grep -q '^cargo-auditable ' < <(cargo install --list) && BUILD=(auditable build)
cargo "${BUILD[@]}" --locked --profile "$PROFILE" --target "$TARGET" --bin bedside
ARM_BIN="$CARGO_TARGET_DIR/$TARGET/$PROFILE/bedside"
grep -q "ARM aarch64" < <(file "$ARM_BIN") || { echo "not an aarch64 binary: $ARM_BIN" >&2; exit 1; }
echo "aarch64 binary ($PROFILE profile): $(stat -c %s "$ARM_BIN") bytes"

unset RUSTC CARGO_TARGET_DIR
# The x86 reference is the binary `cargo test` builds (same features as the tests: a plain
# `cargo build` unifies features without the dev-dependencies and rebuilds everything).
cargo test --locked --no-run --quiet
X86_BIN=target/debug/bedside

# qemu with the cross sysroot's loader AND libc: -L alone mixes the cross ld.so with the
# host's multiarch libc (found through /etc/ld.so.cache), and then every pthread_create
# spins forever — the "multi-thread tokio runtime hangs under qemu" seen before.
QEMU=(qemu-aarch64 -L "$SYSROOT" -E LD_LIBRARY_PATH="$SYSROOT/lib")
qemu() { local cpu=$1; shift; "${QEMU[@]}" -cpu "$cpu" "$@"; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== bedside infer, x86 vs aarch64 under qemu"
# The C and C++ codecs (CharLS, libjpeg-turbo) and the Rust ones, on ARM: compressed
# copies made by DCMTK, and JPEG 2000 files from pydicom (DCMTK cannot write it).
mkdir -p "$WORK/codecs"
dcmcjpls +el tests/data/cxr-ptx-mono2.dcm "$WORK/codecs/codec-jpegls.dcm"
dcmcjpeg +ee tests/data/cxr-ptx-mono2.dcm "$WORK/codecs/codec-jpeg12-extended.dcm"
dcmcjpeg +e1 tests/data/cxr-ptx-mono1.dcm "$WORK/codecs/codec-jpeg-lossless.dcm"
dcmcrle tests/data/cxr-normal-mono2.dcm "$WORK/codecs/codec-rle.dcm"
cp tests/data/pydicom/JPEG2000.dcm "$WORK/codecs/codec-jpeg2000.dcm"
cp tests/data/pydicom/MR_small_jp2klossless.dcm "$WORK/codecs/codec-jpeg2000-lossless.dcm"
for dcm in tests/data/*.dcm "$WORK"/codecs/*.dcm; do
  name=$(basename "$dcm" .dcm)
  "$X86_BIN" infer "$dcm" > "$WORK/$name.x86.json"
  for cpu in neoverse-n1 cortex-a72; do
    qemu "$cpu" "$ARM_BIN" infer "$dcm" > "$WORK/$name.$cpu.json"
  done
done
python3 - "$WORK" models/cxr-tiny-cls/model.toml <<'PY'
import json, pathlib, sys, tomllib
work, manifest = pathlib.Path(sys.argv[1]), tomllib.load(open(sys.argv[2], "rb"))
tol = manifest["parity"]["max_abs"]
worst, n = 0.0, 0
for ref_path in sorted(work.glob("*.x86.json")):
    ref = json.loads(ref_path.read_text())
    for cpu in ("neoverse-n1", "cortex-a72"):
        arm = json.loads((work / ref_path.name.replace(".x86.", f".{cpu}.")).read_text())
        assert arm["id"] == ref["id"], (ref_path.name, cpu, "id differs")
        assert arm["model"] == ref["model"], (ref_path.name, cpu, "model differs")
        assert arm["over_threshold"] == ref["over_threshold"], (ref_path.name, cpu, arm["over_threshold"], ref["over_threshold"])
        d = max(abs(a["score"] - b["score"]) for a, b in zip(arm["scores"], ref["scores"]))
        worst, n = max(worst, d), n + 1
        assert d <= tol, f"{ref_path.name} on {cpu}: scores differ by {d:.3g} > {tol:g}"
        print(f"{ref_path.name[:-9]:22s} {cpu:12s} over_threshold={arm['over_threshold']} "
              f"max|score diff|={d:.2e} infer under qemu {arm['timings_ms']['infer']:.1f} ms (x86 {ref['timings_ms']['infer']:.1f} ms)")
print(f"aarch64 matches x86 on {n} runs: worst score difference {worst:.2e} (tolerance {tol:g})")
PY

echo "== every shipped model, every form, on its parity fixtures under qemu (ARM's own kernels)"
for cpu in neoverse-n1 cortex-a72; do
  for model in models/*/model.toml; do
    name=$(basename "$(dirname "$model")")
    qemu "$cpu" "$ARM_BIN" parity --model "models/$name" --fixtures "tests/fixtures/$name" | sed "s/^/$cpu: /"
  done
done

echo "== bedside's int8 ops against onnxruntime, every case, every ARM int8 kernel"
# neoverse-n1 has dotprod (SDOT kernel and SMLAL kernel both run); cortex-a72 has not
# (SMLAL only). parity-ops runs all 174 cases once per kernel the CPU runs and
# fails on any byte that differs from onnxruntime's.
for cpu in neoverse-n1 cortex-a72; do
  qemu "$cpu" "$ARM_BIN" parity-ops --fixtures tests/fixtures/ops | sed "s/^/$cpu: /"
done

echo "== bedside check under qemu"
qemu neoverse-n1 "$ARM_BIN" check --board board/dev.toml

echo "== bedside run under qemu (no broker: it must say so and keep working)"
DICOM_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/board.toml" <<TOML
[device]
id = "qemu-1"
site = "ci"
board = "aarch64-qemu"
[paths]
inbox = "$WORK/inbox"
state = "$WORK/state"
[mqtt]
url = "mqtt://127.0.0.1:9"
[dicom]
ae_title = "BEDSIDE"
port = $DICOM_PORT
bind = "127.0.0.1"
[[models]]
path = "$PWD/models/cxr-tiny-cls"
TOML
# Started directly (not through the shell function), so that $! is qemu itself and SIGTERM
# reaches the daemon.
RUST_LOG=info "${QEMU[@]}" -cpu neoverse-n1 "$ARM_BIN" run --board "$WORK/board.toml" 2> "$WORK/run.log" &
PID=$!
for _ in $(seq 1 300); do grep -q "bedside running" "$WORK/run.log" && break; sleep 0.1; done
grep -q "bedside running" "$WORK/run.log" || { cat "$WORK/run.log"; echo "the daemon did not start under qemu" >&2; exit 1; }
cp tests/data/cxr-ptx-mono2.dcm "$WORK/inbox/a.dcm"
for _ in $(seq 1 300); do [ -f "$WORK/state/done/a.dcm" ] && break; sleep 0.1; done
[ -f "$WORK/state/done/a.dcm" ] || { cat "$WORK/run.log"; echo "the file was not processed under qemu" >&2; exit 1; }
# And a modality's push to the SCP, JPEG-LS, acknowledged by the aarch64 build.
storescu -xt -aec BEDSIDE 127.0.0.1 "$DICOM_PORT" "$WORK/codecs/codec-jpegls.dcm" \
  || { cat "$WORK/run.log"; echo "storescu to the aarch64 SCP failed" >&2; exit 1; }
for _ in $(seq 1 300); do [ "$(grep -c 'finding made' "$WORK/run.log")" -ge 2 ] && break; sleep 0.1; done
[ "$(grep -c 'finding made' "$WORK/run.log")" -ge 2 ] || { cat "$WORK/run.log"; echo "no finding for the object received under qemu" >&2; exit 1; }
kill -TERM "$PID"
wait "$PID" || { cat "$WORK/run.log"; echo "the daemon did not stop cleanly under qemu" >&2; exit 1; }
grep -q "MQTT broker unreachable" "$WORK/run.log"
grep -q '"pneumothorax"' "$WORK/run.log"
echo "aarch64: daemon ran under qemu, processed a file and a C-STORE, stopped cleanly"
