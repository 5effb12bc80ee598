#!/usr/bin/env bash
# The Debian package, as a device maker's engineer meets it:
#
#  1. tools/sbom/sbom.sh makes the SBOM, SOUP list and licence report (and checks licences
#     and advisories); `cargo auditable build` the release binary, which carries its
#     dependency list; `cargo deb` (cargo-deb, pinned, installed when missing) the amd64
#     package; when tests/aarch64.sh has cross-built the aarch64
#     binary, the arm64 package is made from it too.
#  2. Both are inspected: architecture, dependencies (from dpkg-shlibdeps), every file that
#     must be there, maintainer scripts, the binary's architecture and size (goal: < 15 MB).
#  3. The amd64 package is installed into a fresh Debian 12 chroot (debootstrap, minbase),
#     as on a Raspberry Pi 5 (BEDSIDE_BOARD=rpi5 stands in for the device tree): the
#     `bedside` system user, /etc/bedside/board.toml with the installed models, a per-device
#     UID hash key, then — once the site's broker password and CA are in place, as the
#     engineer would do — `bedside check` on it and on every shipped profile, and the
#     systemd drop-in from the profile. Then remove and purge: the binary and the
#     package's configuration go, the state folder (undelivered findings) stays.
#
# Needs root (debootstrap, chroot, mounting /proc), `.ci/install-deps deb`. Network: the
# Debian mirror apt already uses (DEBIAN_MIRROR to change it) and crates.io for cargo-deb.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DEB_VERSION=3.8.0
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
GOAL_BYTES=$((15 * 1000 * 1000))

fail() { echo "deb.sh: $*" >&2; exit 1; }

if ! grep -q "$CARGO_DEB_VERSION" < <(cargo deb --version 2>/dev/null); then
  echo "== installing cargo-deb $CARGO_DEB_VERSION"
  cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi

# The SBOM, the SOUP list and the licence report that go into the package (and the licence
# and advisory checks); it also installs cargo-auditable.
[ -f target/sbom/bedside.cdx.json ] && [ -n "${DEB_NO_BUILD:-}" ] || tools/sbom/sbom.sh

echo "== cargo deb (release build with cargo-auditable, amd64)"
mkdir -p target/debian
# DEB_NO_BUILD=1 packages the release binary already in target/release (for re-runs).
# cargo auditable: the binary carries its dependency list (`.dep-v0`), for scanners on the
# device (FDA 524B's SBOM, read from the artefact itself).
[ -n "${DEB_NO_BUILD:-}" ] || cargo auditable build --locked --release --bin bedside
cargo deb --locked --no-build --output target/debian/bedside_amd64.deb
DEBS=(target/debian/bedside_amd64.deb)
ARM_DIR=target/cross
# The shipped profile's binary when there is one, else the `cross-check` profile's (what
# tests/aarch64.sh builds by default: the same program without fat LTO, so a little larger).
for ARM_PROFILE in release cross-check ""; do
  [ -n "$ARM_PROFILE" ] && [ -x "$ARM_DIR/aarch64-unknown-linux-gnu/$ARM_PROFILE/bedside" ] && break
done
if [ -n "$ARM_PROFILE" ]; then
  echo "== cargo deb (arm64, from tests/aarch64.sh's cross build, $ARM_PROFILE profile)"
  CARGO_TARGET_DIR=$ARM_DIR RUSTC=/usr/bin/rustc cargo deb --no-build --profile "$ARM_PROFILE" \
    --target aarch64-unknown-linux-gnu --output target/debian/bedside_arm64.deb
  DEBS+=(target/debian/bedside_arm64.deb)
fi

