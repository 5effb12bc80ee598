#!/usr/bin/env bash
# Receive-to-finding benchmark for the DICOM C-STORE SCP, with DCMTK as the sender and,
# as the reference measured in the same run, DCMTK's own storescp as the receiver.
#
#  1. latency: one 2048x2560 16-bit (12 stored) DX image, JPEG Lossless SV1, per association,
#     sent by storescu; from storescu's start to the finding's arrival on MQTT (median, p99);
#  2. the finding's own decode and prepare times for that image;
#  3. throughput: 8 storescu at once, 10 images each, until the 80th finding arrives; once
#     per image-worker count in WORKERS (default "1 auto": one worker, as before there were
#     several, then the daemon's default), the reference measured before each.
#  Reference for 1 and 3: the same sends to DCMTK storescp, which only receives and stores.
#
# Usage: [WORKERS="1 auto"] benches/scp.sh [N_SEQUENTIAL=30]. Needs .ci/install-deps and
# python3. Not part of the tests; the figures depend on the machine. Uses 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-30}
CONC=8
PER=10
WORKERS=${WORKERS:-1 auto}
ROUNDS=$(wc -w <<< "$WORKERS")

cargo build --release --quiet --bin bedside
BIN=$PWD/target/release/bedside
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

TOTAL=$((N + ROUNDS * CONC * PER))
echo "== making $TOTAL images: 2048x2560, 12 bits stored, JPEG Lossless SV1 (dcmcjpeg +e1)"
python3 - "$WORK/raw.bin" <<'PY'
# A chest-like synthetic radiograph: two lung fields, a mediastinum, ribs, noise. Stdlib only.
import array, math, random, sys
R, C = 2048, 2560
random.seed(7)
px = array.array("H", bytes(2 * R * C))
for r in range(R):
    y = r / R
    rib = 180 * (0.5 + 0.5 * math.sin(y * 60))
    for c in range(C):
        x = c / C
        lung = math.exp(-(((x - 0.3) / 0.14) ** 2 + ((y - 0.5) / 0.3) ** 2)) + math.exp(-(((x - 0.7) / 0.14) ** 2 + ((y - 0.5) / 0.3) ** 2))
        v = 3300 - 2200 * lung + rib * lung + random.randint(-40, 40)
        px[r * C + c] = max(0, min(4095, int(v)))
if sys.byteorder != "little":
    px.byteswap()
open(sys.argv[1], "wb").write(px.tobytes())
PY
cat > "$WORK/base.dump" <<EOF
(0002,0010) UI =LittleEndianExplicit
(0008,0016) UI =DigitalXRayImageStorageForPresentation
(0008,0018) UI [2.25.1]
(0008,0060) CS [DX]
(0018,1164) DS [0.139\0.139]
(0028,0002) US 1
(0028,0004) CS [MONOCHROME2]
(0028,0010) US 2048
(0028,0011) US 2560
(0028,0100) US 16
(0028,0101) US 12
(0028,0102) US 11
(0028,0103) US 0
(0028,1050) DS [2048]
(0028,1051) DS [4096]
(0028,2110) CS [00]
(7fe0,0010) OW =$WORK/raw.bin
EOF
dump2dcm --write-xfer-little "$WORK/base.dump" "$WORK/base.dcm"
mkdir -p "$WORK/img"
for i in $(seq 1 $TOTAL); do
  cp "$WORK/base.dcm" "$WORK/tmp.dcm"
  dcmodify -nb -i "(0008,0018)=2.25.$RANDOM$RANDOM$i" "$WORK/tmp.dcm" >/dev/null
  dcmcjpeg +e1 "$WORK/tmp.dcm" "$WORK/img/$(printf %04d "$i").dcm"
