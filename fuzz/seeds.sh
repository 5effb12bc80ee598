#!/usr/bin/env bash
# Seeds for the fuzz targets, made from what the repository already holds (nothing is
# committed twice): fuzz/seeds/<target>/. Run by fuzz/run.sh; safe to run again.
#   dicom_decode_prepare: the test radiographs, pydicom's files (every transfer syntax), the
#                         ultrasound clip's first 4 MiB, and DCMTK's JPEG/JPEG-LS/RLE of one
#                         radiograph when DCMTK is installed;
#   scp_pdus:             an A-ASSOCIATE-RQ, then P-DATA with a C-ECHO-RQ and a C-STORE-RQ;
#   outbox_recovery:      a real outbox segment (from bedside's own test of it) when present;
#   model_manifest:       every model.toml; board_profile: every board profile;
#   camera_convert:       the recorded camera buffers behind a 12-byte layout header.
set -euo pipefail
cd "$(dirname "$0")"
R=..
S=seeds
mkdir -p $S/{dicom_decode_prepare,scp_pdus,outbox_recovery,model_manifest,board_profile,camera_convert}

for f in $R/tests/data/*.dcm $R/tests/data/pydicom/*.dcm; do
  [ "$(stat -c %s "$f")" -le $((4 << 20)) ] && cp "$f" $S/dicom_decode_prepare/
done
head -c $((4 << 20)) $R/tests/data/us/fast-clip.dcm > $S/dicom_decode_prepare/fast-clip-head.dcm
if command -v dcmcjpeg >/dev/null; then
  src=$R/tests/data/cxr-ptx-mono2.dcm
  dcmcjpeg +e14 "$src" $S/dicom_decode_prepare/dcmtk-jpeg-lossless.dcm 2>/dev/null || true
  dcmcjpls "$src" $S/dicom_decode_prepare/dcmtk-jpeg-ls.dcm 2>/dev/null || true
  dcmcrle "$src" $S/dicom_decode_prepare/dcmtk-rle.dcm 2>/dev/null || true
fi

python3 - $S/scp_pdus <<'PY'
import struct, sys
out = sys.argv[1]
def item(t, body): return struct.pack(">BBH", t, 0, len(body)) + body
def uid(t, s):
    b = s.encode()
    return item(t, b)
pc = item(0x20, bytes([1, 0, 0, 0]) + uid(0x30, "1.2.840.10008.1.1") + uid(0x40, "1.2.840.10008.1.2.1"))
user = item(0x50, item(0x51, struct.pack(">I", 16384)))
body = struct.pack(">HH", 1, 0) + b"BEDSIDE".ljust(16) + b"XRAY-1".ljust(16) + bytes(32) \
    + uid(0x10, "1.2.840.10008.3.1.1.1") + pc + user
rq = struct.pack(">BBI", 1, 0, len(body)) + body
def elem(g, e, v): return struct.pack("<HHI", g, e, len(v)) + v
def command(fields):
    body = b"".join(elem(g, e, v) for g, e, v in fields)
    return elem(0, 0, struct.pack("<I", len(body))) + body
echo = command([(0, 2, b"1.2.840.10008.1.1\0"), (0, 0x100, struct.pack("<H", 0x30)),
                (0, 0x110, struct.pack("<H", 1)), (0, 0x800, struct.pack("<H", 0x101))])
store = command([(0, 2, b"1.2.840.10008.5.1.4.1.1.1.1\0"), (0, 0x100, struct.pack("<H", 1)),
                 (0, 0x110, struct.pack("<H", 2)), (0, 0x700, struct.pack("<H", 0)),
                 (0, 0x800, struct.pack("<H", 0)), (0, 0x1000, b"2.25.1\0")])
def pdata(cmd, last, data):
    pdv = struct.pack(">IBB", len(data) + 2, 1, (1 if cmd else 0) | (2 if last else 0)) + data
    return struct.pack(">BBI", 4, 0, len(pdv)) + pdv
open(f"{out}/echo", "wb").write(rq + pdata(True, True, echo))
open(f"{out}/store", "wb").write(rq + pdata(True, False, store[:20]) + pdata(True, True, store[20:])
                                  + pdata(False, True, b"\x08\x00\x16\x00UI\x04\x001.2\0"))
open(f"{out}/release", "wb").write(rq + bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
PY

seg=$(ls -t /tmp/bedside-fuzz-outbox-seed/*.seg 2>/dev/null | head -1 || true)
[ -n "$seg" ] && cp "$seg" $S/outbox_recovery/segment
printf '\x40' > $S/outbox_recovery/empty-split

find $R/models $R/tests/fixtures -name model.toml | while read -r f; do
  cp "$f" "$S/model_manifest/$(echo "$f" | tr / _ | tr -d .)"
done
cp $R/board/*.toml $S/board_profile/

# Header: format (0 YUYV, 1 UYVY, 2 NV12, 3 GREY, 4 MJPG), width, height (u16 LE), stride
# padding, range, crop (x, y, w, h in 256ths), one spare byte.
V=$R/tests/fixtures/video
hdr() { python3 -c "import struct,sys; sys.stdout.buffer.write(struct.pack('<BHHBBBBBBB', $1, $2, $3, 0, 1, 0, 0, 255, 255, 0))"; }
w=$(python3 -c "import json; print(json.load(open('$V/refs.json')).get('width', 64))" 2>/dev/null || echo 64)
h=$(python3 -c "import json; print(json.load(open('$V/refs.json')).get('height', 48))" 2>/dev/null || echo 48)
for pair in 0:yuyv 1:uyvy 2:nv12 3:grey; do
  n=${pair%%:*}; name=${pair#*:}
  [ -f "$V/$name.raw" ] && { hdr "$n" "$w" "$h"; cat "$V/$name.raw"; } > "$S/camera_convert/$name"
done
[ -f "$V/mjpeg.jpg" ] && { hdr 4 "$w" "$h"; cat "$V/mjpeg.jpg"; } > "$S/camera_convert/mjpeg"
echo "seeds: $(find $S -type f | wc -l) files in fuzz/$S"