WORK=$(mktemp -d /var/tmp/bedside-deb.XXXXXX)
ROOT="$WORK/root"
cleanup() {
  mountpoint -q "$ROOT/proc" 2>/dev/null && umount "$ROOT/proc"
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== inspecting the packages"
for deb in "${DEBS[@]}"; do
  arch=$(dpkg-deb -f "$deb" Architecture)
  depends=$(dpkg-deb -f "$deb" Depends)
  dpkg-deb -c "$deb" | awk '{print $6}' | sed 's#^\./#/#' > "$WORK/files.$arch"
  for f in /usr/bin/bedside /lib/systemd/system/bedside.service \
           /usr/share/bedside/board/jetson-orin-nano.toml /usr/share/bedside/board/jetson-nano.toml \
           /usr/share/bedside/board/rpi5.toml /usr/share/bedside/board/clinic-rpi5.toml \
           /usr/share/bedside/models/cxr-tiny-cls/model.toml /usr/share/bedside/models/cxr-tiny-cls/model.onnx \
           /usr/share/bedside/models/cxr-tiny-det/model.toml /usr/share/bedside/models/cxr-tiny-det/model.onnx \
           /usr/share/bedside/models/us-fast-fluid/model.toml /usr/share/bedside/models/us-fast-fluid/model.onnx \
           /usr/share/doc/bedside/copyright /usr/share/doc/bedside/README.md \
           /usr/share/doc/bedside/bedside.cdx.json /usr/share/doc/bedside/soup.md \
           /usr/share/doc/bedside/soup.csv /usr/share/doc/bedside/licenses.txt; do
    grep -qx "$f" "$WORK/files.$arch" || fail "$deb lacks $f"
  done
  # The fp32 forms and test data are not for the device.
  if grep -E 'fp32|pruned|tests/' "$WORK/files.$arch"; then fail "$deb carries development files"; fi
  case "$depends" in *libc6*) ;; *) fail "$deb: Depends '$depends' names no libc6" ;; esac
  mkdir -p "$WORK/x.$arch"
  dpkg-deb -x "$deb" "$WORK/x.$arch"
  dpkg-deb -e "$deb" "$WORK/ctl.$arch"
  for s in postinst prerm postrm; do [ -x "$WORK/ctl.$arch/$s" ] || fail "$deb has no $s"; done
  bin_desc=$(file -b "$WORK/x.$arch/usr/bin/bedside")
  case "$arch:$bin_desc" in
    amd64:*x86-64*|arm64:*aarch64*) ;;
    *) fail "$deb ($arch) holds a binary for another machine: $bin_desc" ;;
  esac
  case "$bin_desc" in *"not stripped"*) fail "$deb: the binary is not stripped" ;; esac
  # cargo-auditable's dependency list survives stripping, in its own section. (Not
  # `readelf | grep -q` under pipefail: grep leaving at the first match can end readelf with
  # SIGPIPE, and the pipe then fails though the section is there — it did, once, in stop 17.)
  grep -q '\.dep-v0' < <(readelf -S "$WORK/x.$arch/usr/bin/bedside") \
    || fail "$deb: the binary carries no dependency list (.dep-v0; built without cargo auditable?)"
  size=$(stat -c %s "$WORK/x.$arch/usr/bin/bedside")
  glibc=$(objdump -T "$WORK/x.$arch/usr/bin/bedside" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
  if [ "$arch" = arm64 ] && [ "$ARM_PROFILE" != release ]; then
    verdict="$ARM_PROFILE profile: the < 15 MB goal is judged on release builds"
  elif [ "$size" -lt "$GOAL_BYTES" ]; then verdict="goal < 15 MB met"; else verdict="goal < 15 MB MISSED"; fi
  echo "$deb: Architecture $arch, $(stat -c %s "$deb") bytes packed; Depends: $depends"
  echo "  /usr/bin/bedside: $size bytes ($verdict), needs ${glibc:-glibc ?}; $bin_desc"
done

echo "== debootstrap: Debian 12 minbase from $MIRROR"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
  || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
mount -t proc proc "$ROOT/proc"
in_root() { chroot "$ROOT" "$@"; }

echo "== installing the amd64 package into the chroot, as on a Raspberry Pi 5"
cp target/debian/bedside_amd64.deb "$ROOT/tmp/bedside.deb"
BEDSIDE_BOARD=rpi5 in_root dpkg -i /tmp/bedside.deb 2>&1 | tee "$WORK/install.log"
grep -q "Status: install ok installed" < <(in_root dpkg -s bedside) || fail "bedside is not installed"
grep -q ":/var/lib/bedside:/usr/sbin/nologin$" < <(in_root getent passwd bedside) \
  || fail "no bedside system user with a nologin shell: $(in_root getent passwd bedside)"
uid=$(in_root id -u bedside)
[ "$uid" -lt 1000 ] || fail "bedside's uid $uid is not a system uid"
mode=$(in_root stat -c '%a %U:%G' /etc/bedside/board.toml)
[ "$mode" = "640 root:bedside" ] || fail "board.toml is $mode, want 640 root:bedside"
[ -f "$ROOT/etc/systemd/system/bedside.service.d/board.conf" ] \
  || fail "postinst made no systemd drop-in for the rpi5 profile"
grep -q '"/usr/share/bedside/models/cxr-tiny-cls"' "$ROOT/etc/bedside/board.toml" \
  || fail "board.toml does not name the installed models"
key=$(cat "$ROOT/etc/bedside/uid-hash.key")
[ "${#key}" -eq 64 ] || fail "the UID hash key is ${#key} characters, want 64"
mode=$(in_root stat -c '%a %U:%G' /etc/bedside/uid-hash.key)
[ "$mode" = "640 root:bedside" ] || fail "the UID hash key is $mode, want 640 root:bedside"

echo "== the site's part: broker password and CA, then bedside check"
mkdir -p "$ROOT/etc/bedside/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bedside test CA" \
  -keyout "$WORK/ca.key" -out "$ROOT/etc/bedside/tls/ca.pem" 2>/dev/null
echo "not-a-real-password" > "$ROOT/etc/bedside/mqtt-password"
in_root bedside check --board /etc/bedside/board.toml | tee "$WORK/check.log"
grep -q "fits" "$WORK/check.log" || fail "bedside check printed no memory plan verdict"
for b in jetson-orin-nano jetson-nano rpi5 clinic-rpi5; do
  in_root bedside check --board "/usr/share/bedside/board/$b.toml" > "$WORK/check.$b.log" \
    || { cat "$WORK/check.$b.log"; fail "the shipped $b profile does not pass check in the chroot"; }
  echo "$b: $(grep -i "fits" "$WORK/check.$b.log" | tail -1)"
done
in_root bedside systemd-dropin --board /etc/bedside/board.toml > "$WORK/dropin.conf"
grep -q "^MemoryMax=" "$WORK/dropin.conf" || fail "the drop-in sets no MemoryMax"
grep -q "^DeviceAllow=/dev/video0 rw" "$WORK/dropin.conf" || fail "the drop-in allows no capture device"

echo "== remove, then purge"
in_root dpkg -r bedside > /dev/null
[ ! -e "$ROOT/usr/bin/bedside" ] || fail "the binary survived removal"
[ -e "$ROOT/etc/bedside/board.toml" ] || fail "removal (not purge) deleted the configuration"
mkdir -p "$ROOT/var/lib/bedside/state"
in_root dpkg -P bedside > /dev/null
[ ! -e "$ROOT/etc/bedside/board.toml" ] || fail "purge left /etc/bedside/board.toml"
[ ! -e "$ROOT/etc/bedside/uid-hash.key" ] || fail "purge left the UID hash key"
[ -d "$ROOT/var/lib/bedside/state" ] || fail "purge deleted the state folder (undelivered findings)"
echo "deb.sh: packages built, inspected, installed, checked and purged"