done
IMGS=("$WORK"/img/*.dcm)
echo "   one image: $(stat -c %s "${IMGS[0]}") bytes compressed, $((2048 * 2560 * 2)) uncompressed"

MQ=$(free_port); DP=$(free_port); RP=$(free_port)
mosquitto -p "$MQ" >/dev/null 2>&1 & PIDS+=($!)
sleep 0.5
mosquitto_sub -p "$MQ" -q 1 -t 'bedside/bench/cart/findings' -F '%U %p' >> "$WORK/findings.txt" & PIDS+=($!)
mkdir -p "$WORK/refstore"
storescp -aet REFERENCE +xa -od "$WORK/refstore" "$RP" & PIDS+=($!)
DAEMON=
start_daemon() {  # $1: image workers, or "auto" for the daemon's default
  local images=""
  [ "$1" != auto ] && images=$'[images]\nworkers = '"$1"
  rm -rf "$WORK/state" "$WORK/inbox"
  cat > "$WORK/board.toml" <<EOF
[device]
id = "cart"
site = "bench"
board = "bench"
[paths]
inbox = "$WORK/inbox"
state = "$WORK/state"
[mqtt]
url = "mqtt://127.0.0.1:$MQ"
[dicom]
ae_title = "BEDSIDE"
port = $DP
bind = "127.0.0.1"
max_associations = $CONC
$images
[[models]]
path = "$PWD/models/cxr-tiny-cls"
EOF
  RUST_LOG=info "$BIN" run --board "$WORK/board.toml" 2> "$WORK/daemon.log" & DAEMON=$!; PIDS+=($DAEMON)
  python3 - "$DP" <<'PY'
import socket, sys, time
for _ in range(300):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close(); break
    except OSError:
        time.sleep(0.1)
PY
  sleep 0.5
}
stop_daemon() { kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; }
start_daemon auto

arrived() { wc -l < "$WORK/findings.txt"; }
wait_for() { local want=$1; for _ in $(seq 1 6000); do [ "$(arrived)" -ge "$want" ] && return 0; sleep 0.01; done; echo "timed out waiting for finding $want" >&2; tail -5 "$WORK/daemon.log" >&2; exit 1; }

echo "== 1. receive-to-finding, one image per association, $N images in a row"
: > "$WORK/sent.txt"; : > "$WORK/ref.txt"
for i in $(seq 0 $((N - 1))); do
  f=${IMGS[$i]}
  # Reference first: the same image to storescp (receive and store only).
  t0=$(date +%s.%N); storescu -xs -aec REFERENCE 127.0.0.1 "$RP" "$f"; t1=$(date +%s.%N)
  echo "$t0 $t1" >> "$WORK/ref.txt"
  t0=$(date +%s.%N); storescu -xs -aec BEDSIDE 127.0.0.1 "$DP" "$f"; t1=$(date +%s.%N)
  echo "$t0 $t1" >> "$WORK/sent.txt"
  wait_for $((i + 1))
done

cp "$WORK/findings.txt" "$WORK/latency.txt"
send_all() {  # $1 = called AE, $2 = port, $3 = first image; waits for the senders only
  local senders=()
  for k in $(seq 0 $((CONC - 1))); do
    storescu -xs -aec "$1" 127.0.0.1 "$2" "${IMGS[@]:$(($3 + k * PER)):$PER}" & senders+=($!)
  done
  wait "${senders[@]}"
}
: > "$WORK/rounds.txt"
first=$N
for w in $WORKERS; do
  echo "== 3. $CONC storescu at once, $PER images each; image workers: $w"
  stop_daemon; start_daemon "$w"
  grep -oE "[0-9]+ image workers?(:| \(images)[^\"]*" "$WORK/daemon.log" | head -1 || true
  : > "$WORK/findings.txt"
  start_ref=$(date +%s.%N); send_all REFERENCE "$RP" "$first"; end_ref=$(date +%s.%N)
  start=$(date +%s.%N); send_all BEDSIDE "$DP" "$first"; wait_for $((CONC * PER)); end=$(date +%s.%N)
  echo "$w $start $end $start_ref $end_ref" >> "$WORK/rounds.txt"
  first=$((first + CONC * PER))
done

python3 - "$WORK" "$N" "$((CONC * PER))" <<'PY'
import json, pathlib, statistics, sys
work = pathlib.Path(sys.argv[1]); n = int(sys.argv[2]); m = int(sys.argv[3])
arr = [l.split(" ", 1) for l in (work / "latency.txt").read_text().splitlines()]
times = [float(t) for t, _ in arr]
docs = [json.loads(p) for _, p in arr]
sent = [tuple(map(float, l.split())) for l in (work / "sent.txt").read_text().splitlines()]
ref = [tuple(map(float, l.split())) for l in (work / "ref.txt").read_text().splitlines()]
lat = sorted((times[i] - sent[i][0]) * 1e3 for i in range(n))
recv = sorted((b - a) * 1e3 for a, b in sent)
rrecv = sorted((b - a) * 1e3 for a, b in ref)
def p(v, q): return v[min(len(v) - 1, round((len(v) - 1) * q))]
dec = sorted(d["timings_ms"]["decode"] for d in docs[:n])
pre = sorted(d["timings_ms"]["prepare"] for d in docs[:n])
inf = sorted(d["timings_ms"]["infer"] for d in docs[:n])
print(f"receive-to-finding (storescu start -> finding on MQTT), {n} images: median {p(lat,.5):.1f} ms, p99 {p(lat,.99):.1f} ms, max {lat[-1]:.1f} ms")
print(f"  of which storescu -> bedside (association + transfer + spool fsync): median {p(recv,.5):.1f} ms")
print(f"  reference storescu -> DCMTK storescp, same image: median {p(rrecv,.5):.1f} ms  => bedside receive = {p(recv,.5)/p(rrecv,.5):.2f}x storescp")
print(f"decode {p(dec,.5):.1f} ms (p99 {p(dec,.99):.1f}), prepare {p(pre,.5):.1f} ms (p99 {p(pre,.99):.1f}), infer {p(inf,.5):.1f} ms (median, from the findings)")
for line in (work / "rounds.txt").read_text().splitlines():
    w, start, end, rstart, rend = line.split()
    rate = m / (float(end) - float(start)); rrate = m / (float(rend) - float(rstart))
    print(f"8 associations at once, {m} images, image workers {w}: {rate:.1f} images/s to findings; storescp receive-only {rrate:.1f} images/s => {rate/rrate:.2f}x")
PY
