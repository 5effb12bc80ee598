#!/usr/bin/env bash
# The bill of materials of the bedside binary, and the checks on what enters it:
#
#  1. cargo-deny (licences, bans, sources) against tools/sbom/deny.toml: fails on a licence not
#     on the allow-list, a crate from an unknown registry or git repository, a wildcard
#     version; its licence report goes to target/sbom/licenses.txt.
#  2. cargo-deny advisories against the RustSec database: fails on a known vulnerability.
#     The database is a git repository outside the package registries; where it cannot be
#     fetched (this workplace reaches only crates.io, PyPI, Debian and npm) the check says so
#     and is skipped, not failed. SBOM_ADVISORY_DB=<a local git copy of rustsec/advisory-db>
#     runs it from that copy instead.
#  3. cargo-cyclonedx: the CycloneDX 1.5 SBOM, target/sbom/bedside.cdx.json.
#  4. tools/sbom/soup.py: the SOUP list (name, version, licence, purpose), soup.md and .csv.
#
# tests/deb.sh puts the SBOM, the SOUP list and the licence report into the package under
# /usr/share/doc/bedside/, and builds the binary with cargo-auditable (installed here) so that
# it carries its own dependency list. Tools are installed at pinned versions when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=target/sbom
CONFIG=tools/sbom/deny.toml
declare -A PINNED=([cargo-deny]=0.20.2 [cargo-cyclonedx]=0.5.9 [cargo-auditable]=0.7.7)
mkdir -p "$OUT"

for tool in "${!PINNED[@]}"; do
  version=${PINNED[$tool]}
  if ! grep -qx "$tool v$version:" < <(cargo install --list); then
    echo "== installing $tool $version"
    cargo install --locked --quiet "$tool" --version "$version"
  fi
done

DENY=(cargo deny --log-level error --config "$CONFIG")
echo "== cargo deny: licences, bans, sources"
"${DENY[@]}" check licenses bans sources
"${DENY[@]}" list --layout crate > "$OUT/licenses.txt"
echo "licence report: $OUT/licenses.txt ($(grep -c . "$OUT/licenses.txt") crates)"

echo "== cargo deny: advisories"
if [ -n "${SBOM_ADVISORY_DB:-}" ]; then
  # A local git copy of the database: cloned to where cargo-deny keeps the real one (its
  # failed fetch names the folder), then checked without fetching.
  "${DENY[@]}" fetch db 2> "$OUT/advisory-fetch.log" || true
  dest=$(grep -oE "/[^\" ']*/advisory-db-[0-9a-f]+" "$OUT/advisory-fetch.log" | head -1 || true)
  # A copy put there by an earlier run: the fetch then fails on it without naming it.
  [ -n "$dest" ] || dest=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/advisory-db-* 2>/dev/null | head -1 || true)
  [ -n "$dest" ] || { echo "cannot tell where cargo-deny keeps its database" >&2; exit 1; }
  rm -rf "$dest"
  git clone --quiet --depth 1 --branch main "file://$(realpath "$SBOM_ADVISORY_DB")" "$dest"
  echo "advisory database: $SBOM_ADVISORY_DB at $(git -C "$dest" log -1 --format='%h, %cs')"
  "${DENY[@]}" --offline check advisories
elif timeout 120 "${DENY[@]}" fetch db 2> "$OUT/advisory-fetch.log"; then
  "${DENY[@]}" --offline check advisories
else
  echo "advisories: SKIPPED — the RustSec database could not be fetched:"
  grep -m1 -iE "fatal|error" "$OUT/advisory-fetch.log" | sed 's/^/  /' || true
  echo "  run this script where it can be, or with SBOM_ADVISORY_DB=<a clone of rustsec/advisory-db>"
fi

echo "== cargo cyclonedx"
# Normal dependencies only: build scripts' and tests' never reach the device.
cargo cyclonedx --format json --spec-version 1.5 --no-build-deps --override-filename bedside.cdx --quiet
mv bedside.cdx.json "$OUT/bedside.cdx.json"
python3 - "$OUT/bedside.cdx.json" <<'EOF'
import json, sys
bom = json.load(open(sys.argv[1]))
assert bom["bomFormat"] == "CycloneDX", bom.get("bomFormat")
names = {c["name"] for c in bom.get("components", [])}
for must in ["tract-onnx", "dicom-ul", "rumqttc", "rustls", "tokio"]:
    assert must in names, f"{must} missing from the SBOM"
print(f"SBOM: {len(bom['components'])} components, CycloneDX {bom['specVersion']} -> {sys.argv[1]}")
EOF

echo "== SOUP list"
python3 tools/sbom/soup.py "$OUT"
