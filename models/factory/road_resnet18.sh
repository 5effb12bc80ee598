#!/usr/bin/env bash
# The whole road for a real model nobody here wrote (issue 15 item 6):
#   1. train + export   torchvision ResNet-18, 1-channel conv1, fine-tuned a few minutes (1 thread) on the
#                       factory's synthetic chest phantoms, BN folded, fp32 ONNX (road_resnet18.py); calibration
#                       PNGs from the factory's calib split
#   2. import           bedside-model build (int8, parity, memory, eval gate vs fp32, bench) -> WORK/resnet18-cxr
#   3. eval             bedside eval --compare parent on tests/fixtures/eval/cxr-tiny-cls -> WORK/eval/report.md
#   4. install          a running daemon (board with [updates] public_key, mosquitto on 127.0.0.1) serves the
#                       shipped cxr-tiny-cls 0.2.0; the folder is signed, `bedside models install`ed, SIGHUP; a
#                       DICOM before and one after: findings from 0.2.0 and from 1.0.0-resnet18
#   5. summary          the figures (WORK/summary.md, WORK/summary.json)
# Fails loudly (set -e, every wait bounded), everything on 127.0.0.1, its processes stopped by a trap.
# Measured (2-core AMD EPYC, the other core busy, 3 Dec 2026): train 318 s (57 steps), import 28 s, eval 8 s,
# install 4 s; ~6 min in all. Results of that run: WORK/summary.md.
# Nothing is written inside the repository: every artefact goes to WORK (the model is ~45 MB fp32 + ~11 MB int8).
#
# Usage (from anywhere):  models/factory/road_resnet18.sh
# Environment:
#   WORK            work dir, outside the repo (default /work/scratch/road)
#   FROM            first step to run, 1..5 (default 1); later steps reuse WORK's artefacts of earlier ones
#   RESNET_SECONDS  training budget in seconds (default 300; train_resnet times two probe steps and fits the
#                   step count to it: 3-5 s/step of batch 16 on one AMD EPYC core, i.e. 60-100 steps, well under
#                   one epoch); RESNET_STEPS a fixed step count instead; RETRAIN=1 ignores WORK's checkpoint
#   N_CALIB         calibration PNGs (default 64)
#   CACHE           factory data cache (default: ~/.cache/bedside-study/cache-cls when it holds the train split,
#                   else /work/scratch/cache; generating the 3000-image train split takes ~4 min)
#   PY              python with torch, torchvision, onnx, onnxruntime, pillow (default ~/.cache/bedside-bench-venv)
#   BEDSIDE         the bedside binary (default <repo>/target/debug/bedside; copied into WORK/bin first, so a
#                   rebuild during the run does not change it)
#   BEDSIDE_MODEL_VENV  python venv with tools/bedside-model's pins (default <repo>/target/bedside-model-venv
#                   when present, else WORK/venv, created); the tool runs from the tree's source (PYTHONPATH)
#   PIN_CPU         optional CPU list for taskset (e.g. 0): the whole run on those CPUs (onnxruntime's
#                   calibration session takes every core otherwise)
# Needs: mosquitto, mosquitto_sub, mosquitto_pub, jq, dcmodify (dcmtk).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="${WORK:-/work/scratch/road}"
FROM="${FROM:-1}"
N_CALIB="${N_CALIB:-64}"
export RESNET_SECONDS="${RESNET_SECONDS:-300}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
PY="${PY:-$HOME/.cache/bedside-bench-venv/bin/python}"
BEDSIDE_SRC="${BEDSIDE:-$ROOT/target/debug/bedside}"
EVAL_DATA="$ROOT/tests/fixtures/eval/cxr-tiny-cls"
SHIPPED="$ROOT/models/cxr-tiny-cls"
DICOM="$ROOT/tests/data/cxr-ptx-mono2.dcm"
NEW_VERSION="1.0.0-resnet18"

die() { echo "road: FAILED: $*" >&2; exit 1; }
say() { echo "road: $*"; }
need() { command -v "$1" >/dev/null || die "needs $1"; }
for t in mosquitto mosquitto_sub mosquitto_pub jq dcmodify python3; do need "$t"; done

mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
case "$WORK/" in "$ROOT"/*) die "WORK=$WORK is inside the repository; use a folder outside it" ;; esac
[ -x "$PY" ] || die "no python at PY=$PY"
[ -x "$BEDSIDE_SRC" ] || die "no bedside binary at $BEDSIDE_SRC (cargo build)"
if [ -n "${PIN_CPU:-}" ]; then
    need taskset
    taskset -pc "$PIN_CPU" $$ >/dev/null
    say "pinned to CPU(s) $PIN_CPU"
fi
if [ -z "${CACHE:-}" ]; then
    if ls "$HOME"/.cache/bedside-study/cache-cls/train-0-3000-*.npz >/dev/null 2>&1; then
        CACHE="$HOME/.cache/bedside-study/cache-cls"
    else
        CACHE=/work/scratch/cache
    fi
fi
export CACHE

mkdir -p "$WORK/bin" "$WORK/logs"
if [ "$FROM" -le 2 ] || [ ! -x "$WORK/bin/bedside" ]; then
    cp -f "$BEDSIDE_SRC" "$WORK/bin/bedside.tmp" && mv -f "$WORK/bin/bedside.tmp" "$WORK/bin/bedside"
fi
B="$WORK/bin/bedside"
export BEDSIDE="$B"
OUT="$WORK/resnet18-cxr"

# Processes this script starts; stopped on any exit.
PIDS=()
cleanup() {
    local rc=$?
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && wait "$p" 2>/dev/null || true
    done
    [ $rc -ne 0 ] && echo "road: exit status $rc (logs in $WORK/logs)" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A SECS
T_ALL=$(date +%s)
step() { STEP_NAME="$1"; STEP_T0=$(date +%s); echo; say "===== step $1 ($(date +%T))"; }
done_step() { SECS[$STEP_NAME]=$(( $(date +%s) - STEP_T0 )); say "===== step $STEP_NAME done in ${SECS[$STEP_NAME]} s"; }

# ------------------------------------------------------------------------------------------------ 1. train
if [ "$FROM" -le 1 ]; then
    step "1-train"
    say "data cache $CACHE; RESNET_SECONDS=$RESNET_SECONDS${RESNET_STEPS:+ RESNET_STEPS=$RESNET_STEPS}; 1 thread"
    rm -rf "$WORK/calib"
    (cd "$HERE" && "$PY" road_resnet18.py --work "$WORK" --n-calib "$N_CALIB") 2>&1 | tee "$WORK/logs/1-train.log"
    [ -s "$WORK/resnet18.onnx" ] || die "no $WORK/resnet18.onnx"
    n=$(find "$WORK/calib" -name '*.png' | wc -l)
    [ "$n" -eq "$N_CALIB" ] || die "$n calibration PNGs, want $N_CALIB"
    done_step
fi

# ------------------------------------------------------------------------------------------------ 2. import
if [ "$FROM" -le 2 ]; then
    step "2-import"
    VENV="${BEDSIDE_MODEL_VENV:-}"
    if [ -z "$VENV" ]; then
        if [ -x "$ROOT/target/bedside-model-venv/bin/python" ]; then VENV="$ROOT/target/bedside-model-venv"; else VENV="$WORK/venv"; fi
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/tools/bedside-model/requirements.txt"
    fi
    "$VENV/bin/python" -c 'import numpy, onnx, onnxruntime' || die "$VENV lacks numpy/onnx/onnxruntime"
    rm -rf "$OUT"
    set +e
    PYTHONPATH="$ROOT/tools/bedside-model" "$VENV/bin/python" -m bedside_model build \
        --onnx "$WORK/resnet18.onnx" --task classification \
        --labels normal,pneumothorax,other --thresholds 0.5,0.25,0.25 --activation softmax \
        --id cxr-tiny-cls --version "$NEW_VERSION" \
        --description "torchvision ResNet-18 (1-channel conv1) fine-tuned briefly on synthetic phantoms; the road test of issue 15, not a medical device" \
        --window dicom --mean 0.34 --std 0.27 \
        --calib "$WORK/calib" --eval-data "$EVAL_DATA" --max-drop 0.05 \
        --bedside "$B" --out "$OUT" 2>&1 | tee "$WORK/logs/2-import.log"
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" -eq 0 ] || die "bedside-model build exited $rc$( [ -f "$OUT/REJECTED.txt" ] && printf ': %s' "$(cat "$OUT/REJECTED.txt")")"
    for f in model.onnx model.fp32.onnx model.toml MODEL_CARD.md fixtures/parity.json eval/summary.json; do
        [ -s "$OUT/$f" ] || die "the build left no $OUT/$f"
    done
    # the same measurements again, directly, for the note
    "$B" parity --model "$OUT" --fixtures "$OUT/fixtures" 2>&1 | tee "$WORK/logs/2-parity.log"
    "$B" models measure "$OUT" 2>&1 | tee "$WORK/logs/2-measure.log"
    done_step
fi

# ------------------------------------------------------------------------------------------------ 3. eval
if [ "$FROM" -le 3 ]; then
    step "3-eval"
    rm -rf "$WORK/eval"
    "$B" eval --model "$OUT" --data "$EVAL_DATA" --compare parent --out "$WORK/eval" 2>&1 | tee "$WORK/logs/3-eval.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || die "bedside eval failed"
    [ -s "$WORK/eval/report.md" ] || die "no $WORK/eval/report.md"
    done_step
fi

# ------------------------------------------------------------------------------------------------ 4. install
if [ "$FROM" -le 4 ]; then
    step "4-install"
    D="$WORK/daemon"
    rm -rf "$D" "$WORK/update"
    mkdir -p "$D/inbox" "$D/state" "$D/broker"
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    TOPIC_F="bedside/road/cart-road/findings"
    TOPIC_S="bedside/road/cart-road/status"

    "$B" models keygen --out "$D/maker" >/dev/null
    PUB=$(tr -d '[:space:]' < "$D/maker.pub")
    cat > "$D/board.toml" <<EOF
[device]
id = "cart-road"
site = "road"
board = "x86-dev"

[paths]
inbox = "$D/inbox"
state = "$D/state"

[[models]]
path = "$SHIPPED"

[mqtt]
keep_alive_s = 5
url = "mqtt://127.0.0.1:$PORT"

[updates]
public_key = "$PUB"
EOF
    "$B" check --board "$D/board.toml" > "$WORK/logs/4-check.log" 2>&1 || { cat "$WORK/logs/4-check.log"; die "bedside check on the board"; }

    { echo "listener $PORT 127.0.0.1"; echo "allow_anonymous true"; echo "persistence false";
      [ "$(id -u)" -eq 0 ] && echo "user root"; } > "$D/broker/mosquitto.conf"
    mosquitto -c "$D/broker/mosquitto.conf" > "$WORK/logs/4-mosquitto.log" 2>&1 &
    PIDS+=($!)
    for i in $(seq 50); do
        mosquitto_pub -h 127.0.0.1 -p "$PORT" -t road/ping -m x 2>/dev/null && break
        [ "$i" -eq 50 ] && die "mosquitto did not come up on 127.0.0.1:$PORT"
        sleep 0.2
    done
    say "mosquitto on 127.0.0.1:$PORT"

    # One subscriber for both findings, subscribed before the daemon starts.
    mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -t "$TOPIC_F" -C 2 -W 600 > "$D/findings.jsonl" 2> "$WORK/logs/4-sub.log" &
    SUB=$!
    PIDS+=($SUB)
    sleep 1

    RUST_LOG=info "$B" run --board "$D/board.toml" > /dev/null 2> "$WORK/logs/4-daemon.log" &
    DPID=$!
    PIDS+=($DPID)

    # status_where JQ_FILTER SECONDS: the retained status, once it satisfies the filter
    status_where() {
        local deadline=$(( $(date +%s) + $2 )) s
        while [ "$(date +%s)" -lt "$deadline" ]; do
            kill -0 "$DPID" 2>/dev/null || { tail -20 "$WORK/logs/4-daemon.log" >&2; die "the daemon exited"; }
            s=$(mosquitto_sub -h 127.0.0.1 -p "$PORT" -t "$TOPIC_S" -C 1 -W 3 2>/dev/null || true)
            if [ -n "$s" ] && echo "$s" | jq -e "$1" >/dev/null 2>&1; then echo "$s"; return 0; fi
            sleep 0.5
        done
        return 1
    }
    # drop NAME: a copy of the sample with its own SOP Instance UID, renamed into the inbox
    drop() {
        cp "$DICOM" "$D/$1.part"
        dcmodify -nb -gin "$D/$1.part" >/dev/null
        mv "$D/$1.part" "$D/inbox/$1.dcm"
    }
    # finding N SECONDS: the N-th finding line, once there
    finding() {
        local deadline=$(( $(date +%s) + $2 ))
        while [ "$(date +%s)" -lt "$deadline" ]; do
            [ "$(wc -l < "$D/findings.jsonl")" -ge "$1" ] && { sed -n "${1}p" "$D/findings.jsonl"; return 0; }
            kill -0 "$DPID" 2>/dev/null || { tail -20 "$WORK/logs/4-daemon.log" >&2; die "the daemon exited"; }
            sleep 0.3
        done
        tail -20 "$WORK/logs/4-daemon.log" >&2
        die "no finding #$1 within $2 s"
    }

    T=$(date +%s)
    status_where '.state == "online"' 60 > "$D/status-online.json" || { tail -20 "$WORK/logs/4-daemon.log" >&2; die "the daemon did not come online in 60 s"; }
    say "daemon $DPID online in $(( $(date +%s) - T )) s: $(jq -c '[.models[] | {id, version}]' "$D/status-online.json")"

    drop before
    F1=$(finding 1 60)
    echo "$F1" | jq -e '.model.version == "0.2.0"' >/dev/null || die "finding before the update: $(echo "$F1" | jq -c .model)"
    say "finding before: $(echo "$F1" | jq -c '{model: {id: .model.id, version: .model.version}, over_threshold, scores: [.scores[] | {(.label): .score}] | add, ms: .timings_ms}')"

    # sign (a copy: WORK/resnet18-cxr stays as the tool built it) and install
    cp -r "$OUT" "$WORK/update"
    rm -rf "$WORK/update/eval"
    "$B" models sign --key "$D/maker.key" "$WORK/update" 2>&1 | tee "$WORK/logs/4-sign.log"
    T=$(date +%s)
    "$B" models install "$WORK/update" --board "$D/board.toml" 2>&1 | tee "$WORK/logs/4-models-install.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || die "bedside models install refused the update"
    INSTALL_S=$(( $(date +%s) - T ))
    "$B" models list --board "$D/board.toml" 2>&1 | tee "$WORK/logs/4-models-list.log" || true
    kill -HUP "$DPID"
    T=$(date +%s)
    status_where '.model_update.state == "taken" and .models[0].version == "'"$NEW_VERSION"'"' 120 > "$D/status-taken.json" \
        || { tail -30 "$WORK/logs/4-daemon.log" >&2; die "the daemon did not take the update in 120 s"; }
    TAKE_S=$(( $(date +%s) - T ))
    say "update taken ${TAKE_S} s after SIGHUP: $(jq -c '.model_update | {state, model, replaced}' "$D/status-taken.json")"

    drop after
    F2=$(finding 2 120)
    echo "$F2" | jq -e '.model.version == "'"$NEW_VERSION"'"' >/dev/null || die "finding after the update: $(echo "$F2" | jq -c .model)"
    say "finding after:  $(echo "$F2" | jq -c '{model: {id: .model.id, version: .model.version}, over_threshold, scores: [.scores[] | {(.label): .score}] | add, ms: .timings_ms}')"
    RSS_KIB=$(awk '/^VmRSS:/ {print $2}' "/proc/$DPID/status")
    HWM_KIB=$(awk '/^VmHWM:/ {print $2}' "/proc/$DPID/status")

    kill -TERM "$DPID"
    for i in $(seq 100); do kill -0 "$DPID" 2>/dev/null || break; [ "$i" -eq 100 ] && die "the daemon did not stop within 20 s of SIGTERM"; sleep 0.2; done
    wait "$DPID" && DRC=0 || DRC=$?
    [ "$DRC" -eq 0 ] || die "the daemon exited $DRC on SIGTERM"
    say "daemon stopped on SIGTERM (exit 0)"
    jq -n --argjson f1 "$F1" --argjson f2 "$F2" --argjson install_s "$INSTALL_S" --argjson take_s "$TAKE_S" \
        --argjson rss_kib "$RSS_KIB" --argjson hwm_kib "$HWM_KIB" \
        '{before: $f1, after: $f2, install_seconds: $install_s, take_seconds_after_sighup: $take_s,
          daemon_rss_kib_after: $rss_kib, daemon_peak_rss_kib: $hwm_kib}' > "$WORK/daemon.json"
    done_step
fi

# ------------------------------------------------------------------------------------------------ 5. summary
step "5-summary"
for k in "${!SECS[@]}"; do echo "$k ${SECS[$k]}"; done > "$WORK/logs/step-seconds-$(date +%s).txt"
SECS_JSON=$(for k in "${!SECS[@]}"; do echo "$k ${SECS[$k]}"; done | jq -Rn '[inputs | split(" ") | {(.[0]): (.[1] | tonumber)}] | add // {}')
"$PY" "$HERE/road_resnet18.py" --summary "$WORK" --step-seconds "$SECS_JSON" | tee "$WORK/summary.md"
done_step
say "all steps in $(( $(date +%s) - T_ALL )) s; artefacts in $WORK"
