#!/usr/bin/env bash
# Soak by hand: the daemon for MINUTES (default 60) under live replay and a trickle of
# C-STORE, sampled every 5 s; fails if RSS, open files, threads or the outbox grow past the
# bounds stated in tests/soak.rs after warm-up. CI runs the same test for 3 minutes as part of
# `cargo test`. Needs Mosquitto and DCMTK (.ci/install-deps installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
export BEDSIDE_SOAK_MINUTES="${1:-60}"
exec cargo test --locked --test soak -- --nocapture
