#!/usr/bin/env bash
# Refreshes docs/findings-page-tablet.png and docs/findings-page-phone.png: tests/web.rs opens
# the findings page in headless Chromium (800 x 1280, then 390 x 844) after an X-ray and a
# replayed ultrasound clip went through the daemon, and writes its screenshots to docs/.
# Needs .ci/install-deps (chromium, chromium-driver, mosquitto).
set -euo pipefail
cd "$(dirname "$0")/.."
BEDSIDE_REFRESH_DOCS=1 cargo test --test web -- a_new_finding_appears_on_the_open_page_with_its_overlay_and_no_patient_data
ls -l docs/findings-page-*.png
