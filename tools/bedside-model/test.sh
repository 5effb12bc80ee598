#!/usr/bin/env bash
# bedside-model's tests: a venv (reused when present), the tool installed with its pins, pytest.
# Needs python3 with venv (Debian: apt-get install python3-venv) and the bedside binary: $BEDSIDE, else
# <repo>/target/debug/bedside (the tests skip, saying why, when there is none).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
venv="${BEDSIDE_MODEL_VENV:-$target/bedside-model-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt" "$here[test]"
export BEDSIDE="${BEDSIDE:-$target/debug/bedside}"
# Run as a script (CI), a missing binary is a failure, not a skip.
export BEDSIDE_MODEL_REQUIRE_BINARY="${BEDSIDE_MODEL_REQUIRE_BINARY:-1}"
cd "$here"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
