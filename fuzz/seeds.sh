#!/usr/bin/env bash
# Seeds for the fuzz targets, made from what the repository already holds (nothing is
# committed twice): fuzz/seeds/<target>/. Run by fuzz/run.sh; safe to run again.
#   dicom_decode_prepare: the test radiographs, pydicom's files (every transfer syntax), the
#                         ultrasound clip's first 4 MiB, and DCMTK's JPEG/JPEG-LS/RLE of one
#                         radiograph when DCMTK is installed (dicom_parse: the same files);
#   every target:         the seeds tests/fuzz_inputs.rs starts from (it writes them here);
#   camera_convert:       also the recorded camera buffers behind a 12-byte layout header.
set -euo pipefail
cd "$(dirname "$0")"
R=..
S=seeds
mkdir -p $S/{dicom_decode_prepare,dicom_parse,scp_pdus,outbox_recovery,model_manifest,board_profile,camera_convert}

for f in $R/tests/data/*.dcm $R/tests/data/pydicom/*.dcm; do
  [ "$(stat -c %s "$f")" -le $((4 << 20)) ] && cp "$f" $S/dicom_decode_prepare/
done
head -c $((256 << 10)) $R/tests/data/us/fast-clip.dcm > $S/dicom_decode_prepare/fast-clip-head.dcm
if command -v dcmcjpeg >/dev/null; then
  src=$R/tests/data/cxr-ptx-mono2.dcm
  dcmcjpeg +e14 "$src" $S/dicom_decode_prepare/dcmtk-jpeg-lossless.dcm 2>/dev/null || true
  dcmcjpls "$src" $S/dicom_decode_prepare/dcmtk-jpeg-ls.dcm 2>/dev/null || true
  dcmcrle "$src" $S/dicom_decode_prepare/dcmtk-rle.dcm 2>/dev/null || true
fi

# The parse target starts from the same files.
cp $S/dicom_decode_prepare/* $S/dicom_parse/

# The seeds bedside's own test suite starts from (tests/fuzz_inputs.rs): for scp_pdus a
# C-STORE and release as a peer sends them after the association, for outbox_recovery a
# segment the outbox itself wrote, and the manifests, profiles and camera buffers.
(cd $R && BEDSIDE_FUZZ_SEEDS_OUT="$PWD/fuzz/$S" cargo test --quiet --test fuzz_inputs \
  the_fuzz_targets_survive > /dev/null)
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
