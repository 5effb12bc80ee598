#!/usr/bin/env bash
# Fuzzes each target for SECONDS (default 60) with libFuzzer through cargo-fuzz, on the stable
# toolchain (RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z sanitizer flags), and prints the
# executions each made. Corpora live in fuzz/corpus/<target> (seeded from fuzz/seeds.sh's
# files on the first run), crashes in fuzz/artifacts/<target>.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      e.g. fuzz/run.sh 3600 dicom_decode_prepare
#
# Memory: -rss_limit_mb=512 and -malloc_limit_mb=256, so that an allocation bomb (a length
# field believed) is a finding, not a slow machine.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v -e bedside-fuzz -e by_name)
if ! cargo fuzz --version 2>/dev/null | grep -q "0\.13\."; then
  cargo install --locked --quiet cargo-fuzz --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
# ASan's default 256 MiB quarantine counts against -rss_limit_mb: with a grown corpus (board_profile
# at ~3,000 inputs) loading it alone passed 512 MB and was reported as an OOM of the empty input.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=32}"
./seeds.sh
cargo fuzz build --target-dir ../target/fuzz
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "regressions/$t"
  log="../target/fuzz/$t.log"
  # Whole radiographs are a few hundred KB; everything else fits in 64 KiB.
  max_len=65536; case "$t" in dicom_*) max_len=300000 ;; esac
  cargo fuzz run --target-dir ../target/fuzz "$t" "corpus/$t" "seeds/$t" "regressions/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=10 \
    -max_len=$max_len \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 > "$log" 2>&1 || {
      tail -40 "$log"; echo "fuzz: $t FAILED (artifact in fuzz/artifacts/$t)"; exit 1; }
  runs=$(grep -m1 -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$')
  echo "fuzz: $t ${runs:-?} executions in ${SECONDS_EACH} s"
done
