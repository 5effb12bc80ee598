#!/usr/bin/env bash
# Makes the venv for the reference Python pipeline (benches/python/pipeline.py) and prints its python.
#
# Usage: benches/python/setup.sh [VENV]   (default target/python-bench, relative to the repository root)
# Idempotent: pip runs only when the venv is new or requirements.txt changed since it last ran.
# Not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-target/python-bench}
REQ=benches/python/requirements.txt

if [ ! -x "$VENV/bin/python" ]; then
  echo "== python3 -m venv $VENV" >&2
  python3 -m venv "$VENV"
fi
STAMP="$VENV/.bedside-python-bench.sha256"
WANT=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "== pip install -r $REQ" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  echo "$WANT" > "$STAMP"
fi
echo "$(cd "$VENV" && pwd)/bin/python"
